"""The Docker engine restarting under a live kernel: clear errors meanwhile, recovery afterwards, no hang.

This test stops and restarts the real dockerd, so it runs only as root on a
machine where the engine is a plain dockerd process (as the harness starts it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests

from testutils import PY311, containers, wait_for
from testutils.server import FAST_RESTARTER
from tools.docker_engine import engine_answers, ensure_engine


def dockerd_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if len(out) == 1 else None


@pytest.mark.skipif(os.geteuid() != 0 or dockerd_pid() is None, reason="needs root and a dockerd process to restart")
def test_engine_restart_under_a_live_kernel(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY311)
    srv = server(*FAST_RESTARTER)
    kid = srv.start_kernel(name, "a.ipynb")
    srv.wait_answers(kid, 1)
    try:
        os.kill(dockerd_pid(), signal.SIGTERM)
        wait_for(lambda: not dockerd_pid() and not engine_answers(timeout=1), 60, "dockerd to stop", interval=0.2)
        assert not engine_answers(timeout=1)

        # The server stays responsive, and a new kernel fails fast with the reason.
        t = time.monotonic()
        assert requests.get(srv.api("status"), timeout=5).ok
        r = requests.post(
            srv.api("sessions"),
            json={"path": "b.ipynb", "type": "notebook", "name": "b.ipynb", "kernel": {"name": name}},
            timeout=30,
        )
        assert r.status_code >= 500 and "No Docker engine answers" in r.text
        assert time.monotonic() - t < 10
    finally:
        ensure_engine()
    # The old kernel's container died with the engine (the restarter may have given up meanwhile):
    # a restart brings the kernel back in the same image.
    r = requests.post(srv.api(f"kernels/{kid}/restart"), timeout=120)
    assert r.status_code == 200, r.text
    srv.wait_answers(kid, 2, timeout=60, what="the kernel to recover after the engine came back")
    assert len(containers(docker_client, kernel=kid, running=True)) == 1
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
