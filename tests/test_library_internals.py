"""Every library internal envpin uses resolves in the lowest version of each library's supported range.

``envpin.internals`` lists them, with each library's range; the newest end is
the venv's own (``tests/unit/test_internals.py``).  The lowest is fetched at
setup (``python -m tools.library_versions``, run by ``scripts/_setup.sh``)
into a cached folder that is put first on a subprocess's ``PYTHONPATH``: that
process imports the library at its lowest version, with the old dependencies
it needs, and looks every entry up; nothing is fetched here.  No engine, no
cluster: imports and look-ups, which is what a moved internal breaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envpin import internals
from testutils import REPO
from tools import library_versions

LIBRARIES = list(internals.LIBRARIES.values())

_PROBE = """
import importlib, json, sys, warnings
warnings.simplefilter("ignore")
from envpin import internals
library = internals.LIBRARIES[sys.argv[1]]
module = importlib.import_module(library.import_name)
print(json.dumps({"version": library.version(), "file": module.__file__, "missing": library.missing(),
                  "required": library.missing(required_only=True)}))
"""


def _probe(library: internals.Library, folder: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO / "ipython_ext")])
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel's debugger would print a note on import
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, library.distribution], env=env, cwd="/", capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("library", LIBRARIES, ids=[lib.distribution for lib in LIBRARIES])
def test_the_lowest_supported_version_has_every_required_internal(library):
    lowest = library.supported[0]
    folder = library_versions.folder(library.distribution, lowest)
    if not folder.is_dir():
        pytest.fail(
            f"{library.distribution} {lowest} is not fetched: run python -m tools.library_versions "
            "(scripts/_setup.sh does), then this test again"
        )
    found = _probe(library, folder)
    assert found["version"] == lowest and found["file"].startswith(str(folder)), found
    assert found["required"] == [], f"{library.distribution} {lowest} lacks what envpin needs: {found['required']}"
    # What it lacks is optional: the code using it does without (internals.EntryPoint.required, .why).
    optional = {e.name for e in library.entries if not e.required}
    assert {gap.split(": ", 1)[0] for gap in found["missing"]} <= optional
