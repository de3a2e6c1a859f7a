"""Unit tier: every module-level cache or registry can be forgotten through ``envpin.reset_caches()`` (issue 23).

Tests must not clear modules' private globals by hand; they call
``envpin.reset_caches()`` / ``envpin_provisioner.reset_caches()`` or a
module's ``reset()``.  This reads the source of both packages and fails when a
module keeps something for the life of the process (a module-level dict, set
or list, a name rebound through ``global``, an ``lru_cache``, a class
attribute rebound at run time) that its ``reset()`` does not reach, or whose
module the package's ``STATEFUL_MODULES`` does not list.  Upper-case names
are constants: nothing may mutate them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import envpin
import envpin_provisioner

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "envpin": (ROOT / "ipython_ext" / "envpin", envpin),
    "envpin_provisioner": (ROOT / "kernel_provisioner" / "envpin_provisioner", envpin_provisioner),
}
#: Process state that no reset may touch, and why.
KEPT = {
    ("envpin.jobs.executor", "_live"): "executors the caller made, listed only to be shut down at exit",
}
CONTAINERS = {"dict", "set", "list", "defaultdict", "OrderedDict", "deque", "Counter"}
CONTAINERS |= {"WeakSet", "WeakValueDictionary", "WeakKeyDictionary"}
MUTATORS = {"add", "append", "clear", "discard", "extend", "insert", "pop", "popitem", "remove", "setdefault"}
MUTATORS |= {"update", "appendleft", "difference_update", "intersection_update", "symmetric_difference_update"}


def _is_constant(name: str) -> bool:
    return name.strip("_").isupper() or name.startswith("__")


def _is_container(value: ast.expr) -> bool:
    if isinstance(value, (ast.Dict, ast.Set, ast.List, ast.DictComp, ast.SetComp, ast.ListComp)):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in CONTAINERS
    return False


def _is_cache_decorator(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name in ("lru_cache", "cache")


def process_state(tree: ast.Module) -> dict[str, str]:
    """What a module keeps for the process: name -> how it is reached (``"name"`` or ``"name.cache_clear"``)."""
    state: dict[str, str] = {}
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _is_container(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and not _is_constant(target.id):
                    state[target.id] = target.id
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            state.update({name: name for name in node.names})
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(_is_cache_decorator(d) for d in node.decorator_list):
                state[node.name] = f"{node.name}.cache_clear"
            for inner in ast.walk(node):  # ClassName.attr = ... at run time: state of the class, for the process
                if isinstance(inner, (ast.Assign, ast.AugAssign)):
                    for target in inner.targets if isinstance(inner, ast.Assign) else [inner.target]:
                        if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) in classes:
                            dotted = f"{target.value.id}.{target.attr}"  # type: ignore[attr-defined]
                            state[dotted] = dotted
    return state


def mutated_constants(tree: ast.Module) -> list[str]:
    """Upper-case module names something mutates (``NAME.add(...)``, ``NAME[k] = v``, ``del NAME[k]``)."""
    constants = {
        t.id
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name) and _is_constant(t.id) and not t.id.startswith("__")
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in constants:
                found.append(f"{owner.id}.{node.func.attr}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for target in node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", None) in constants:
                    found.append(f"{target.value.id}[...]")  # type: ignore[attr-defined]
    return found


def reached_by_reset(tree: ast.Module) -> set[str] | None:
    """Every name and ``name.attr`` the module's ``reset()`` mentions, following calls to its own functions."""
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "reset" not in functions:
        return None
    seen: set[str] = set()
    todo, visited = ["reset"], set()
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Name):
                seen.add(node.id)
                if node.id in functions:
                    todo.append(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                seen.add(f"{node.value.id}.{node.attr}")
    return seen


def problems(tree: ast.Module, module: str, listed: tuple[str, ...]) -> list[str]:
    state = {n: how for n, how in process_state(tree).items() if (module, n) not in KEPT}
    out = [f"{module}: {c} mutates a constant" for c in mutated_constants(tree)]
    if not state:
        return out
    reached = reached_by_reset(tree)
    if reached is None:
        return [*out, f"{module}: keeps {sorted(state)} but has no reset()"]
    out += [f"{module}: reset() does not reach {name}" for name, how in state.items() if how not in reached]
    if module not in listed:
        out.append(f"{module}: keeps {sorted(state)} but is not in STATEFUL_MODULES")
    return out


def test_every_module_level_cache_is_forgotten_by_reset_caches():
    found = []
    for package, (folder, imported) in PACKAGES.items():
        modules = {}
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
        for module, path in modules.items():
            found += problems(ast.parse(path.read_text(), str(path)), module, imported.STATEFUL_MODULES)
        found += [
            f"{m}: in {package}.STATEFUL_MODULES, but no such module"
            for m in imported.STATEFUL_MODULES
            if m not in modules
        ]
    assert found == [], "give the module a reset() and list it in STATEFUL_MODULES (or make the name a constant)"


def test_the_check_can_fail():
    tree = ast.parse(
        "import functools\n"
        "_seen = {}\n"
        "_later = None\n"
        "KNOWN = {'a': 1}\n"
        "class C:\n    warned = False\n"
        "def f():\n    global _later\n    _later = 1\n    C.warned = True\n    KNOWN['b'] = 2\n    KNOWN.update(c=3)\n"
        "@functools.lru_cache(maxsize=1)\ndef g():\n    return 1\n"
    )
    assert process_state(tree) == {"_seen": "_seen", "_later": "_later", "C.warned": "C.warned", "g": "g.cache_clear"}
    assert sorted(mutated_constants(tree)) == ["KNOWN.update", "KNOWN[...]"]
    assert problems(tree, "m", ("m",))[-1] == "m: keeps ['C.warned', '_later', '_seen', 'g'] but has no reset()"
    partial = ast.parse(ast.unparse(tree) + "\ndef _forget():\n    _seen.clear()\ndef reset():\n    _forget()\n")
    assert sorted(problems(partial, "m", ())[2:]) == [
        "m: keeps ['C.warned', '_later', '_seen', 'g'] but is not in STATEFUL_MODULES",
        "m: reset() does not reach C.warned",
        "m: reset() does not reach _later",
        "m: reset() does not reach g",
    ]


def test_reset_caches_forgets_what_a_module_learnt(monkeypatch):
    """Behaviour, not only the source: a filled cache is empty again, and a pin is gone."""
    from envpin.compat import policy
    from envpin.host import dialect
    from envpin.session import stamping, state
    from envpin_provisioner.images import pulling

    class FakeClient:
        api = type("Api", (), {"base_url": "tcp://engine.example:2376"})()

    policy.matrix()
    assert policy.matrix.cache_info().currsize == 1
    dialect.note_init_refused(FakeClient())
    pulling.remember_curve_support(FakeClient(), "sha256:x", False)
    stamping.pin_session(state.Pin("py", "py", "sha256:" + "a" * 64, "3.11.2", "3.1.3", "host"))
    envpin_provisioner.reset_caches()
    assert policy.matrix.cache_info().currsize == 0 and state.current_pin() is None
    assert not dialect._without_init and not pulling._curve_support  # looked at, never cleared by hand
