"""Every Ray internal envpin uses resolves in the lowest and the newest Ray it supports (``ray_compat.SUPPORTED``).

The newest is the Ray of this environment (and of the test images and the
test cluster).  The lowest is installed on its own, without dependencies, into
a cached folder put first on ``sys.path`` of a subprocess: only imports and
look-ups run, which is what a moved entry point breaks.  No Docker engine, and
no PyPI: setup fetches those releases (``python -m tools.ray_versions``, which
``scripts/test`` runs); run on its own without them, the test skips saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envpin.adapters import ray_compat
from testutils import FROM_SCRIPTS_TEST, REPO, program
from tools import ray_versions

LOWEST, NEWEST = ray_compat.SUPPORTED


def _probe(extra_path: str | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, str(REPO / "ipython_ext"), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", program("ray_compat_probe")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cached(version: str) -> Path:
    """Ray ``version``'s folder in the cache setup fills; a skip saying how to fill it (a failure under scripts/test)."""
    if not ray_versions.fetched(version):
        missing = f"Ray {version} is not in {ray_versions.folder(version)}"
        if os.environ.get(FROM_SCRIPTS_TEST):
            pytest.fail(f"{missing}, although scripts/test fetches it first: see its output for why it could not.")
        pytest.skip(f"{missing}: `python -m tools.ray_versions` fetches it (scripts/test does, before pytest).")
    return ray_versions.folder(version)


def test_newest_supported_ray_is_the_one_installed_and_everything_resolves():
    found = _probe(None)
    assert found["version"] == NEWEST, "the newest supported Ray is the one the suite runs (pyproject, images)"
    assert found["missing"] == [] and found["unsupported"] is None


def test_lowest_supported_ray_has_every_required_entry_point():
    found = _probe(str(_cached(LOWEST)))
    assert found["version"] == LOWEST
    assert found["unsupported"] is None, found["unsupported"]
    # What it lacks is optional, and each such gap is a said fallback (ray_compat.RayCompatWarning).
    optional = {e.name for e in ray_compat.ENTRY_POINTS if not e.required}
    assert {m.split(": ", 1)[0] for m in found["missing"]} <= optional


@pytest.mark.parametrize("version", [ray_versions.TOO_OLD])
def test_a_ray_older_than_supported_is_named_not_silently_unstamped(version):
    found = _probe(str(_cached(version)))
    assert found["unsupported"] and version in found["unsupported"] and LOWEST in found["unsupported"]
