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
                if requests.get(self.api("status"), timeout=5).ok:
                    return
            except requests.RequestException:  # not listening yet, or bound but still starting its extensions
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{app} did not answer within 60 s")

    def api(self, path):
        return f"{self.url}/api/{path}?token={self.token}"

    def start_kernel(self, name, path):
        return self.start_session(name, path)["kernel"]["id"]

    def start_session(self, name, path):
        """A session for notebook ``path`` with a new kernel of kernelspec ``name``, as JupyterLab makes it."""
        r = requests.post(
            self.api("sessions"),
            json={"path": path, "type": "notebook", "name": os.path.basename(path), "kernel": {"name": name}},
            timeout=120,
        )
        assert r.status_code == 201, r.text
        return r.json()

    def rename(self, old, new, session=None):
        """Rename (or move) ``old`` to ``new`` as JupyterLab does: the contents API, then the session's path."""
        r = requests.patch(self.api(f"contents/{old}"), json={"path": new}, timeout=30)
        assert r.status_code == 200, r.text
        if session is not None:
            r = requests.patch(
                self.api(f"sessions/{session}"), json={"path": new, "name": os.path.basename(new)}, timeout=30
            )
            assert r.status_code == 200, r.text

    def restart(self, kernel_id):
        r = requests.post(self.api(f"kernels/{kernel_id}/restart"), timeout=120)
        assert r.status_code == 200, r.text

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.root.parent / f"server-{self.port}.log").read_text(errors="replace")

    def execute(self, kernel_id, code, timeout=60, once_running=None):
        """Run ``code``; ``once_running()`` is called at its first output (e.g. to interrupt it).

        The cell must print first (flushed): then it runs.  Not a sleep after sending: jupyter_server may
        hold a new websocket's first request for a while (its nudge), and an interrupt that reaches an idle
        kernel is lost.
        """
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
        out, status, self.last_error = [], None, None
        idle, deadline = False, time.monotonic() + timeout
        # Done at the reply and the request's "idle" (its output may come after the reply: a kernel's first
        # output, the pin note, is one message and the cell's print another); an error ends it at once.
        while status is None or (status == "ok" and not idle and time.monotonic() < deadline):
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
                if once_running is not None:
                    once_running, call = None, once_running
                    call()
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif msg["msg_type"] in ("display_data", "update_display_data"):  # a %use_image line and its outcome
                out.append(msg["content"]["data"].get("text/plain", "") + "\n")
            elif msg["msg_type"] == "execute_reply":
                status = msg["content"]["status"]
                if status != "ok":
                    self.last_error = msg["content"].get("ename")
                    break
        ws.close()
        return status, "".join(out)

    def execute_all(self, kernel_id, cells, timeout=60):
        """Send every cell at once, as JupyterLab's Run All does; each one's reply status and output, in order.

        Waits until every request has its reply and its "idle" (what a client takes as "finished").
        """
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{kernel_id}/channels?token={self.token}", timeout=timeout
        )
        session = uuid.uuid4().hex
        ids = [uuid.uuid4().hex for _ in cells]
        for msg_id, code in zip(ids, cells, strict=True):
            ws.send(
                json.dumps(
                    {
                        "header": {"msg_id": msg_id, "username": "test", "session": session,
                                   "msg_type": "execute_request", "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": True,
                                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
                    }
                )
            )  # fmt: skip
        results = {i: {"status": None, "stdout": "", "stderr": "", "idle": False} for i in ids}
        deadline = time.monotonic() + timeout
        while not all(r["status"] and r["idle"] for r in results.values()):
            if time.monotonic() > deadline:
                raise AssertionError(f"cells left without an answer: {results}")
            msg = json.loads(ws.recv())
            result = results.get(msg.get("parent_header", {}).get("msg_id"))
            if result is None:
                continue
            if msg["msg_type"] == "stream":
                result[msg["content"]["name"]] += msg["content"]["text"]
            elif msg["msg_type"] in ("display_data", "update_display_data"):  # a %use_image line and its outcome
                result["stdout"] += msg["content"]["data"].get("text/plain", "") + "\n"
            elif msg["msg_type"] == "execute_reply":
                result["status"] = msg["content"]["status"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                result["idle"] = True
        ws.close()
        return [results[i] for i in ids]

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
