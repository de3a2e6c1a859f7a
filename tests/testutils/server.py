"""A real jupyter_server in a subprocess: kernels created over REST, code executed over the websocket.

Used by the ``server`` fixture (``conftest.py``) and by the browser tests'
JupyterLab (the same server, with JupyterLab's extension enabled).
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

import requests
import websocket

from testutils import wait_for

#: Server options for tests that kill kernels on purpose: the restarter notices within 0.5 s and retries soon.
FAST_RESTARTER = ("--KernelRestarter.time_to_dead=0.5", "--KernelRestarter.stable_start_time=2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m APP`` serving ``root`` on 127.0.0.1 with a random token; up when the constructor returns.

    ``app``: ``jupyter_server`` (the default) or ``jupyterlab`` (the same
    server with JupyterLab's pages).
    """

    def __init__(self, root, env, extra_args=(), app: str = "jupyter_server"):
        self.root = root
        self.port = free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root.parent / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", app,
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
                "--ServerApp.open_browser=False", "--ServerApp.port_retries=0",
            ] + (["--allow-root"] if os.getuid() == 0 else []) + list(extra_args),
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{app} exited: {(root.parent / f'server-{self.port}.log').read_text()[-2000:]}")
            try:
                if requests.get(self.api("status"), timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{app} did not answer within 60 s")

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
            elif msg["msg_type"] in ("display_data", "update_display_data"):  # a %use_image line and its outcome
                out.append(msg["content"]["data"].get("text/plain", "") + "\n")
            elif msg["msg_type"] == "execute_reply":
                status = msg["content"]["status"]
                if status != "ok":
                    self.last_error = msg["content"].get("ename")
                    break
        ws.close()
        return status, "".join(out)

    def wait_answers(self, kernel_id, value, timeout=60, what=None):
        """Wait until the kernel prints ``value`` when asked to: through a restart, its channels come and go."""

        def answers() -> bool:
            try:
                status, out = self.execute(kernel_id, f"print({value!r})", timeout=20)
            except (websocket.WebSocketException, OSError):  # the channels are down while the kernel restarts
                return False
            return status == "ok" and out.strip() == str(value)

        wait_for(answers, timeout=timeout, what=what or f"kernel {kernel_id} to answer", interval=0.3)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
