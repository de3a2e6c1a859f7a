"""A real jupyter_server: kernels created over REST, code executed over the websocket.

Also: a server killed with SIGKILL leaves its kernel container behind, and
``envpin gc`` (or the next server's first kernel start) removes it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import requests

from envpin.entry import boot
from testutils import PY311, PY313, containers, wait_for


def test_kernel_through_rest_and_websocket(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY313)
    srv = server()
    root = srv.root
    (root / "sub").mkdir()
    kid = srv.start_kernel(name, "sub/analysis.ipynb")
    status, out = srv.execute(
        kid,
        "import os, sys; print(os.path.exists('/.dockerenv'), sys.version_info[:2], os.getcwd(),"
        " os.environ['ENVPIN_IMAGE'], os.environ.get('JPY_SESSION_NAME'))",
    )
    assert status == "ok"
    assert out.startswith("True (3, 13) ")
    assert f" {root}/sub " in out  # the notebook's folder is the working directory
    assert f" {PY313} " in out
    assert out.strip().endswith("sub/analysis.ipynb")  # JPY_SESSION_NAME reaches the kernel
    (running,) = containers(docker_client, kernel=kid, running=True)
    # Nothing in the container listens on a network address: the channels are unix sockets.
    assert not running.attrs["NetworkSettings"]["Ports"]
    r = requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
    assert r.status_code == 204
    assert not containers(docker_client, kernel=kid)


def test_gc_removes_the_container_of_a_killed_server(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY311)
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    assert srv.execute(kid, "print(1)")[0] == "ok"
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    orphan = containers(docker_client, kernel=kid, running=True)
    assert len(orphan) == 1 and orphan[0].status == "running"  # the kernel cannot know its server died
    assert orphan[0].labels["envpin.owner-pid"] == str(srv.proc.pid)

    out = subprocess.run([sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert orphan[0].short_id in out.stdout
    assert not containers(docker_client, kernel=kid)


def test_a_new_server_collects_orphans_on_its_first_kernel(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY311)
    first = server()
    old = first.start_kernel(name, "a.ipynb")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert containers(docker_client, kernel=old, running=True)
    second = server()
    new = second.start_kernel(name, "b.ipynb")
    assert not containers(docker_client, kernel=old)
    assert containers(docker_client, kernel=new, running=True)
    requests.delete(second.api(f"kernels/{new}"), timeout=60)


def test_a_container_killed_from_outside_is_restarted_in_the_same_image(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY313)
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    (old,) = containers(docker_client, kernel=kid, running=True)
    old.kill()
    new = wait_for(
        lambda: [c for c in containers(docker_client, kernel=kid, running=True) if c.id != old.id],
        timeout=60,
        what="the server's restarter to bring a new container",
    )
    assert new[0].attrs["Image"] == old.attrs["Image"]
    status, out = srv.execute(kid, "import sys; print(sys.version_info[:2])")
    assert (status, out.strip()) == ("ok", "(3, 13)")
    assert not docker_client.containers.list(
        all=True, filters={"id": old.id}, ignore_removed=True
    )  # the dead one was removed
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)


def test_a_slow_kernel_start_does_not_block_the_server(server, install_kernelspec, docker_client):
    """Docker calls and the readiness wait run off the event loop: other requests are served meanwhile."""
    import threading

    # The escape hatch delays the kernel by 6 s inside the container (an image with a slow entrypoint).
    name = install_kernelspec(
        PY311,
        extra_container_options={"entrypoint": ["sh", "-c", 'sleep 6; exec "$@"', "sh", *boot.entrypoint("python3")]},
    )
    srv = server()
    result = {}
    starter = threading.Thread(target=lambda: result.update(kid=srv.start_kernel(name, "slow.ipynb")))
    t0 = time.monotonic()
    starter.start()
    latencies = []
    while starter.is_alive():
        t = time.monotonic()
        assert requests.get(srv.api("status"), timeout=5).ok
        latencies.append(time.monotonic() - t)
        time.sleep(0.1)
    starter.join()
    assert time.monotonic() - t0 >= 6  # the start really was slow ...
    # ... and the server answered all along: a blocked event loop would hold a request for the whole 6 s.
    assert len(latencies) >= 10 and max(latencies) < 3.0
    requests.delete(srv.api(f"kernels/{result['kid']}"), timeout=60)


def test_use_image_through_jupyter_server_pins_the_notebook(server, install_kernelspec, docker_client):
    """What JupyterLab does: a session for sub/analysis.ipynb, cells over the websocket, a restart over REST."""
    name = install_kernelspec(PY313)
    srv = server()
    (srv.root / "sub").mkdir()
    kid = srv.start_kernel(name, "sub/analysis.ipynb")
    status, out = srv.execute(kid, f"%load_ext envpin\n%use_image {PY311}")
    assert status == "ok" and f"moving this kernel into {PY311}" in out, (status, out)
    status, out = srv.execute(kid, "import sys; print(sys.version_info[:2])")
    assert (status, out.strip()) == ("ok", "(3, 11)")  # the same websocket now talks to the new kernel
    pins = json.loads((srv.root / "sub" / ".envpin.json").read_text())["notebooks"]
    assert list(pins) == ["analysis.ipynb"]  # keyed by the notebook jupyter_server names
    assert pins["analysis.ipynb"]["image_id"] == docker_client.images.get(PY311).id
    # The server removes the old container once it has exited, just after the successor answered: wait for it.
    wait_for(lambda: len(containers(docker_client, kernel=kid)) == 1, 30, "the moved-from container to go")

    r = requests.post(srv.api(f"kernels/{kid}/restart"), timeout=120)
    assert r.status_code == 200, r.text
    status, out = srv.execute(kid, "import sys; print(sys.version_info[:2])")
    assert out.strip().endswith("(3, 11)")  # the restart read the pin ...
    assert "pinned by the entry 'analysis.ipynb'" in out  # ... and says so, before the first cell's output
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
    assert not containers(docker_client, kernel=kid)


def test_run_all_with_a_move_in_the_middle_answers_every_cell(server, install_kernelspec, docker_client):
    """JupyterLab's Run All sends every cell at once; those queued behind %use_image were sent to the old kernel.

    Each gets an answer: the cells before the move ran, the move's cell finished, the ones behind it are
    "aborted" (not run) with a line saying why and what to do; then the next cell runs in the new image.
    """
    name = install_kernelspec(PY313)
    srv = server()
    kid = srv.start_kernel(name, "run-all.ipynb")
    where = "import sys; print('where', sys.version_info[:2])"
    cells = [where, "x = 1", f"%load_ext envpin\n%use_image {PY311} --restart", where, "x += 1", where]
    replies = srv.execute_all(kid, cells, timeout=120)
    assert [r["status"] for r in replies] == ["ok", "ok", "ok", "aborted", "aborted", "aborted"], replies
    assert "where (3, 13)" in replies[0]["stdout"]
    assert f"moving this kernel into {PY311}" in replies[2]["stdout"]
    for r in replies[3:]:
        assert f"not run: the kernel moved into {PY311}" in r["stderr"] and "Run it again" in r["stderr"], r
        assert "where" not in r["stdout"]  # nothing of it ran, in either image
    status, out = srv.execute(kid, where)
    assert (status, out.strip()) == ("ok", "where (3, 11)")
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
