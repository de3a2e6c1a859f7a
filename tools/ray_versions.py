"""The Ray releases tests/test_ray_compat.py checks beside the installed one, fetched once into ``.cache/ray-compat/``.

Setup fetches them (``scripts/test`` through ``scripts/_setup.sh``), so the test
itself never reaches PyPI: each release is pip-installed on its own, without
dependencies, into ``.cache/ray-compat/VERSION``, which the test puts first on
a subprocess's ``sys.path`` (only imports and look-ups run there).

Run as ``python -m tools.ray_versions``; idempotent, a second run costs nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "ray-compat"
#: A Ray older than the supported range: the test checks that envpin names it instead of silently not stamping.
TOO_OLD = "2.9.3"


def lowest_supported() -> str:
    """The lowest Ray envpin supports (``ray_compat.SUPPORTED``, its one source)."""
    from envpin.adapters import ray_compat

    return ray_compat.SUPPORTED[0]


def versions() -> list[str]:
    """Every release the compat test needs in the cache: the lowest supported one and :data:`TOO_OLD`."""
    return [lowest_supported(), TOO_OLD]


def folder(version: str) -> Path:
    return CACHE / version


def fetched(version: str) -> bool:
    return (folder(version) / "ray" / "__init__.py").exists()


def fetch(version: str) -> Path:
    """Install Ray ``version`` (no dependencies) into its cache folder unless it is there; return the folder."""
    target = folder(version)
    if not fetched(version):
        print(f"[envpin] fetching Ray {version} for the compat test into {target} ...", file=sys.stderr, flush=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")  # renamed when complete: an interrupted fetch is redone
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial), f"ray=={version}"],
            check=True,
            timeout=600,
        )
        partial.rename(target)
    return target


if __name__ == "__main__":
    for v in versions():
        fetch(v)
