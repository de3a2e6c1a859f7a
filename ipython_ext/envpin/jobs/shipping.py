"""What a pickle imports: the modules a job needs on the worker's side.

A cloudpickled job refers to modules by name (``GLOBAL``/``STACK_GLOBAL``
opcodes, and cloudpickle's ``subimport("name")`` for module objects used as
globals).  The executor reads them from the pickle's opcodes, without
unpickling anything, to decide per module: ship it by value (the notebook's
own code, outside site-packages), or make sure the image can import it.
"""

from __future__ import annotations

import functools
import os
import pickletools
import sys
import sysconfig
from typing import Any


@functools.lru_cache(maxsize=1)
def site_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[k]) for k in ("purelib", "platlib", "stdlib", "platstdlib") if paths.get(k))


_loaded_top: tuple[int, frozenset] = (-1, frozenset())


def loaded_top_level_modules() -> frozenset:
    """Top-level names of imported non-standard modules (recomputed when sys.modules grows)."""
    global _loaded_top
    if _loaded_top[0] != len(sys.modules):
        names = {m.partition(".")[0] for m in list(sys.modules)}
        names -= set(sys.stdlib_module_names) | {"__main__", "builtins", "cloudpickle", "envpin", "__mp_main__"}
        _loaded_top = (len(sys.modules), frozenset(n for n in names if not n.startswith("__")))
    return _loaded_top[1]


def reset() -> None:
    """Forget the site folders and the imported modules seen (``envpin.reset_caches``)."""
    global _loaded_top
    site_dirs.cache_clear()
    _loaded_top = (-1, frozenset())


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_NO_PUSH_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "PROTO", "FRAME", "STOP"}


def _is_subimport(value: Any) -> bool:
    return isinstance(value, tuple) and value[2] == "subimport" and str(value[1]).startswith("cloudpickle")


def modules_by_reference(payload: bytes) -> set[str]:
    """Top-level modules a pickle imports by name (its GLOBAL / STACK_GLOBAL opcodes).

    STACK_GLOBAL takes its module and name from the two values pushed just
    before it, either as strings or fetched from the memo, so it is enough to
    follow what was pushed last and what the memo holds; nothing is unpickled.
    A module object a function uses as a global is pickled by cloudpickle as
    ``subimport("name")``: the string after that call is a module too.
    """
    mods: set[str] = set()
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]
    arg: Any
    for op, arg, _ in pickletools.genops(payload):
        name = op.name
        if name in _STRING_OPS:
            if _is_subimport(pushed[-1]):
                mods.add(arg.split(".")[0])
            pushed.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = pushed[-1]
        elif name == "STACK_GLOBAL":
            module, attr = pushed[-2], pushed[-1]
            if isinstance(module, str):
                mods.add(module.split(".")[0])
            pushed.append(("global", module, attr))
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            mods.add(module.split(".")[0])
            pushed.append(("global", module, attr))
        elif name not in _NO_PUSH_OPS:
            pushed.append(None)
        del pushed[:-2]
    # Only names of modules this process has imported can be modules the pickle refers to.
    mods &= loaded_top_level_modules()
    return mods - {"builtins", "__main__", "copyreg", "cloudpickle", "envpin"}
