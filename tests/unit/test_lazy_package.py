"""``import envpin`` imports its public names on first use: a job worker or a kernel loading the extension
does not pay for the executor, fingerprints, respawn and stamping modules it does not use."""

from __future__ import annotations

import json
import subprocess
import sys

from envpin import names


def test_import_envpin_leaves_the_heavy_modules_until_a_name_is_used():
    program = (
        "import json, sys, envpin, envpin.jobs.worker\n"
        "heavy = ['envpin.jobs.executor', 'envpin.compat.fingerprints', 'envpin.host.respawn', "
        "'envpin.session.stamping']\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "cls = envpin.ContainerExecutor\n"
        "print(json.dumps({'before': before, 'after': 'envpin.jobs.executor' in sys.modules, "
        "'same': cls is sys.modules['envpin.jobs.executor'].ContainerExecutor, "
        "'listed': 'fingerprint' in dir(envpin)}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        env={"PYTHONPATH": names.PACKAGE_PARENT, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == {"before": [], "after": True, "same": True, "listed": True}
