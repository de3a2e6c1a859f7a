"""A seeded, bounded random walk through kernel lifecycles and faults, against a real jupyter_server.

Operations: start, execute, interrupt, restart, shut down, kill the container
from outside (the server's restarter must bring a new one in the same image),
SIGKILL the server and start a new one, submit and cancel jobs.  At the end
every live kernel answers, and after the servers stop and ``envpin gc`` runs
no envpin container is left.  ENVPIN_FAULT_SEED replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import requests

from testutils import PY311, containers
from testutils.server import FAST_RESTARTER

SEED = int(os.environ.get("ENVPIN_FAULT_SEED", "20261125"))
OPERATIONS = 200
WEIGHTS = {
    "execute": 40, "job": 10, "cancel_job": 5, "interrupt": 10, "start": 10, "restart": 8,
    "shutdown": 7, "kill_container": 6, "kill_server": 4,
}  # fmt: skip


def kernel_containers(client, kid):
    return containers(client, kernel=kid, running=True)


def test_random_walk_through_lifecycles_and_faults(server, install_kernelspec, docker_client):
    rng = random.Random(SEED)
    name = install_kernelspec(PY311)
    srv = server(*FAST_RESTARTER)
    live: list[str] = []
    done: dict[str, int] = {}
    started = time.monotonic()
    for i in range(OPERATIONS):
        op = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        if op != "kill_server" and (not live or (op == "start" and len(live) < 4)):
            op = "start" if len(live) < 4 else "execute"
        kid = rng.choice(live) if live else None
        context = f"operation {i} ({op}, seed {SEED})"
        if op == "start":
            live.append(srv.start_kernel(name, f"nb{i}.ipynb"))
        elif op == "execute":
            assert srv.execute(kid, f"v = {i}; print(v)") == ("ok", f"{i}\n"), context
        elif op == "job":
            status, out = srv.execute(kid, "import envpin; print(envpin.submit(abs, -7).result(60))")
            assert (status, out.strip()) == ("ok", "7"), context
        elif op == "cancel_job":
            status, out = srv.execute(
                kid,
                "import envpin, time\nf = envpin.submit(time.sleep, 60)\ntime.sleep(0.5)\n"
                "print(f.cancel(), type(f.exception(30)).__name__)",
            )
            assert (status, out.strip()) == ("ok", "True CancelledError"), context
        elif op == "interrupt":

            def interrupt():
                requests.post(srv.api(f"kernels/{kid}/interrupt"), timeout=30)

            status, _ = srv.execute(
                kid, "print('running', flush=True)\nimport time; time.sleep(60)", once_running=interrupt
            )
            assert (status, srv.last_error) == ("error", "KeyboardInterrupt"), context
        elif op == "restart":
            assert requests.post(srv.api(f"kernels/{kid}/restart"), timeout=120).status_code == 200, context
            srv.wait_answers(kid, i, what=f"{context}: the kernel to answer after its restart")
        elif op == "shutdown":
            assert requests.delete(srv.api(f"kernels/{kid}"), timeout=60).status_code == 204, context
            live.remove(kid)
            assert not containers(docker_client, kernel=kid), context
        elif op == "kill_container":
            (old,) = kernel_containers(docker_client, kid)
            old.kill()
            srv.wait_answers(kid, i, what=f"{context}: the restarter to bring the kernel back")
            (new,) = kernel_containers(docker_client, kid)
            assert new.id != old.id and new.attrs["Image"] == old.attrs["Image"], context
        elif op == "kill_server":
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(30)
            srv = server(*FAST_RESTARTER)
            live = []  # the old kernels are orphans now: the next start (or envpin gc) collects them
        done[op] = done.get(op, 0) + 1
    for kid in live:
        srv.wait_answers(kid, "still here", what=f"kernel {kid} to answer at the end (seed {SEED})")
    print(f"\n{OPERATIONS} operations in {time.monotonic() - started:.0f}s (seed {SEED}): {done}")
    srv.stop()
    gc = subprocess.run([sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0, gc.stderr
    assert not containers(docker_client)
