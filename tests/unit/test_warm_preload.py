"""A warm kernel has imported every envpin module the extension needs before it is handed over.

envpin's package is mounted read-only, with no bytecode for most images'
Pythons: a module imported only after the hand-over is compiled then, on the
critical path of a start or a ``%use_image`` move into a standby.
"""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
from envpin.entry import warm_kernel
warm_kernel._preload()
before = set(sys.modules)
from IPython.core.interactiveshell import InteractiveShell
import envpin
envpin.load_ipython_extension(InteractiveShell.instance())
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("envpin"))))
"""


def test_the_extension_imports_nothing_of_envpin_a_warm_kernel_has_not_preloaded():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
    late = json.loads(out.stdout.strip().splitlines()[-1])
    assert late == [], f"add these to envpin.entry.warm_kernel.PRELOAD: {late}"
