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
    assert late == [], f"add these to envpin.entry.warm_kernel.PRELOAD_EXTENSION: {late}"


_GIVEN = """
import json, sys
from envpin.entry import warm_kernel
warm_kernel._given = lambda folder: {"argv": []}  # the hand-over, as if it had come
warm_kernel._become_kernel = lambda message: None
warm_kernel.main(["warm_kernel", "--given", "/nonexistent"])
print(json.dumps(sorted(m for m in sys.modules if m in warm_kernel.PRELOAD_EXTENSION)))
"""


def test_a_cold_start_over_ssh_does_not_compile_the_extension_before_its_kernel():
    """``--given`` is a start someone waits on: envpin's kernel side (~100 ms of compiling on a package
    without bytecode, measured in ``benchmarks/kernel_start.py --engine remote-ssh --breakdown``) is left to
    the kernel, which imports it only if it loads the extension, as a local cold start does."""
    out = subprocess.run([sys.executable, "-c", _GIVEN], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
