"""The registry of library internals (``envpin.internals``): the newest supported versions, its rules, its checks.

Here, the newest end of every supported range: the venv's own versions, which
must be the registry's newest, in which every entry resolves.  The lowest end
is ``tests/test_library_internals.py`` (each lowest version fetched at setup).
Also: pyproject's bounds are the registry's ranges, no envpin module names a
registered private attribute outside the registry, the registry imports none
of the libraries, and each of its checks can fail.
"""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from envpin import internals
from envpin.internals import EntryPoint, InternalMissing, Library
from testutils import REPO

LIBRARIES = list(internals.LIBRARIES.values())
IDS = [lib.distribution for lib in LIBRARIES]


@pytest.mark.parametrize("library", LIBRARIES, ids=IDS)
def test_the_installed_version_is_the_newest_supported_and_every_internal_resolves(library):
    assert library.version() == library.supported[1], (
        f"the venv's {library.distribution} is the newest the registry supports (pyproject.toml, internals.py)"
    )
    assert library.missing() == []


@pytest.mark.parametrize("library", LIBRARIES, ids=IDS)
def test_pyproject_bounds_each_library_to_its_tested_range(library):
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    requirements += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    ours = [r for r in requirements if canonicalize_name(r.name) == canonicalize_name(library.distribution)]
    assert ours, f"pyproject.toml does not name {library.distribution}"
    low, high = (Version(v) for v in library.supported)
    beyond = Version(f"{high.major}.{high.minor + 1}.0")  # the next release series: untested
    below = Version(f"{low.major}.{low.minor}.{low.micro - 1}") if low.micro else Version(f"{low.major}.{low.minor}a0")
    for requirement in ours:
        spec = requirement.specifier
        assert spec.contains(low) and spec.contains(high), f"{requirement} excludes a tested end {library.supported}"
        assert not spec.contains(beyond, prereleases=True), f"{requirement} admits {beyond}, which is untested"
        assert not spec.contains(below, prereleases=True), f"{requirement} admits {below}, below the tested range"


def test_importing_the_registry_and_its_users_imports_none_of_the_libraries():
    users = [
        "envpin.internals",
        "envpin.host.dialect",
        "envpin.notebook.handoff",
        "envpin.notebook.short_errors",
        "envpin.adapters",
    ]
    libraries = [lib.import_name for lib in LIBRARIES]
    code = f"import sys\nfor m in {users!r}: __import__(m)\nprint([m for m in {libraries!r} if m in sys.modules])"
    env = {"PYTHONPATH": str(REPO / "ipython_ext"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- no private name of a library outside the registry -------------------------------------------------------------

PACKAGES = [REPO / "ipython_ext" / "envpin", REPO / "kernel_provisioner" / "envpin_provisioner"]


def _private_names() -> set[str]:
    names = set()
    for library in LIBRARIES:
        for entry in library.entries:
            dotted = [entry.module, entry.attribute, entry.older or ""]
            for part in ".".join(dotted).split("."):
                if part.startswith("_") and part not in dir(object) and part != "__future__":
                    names.add(part)
    return names


def _own(node: ast.ImportFrom) -> bool:
    """An import of envpin's own modules (``from ._version import ...``, ``from envpin._version import ...``)."""
    return bool(node.level) or (node.module or "").split(".")[0] in ("envpin", "envpin_provisioner")


def private_uses(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` where ``source`` names a registered private attribute or module directly."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in names:
            receiver = node.value
            if not (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")):  # envpin's own attributes
                found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and node.value in names:  # getattr(x, "_name"), wrap(owner, "_name")
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and not _own(node):
            modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            parts = {p for m in modules if m for p in m.split(".")} | {a.name for a in node.names}
            found += [(node.lineno, p) for p in sorted(parts & names)]
    return sorted(found)


def test_no_module_names_a_registered_internal_outside_the_registry():
    names = _private_names()
    assert {"_create_container_args", "_parent_ident", "_showtraceback", "_job_name", "_remote"} <= names
    found = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            if path.name == "internals.py":
                continue
            where = f"{package.name}/{path.relative_to(package)}"
            found += [f"{where}:{line} {name}" for line, name in private_uses(path.read_text(), names)]
    assert found == [], "use these through envpin.internals (DOCKER.get / .attr / .site), where they are checked"


def test_the_guard_can_fail():
    names = {"_create_container_args", "_sock", "_private", "_spec"}
    source = (
        "from docker.models.containers import _create_container_args\n"
        "import ray._private.utils\n"
        "raw = getattr(sock, '_sock', sock)\n"
        "spec = builder._spec\n"
        "mine = self._spec\n"
    )
    assert private_uses(source, names) == [(1, "_create_container_args"), (2, "_private"), (3, "_sock"), (4, "_spec")]


# ---- the registry's own checks and messages -----------------------------------------------------------------------


class Builder:
    kind = "map"

    def __init__(self, spec=None):
        self._spec = spec or {}

    def build(self, spec, client=None):
        return spec


def task(self, name, config, /, image=None, *, environment=None):
    """A constructor as plugins call it: some parameters by position, one keyword only."""


def _library(*entries: EntryPoint) -> Library:
    return Library("packaging", "packaging", ("1.0", "99.0"), *entries)


def test_an_attribute_set_on_objects_is_found_in_the_source_and_a_gone_one_is_named():
    library = _library(
        EntryPoint("spec", __name__, "Builder._spec", "the job's spec", instance=True),
        EntryPoint("gone", __name__, "Builder._gone", "nothing", instance=True),
    )
    assert library.attr(Builder({"a": 1}), "spec") == {"a": 1}
    assert library.missing() == [
        f"{__name__}:Builder._gone: AttributeError: Builder objects no longer get an attribute '_gone'"
    ]


def test_changed_parameters_a_changed_value_and_an_older_name_are_told_apart():
    library = _library(
        EntryPoint("build", __name__, "Builder.build", "building", parameters=("spec", "client")),
        EntryPoint("renamed", __name__, "Builder.assemble", "building", parameters=("spec",)),
        EntryPoint("older", __name__, "Builder.assemble", "building", older="Builder.build"),
        EntryPoint("kind", __name__, "Builder.kind", "the kind", check=lambda v: v == "reduce", expects="'reduce'"),
    )
    assert library.get("older") is Builder.build and library.site("older") == (Builder, "build")
    gaps = library.missing()
    assert [g.split(": ")[0] for g in gaps] == [f"{__name__}:Builder.assemble", f"{__name__}:Builder.kind"]
    assert "AttributeError" in gaps[0] and "is not 'reduce'" in gaps[1]
    assert (
        "TypeError"
        in _library(
            EntryPoint("build", __name__, "Builder.build", "building", parameters=("spec", "cluster"))
        ).missing()[0]
    )


def test_a_missing_internal_is_one_paragraph_naming_the_version_the_range_and_the_fix():
    library = _library(EntryPoint("gone", __name__, "Builder.vanished", "stamping every job", instance=True))
    with pytest.raises(InternalMissing) as info:
        library.get("gone")
    text = str(info.value)
    assert "\n" not in text and "stamping every job" in text and f"{__name__}:Builder.vanished" in text
    assert f"packaging {library.version()} installed here" in text and "packaging 1.0 to 99.0" in text
    assert "pip install 'packaging>=1.0,<=99.0'" in text
    with pytest.raises(InternalMissing):
        library.attr(Builder(), "gone")
    assert library.attr(Builder(), "gone", "fallback") == "fallback"


def test_positions_come_from_the_signature():
    library = _library(EntryPoint("task", __name__, "task", "a task"))
    assert [library.position("task", p) for p in ("name", "config", "image", "environment")] == [0, 1, 2, None]
    # flytekit's plugins: (name, task_config, task_type, container_image, requests, limits, environment, ...)
    assert [internals.FLYTEKIT.position("task_init", p) for p in ("name", "container_image", "environment")] == [
        0,
        3,
        6,
    ]
