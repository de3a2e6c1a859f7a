"""A library at a chosen version, in a cached folder of its own, for tests that import it beside the venv's.

    python -m tools.library_versions                  # the lowest supported version of every library
                                                      # envpin.internals lists (scripts/_setup.sh runs this)
    python -m tools.library_versions ray==2.9.3 ...   # any others, as NAME==VERSION

A test puts ``folder(name, version)`` first on a subprocess's ``PYTHONPATH``:
that process imports the library at that version and everything else from
the venv.  Fetching happens here, at setup, never during a test; a test whose
folder is missing says to run this.

What goes into ``.cache/versions/NAME/VERSION/``: the library at that version
and those of its dependencies the venv does not satisfy, at the versions pip
picks.  pip's own resolver decides (``pip install --dry-run --report``, asked
in the venv together with envpin's own requirements from ``pyproject.toml``),
so a version that cannot be installed beside envpin fails here, by name, and
an old release gets the old dependencies it needs (ytsaurus-client 0.13.20
breaks under decorator 5; IPython 8.0 needs pickleshare); then exactly that
list is installed without dependencies into the folder.  A folder appears
whole or not at all (it is filled under another name and renamed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "versions"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def folder(name: str, version: str) -> Path:
    """Where ``name==version`` is (or would be) installed."""
    return CACHE / _normal(name) / version


def _envpin_requirements() -> list[str]:
    """envpin's own dependencies, so the versions picked can be installed beside it."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900)


def plan(name: str, version: str) -> list[str]:
    """``NAME==VERSION`` of what the folder gets: the library, and the dependencies the venv does not satisfy."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = _pip(
            "install", "--dry-run", "--quiet", "--report", str(report), f"{name}=={version}", *_envpin_requirements()
        )
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            raise SystemExit(
                f"{name} {version} cannot be installed beside envpin's requirements ({'; '.join(errors)[-800:]}): "
                "pick a supported version pip can install with them (envpin/internals.py, pyproject.toml)."
            )
        installs = json.loads(report.read_text())["install"]
    return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs]


def fetch(name: str, version: str) -> Path:
    """``folder(name, version)``, filled first if it is not there yet."""
    target = folder(name, version)
    if target.is_dir():
        return target
    wanted = plan(name, version)
    print(f"[envpin] fetching {name} {version} for the version tests: {' '.join(wanted)}", file=sys.stderr)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = _pip("install", "--quiet", "--no-deps", "--no-compile", "--target", str(partial), *wanted)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SystemExit(f"installing {' '.join(wanted)} into {partial} failed:\n{done.stderr[-2000:]}")
    partial.rename(target)
    return target


def lowest_supported() -> list[tuple[str, str]]:
    """(name, lowest version) of every library in ``envpin.internals``."""
    from envpin import internals

    return [(lib.distribution, lib.supported[0]) for lib in internals.LIBRARIES.values()]


def main(argv: list[str]) -> None:
    wanted = lowest_supported()
    if argv:
        if not all(a.count("==") == 1 for a in argv):
            raise SystemExit(f"usage: python -m tools.library_versions [NAME==VERSION ...] (not {' '.join(argv)})")
        wanted = [(name, version) for name, version in (a.split("==") for a in argv)]
    for name, version in wanted:
        fetch(name, version)


if __name__ == "__main__":
    main(sys.argv[1:])
