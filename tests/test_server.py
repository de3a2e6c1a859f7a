"""A real jupyter_server: kernels created over REST, code executed over the websocket.

Also: a server killed with SIGKILL leaves its kernel container behind, and
``envpin gc`` (or the next server's first kernel start) removes it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket

from conftest import PY311, PY313


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root, env, extra_args=()):
        self.root = root
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root.parent / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter_server",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
                "--ServerApp.open_browser=False", "--ServerApp.port_retries=0",
            ] + (["--allow-root"] if os.getuid() == 0 else []) + list(extra_args),
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter_server exited: {(root.parent / f'server-{self.port}.log').read_text()[-2000:]}")
            try:
                if requests.get(self.api("status"), timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("jupyter_server did not start")

    def api(self, path):
        return f"{self.url}/api/{path}?token={self.token}"

    def start_kernel(self, name, path):
        r = requests.post(
            self.api("sessions"),
            json={"path": path, "type": "notebook", "name": os.path.basename(path), "kernel": {"name": name}},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        return r.json()["kernel"]["id"]

    def execute(self, kernel_id, code, timeout=60, during=None):
        """Run ``code``; ``during()`` is called once the request is sent (e.g. to interrupt it)."""
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}", timeout=timeout
        )
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                               "msg_type": "execute_request", "version": "5.3"},
                    "parent_header": {}, "metadata": {}, "channel": "shell",
                    "content": {"code": code, "silent": False, "store_history": False,
                                "user_expressions": {}, "allow_stdin": False},
                }
            )
        )  # fmt: skip
        if during is not None:
            during()
        out, status, self.last_error = [], None, None
        while status is None or (status == "ok" and not out):
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "execute_reply":
                status = msg["content"]["status"]
                if status != "ok":
                    self.last_error = msg["content"].get("ename")
                    break
        ws.close()
        return status, "".join(out)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture
def server(jupyter_env, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    servers = []

    def start(*extra_args):
        s = Server(root, dict(os.environ), extra_args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


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
    containers = docker_client.containers.list(filters={"label": f"envpin.kernel-id={kid}"})
    assert len(containers) == 1
    # Nothing in the container listens on a network address: the channels are unix sockets.
    assert not containers[0].attrs["NetworkSettings"]["Ports"]
    r = requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
    assert r.status_code == 204
    assert not docker_client.containers.list(all=True, filters={"label": f"envpin.kernel-id={kid}"})


def test_gc_removes_the_container_of_a_killed_server(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY311)
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    assert srv.execute(kid, "print(1)")[0] == "ok"
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    orphan = docker_client.containers.list(filters={"label": f"envpin.kernel-id={kid}"})
    assert len(orphan) == 1 and orphan[0].status == "running"  # the kernel cannot know its server died
    assert orphan[0].labels["envpin.owner-pid"] == str(srv.proc.pid)

    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert orphan[0].short_id in out.stdout
    assert not docker_client.containers.list(all=True, filters={"label": f"envpin.kernel-id={kid}"})


def test_a_new_server_collects_orphans_on_its_first_kernel(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY311)
    first = server()
    old = first.start_kernel(name, "a.ipynb")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert docker_client.containers.list(filters={"label": f"envpin.kernel-id={old}"})
    second = server()
    new = second.start_kernel(name, "b.ipynb")
    assert not docker_client.containers.list(all=True, filters={"label": f"envpin.kernel-id={old}"})
    assert docker_client.containers.list(filters={"label": f"envpin.kernel-id={new}"})
    requests.delete(second.api(f"kernels/{new}"), timeout=60)


def test_a_container_killed_from_outside_is_restarted_in_the_same_image(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY313)
    srv = server()
    kid = srv.start_kernel(name, "a.ipynb")
    (old,) = docker_client.containers.list(filters={"label": f"envpin.kernel-id={kid}"})
    old.kill()
    deadline = time.monotonic() + 60
    new = []
    while time.monotonic() < deadline:
        new = [c for c in docker_client.containers.list(filters={"label": f"envpin.kernel-id={kid}"}) if c.id != old.id]
        if new:
            break
        time.sleep(0.5)
    assert new, "the server's restarter did not bring a new container"
    assert new[0].attrs["Image"] == old.attrs["Image"]
    status, out = srv.execute(kid, "import sys; print(sys.version_info[:2])")
    assert (status, out.strip()) == ("ok", "(3, 13)")
    assert not docker_client.containers.list(all=True, filters={"id": old.id})  # the dead one was removed
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)


def test_a_slow_kernel_start_does_not_block_the_server(server, install_kernelspec, docker_client):
    """Docker calls and the readiness wait run off the event loop: other requests are served meanwhile."""
    import threading

    # The escape hatch delays the kernel by 6 s inside the container (an image with a slow entrypoint).
    name = install_kernelspec(
        PY311, extra_container_options={"entrypoint": ["sh", "-c", 'sleep 6; exec python3 "$@"', "sh"]}
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
    assert len(docker_client.containers.list(all=True, filters={"label": f"envpin.kernel-id={kid}"})) == 1

    r = requests.post(srv.api(f"kernels/{kid}/restart"), timeout=120)
    assert r.status_code == 200, r.text
    status, out = srv.execute(kid, "import sys; print(sys.version_info[:2])")
    assert out.strip() == "(3, 11)"  # the restart read the pin
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
    assert not docker_client.containers.list(all=True, filters={"label": f"envpin.kernel-id={kid}"})
