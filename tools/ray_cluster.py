"""A real Ray cluster on this machine whose nodes run workers with rootless podman (``image_uri``).

Built from nothing by the tests, as root (see ``shared/notes/engines.md`` for
why each step is there):

* Debian's ``podman`` (plus ``uidmap``, ``slirp4netns``, ``python3-venv``);
  an unprivileged user ``envpin-ray`` (``useradd`` gives it subordinate ids),
  its runtime folder ``/run/user/UID``; ``/dev/mqueue`` mounted (Ray's
  ``--ipc=host``); ``/dev/net/tun`` usable by users (rootless networking);
  overlay storage for that user (the rootless default, vfs, copies whole
  images);
* Ray with the dashboard and the client server, the very version the test
  images have, in a venv made from Debian's ``/usr/bin/python3`` (3.11.2, the
  images' Python: Ray wants the same Python on every node and worker);
* the images loaded into the user's podman storage (``docker save | podman
  load``; podman keeps Docker's image id), reloaded only when the id changed;
* a head node (``ray start --head``) as that user, and a second node joining it
  (resource ``node_b``), for a multi-node run: Ray Client on
  127.0.0.1:10001, the dashboard and job server on 127.0.0.1:8265, its
  ``--temp-dir`` under the user's home (a root-owned ``/tmp/ray`` would get
  in the way), warmed up with one Ray Client connection (the first one
  starts the client server's process, which can take longer than a
  client's default timeout on a loaded machine).

Ray hard-codes ``--userns=keep-id`` for image_uri workers, which only
rootless podman accepts: that is why the nodes run as a user, not root.
Everything the cluster started is stopped by ``stop()`` (``ray stop``, then
the user's processes and podman containers).  The workers' containers, which
Ray does not remove, are removed with them.

Run ``python -m tools.ray_cluster`` to start one by hand (``--stop`` stops it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.images import RAY_NEWEST
from tools.rootless_podman import RootlessUser

USER = "envpin-ray"
HOME = Path("/home") / USER
VENV = HOME / "venv"
TEMP = HOME / "rt"
CLIENT_PORT = 10001
DASHBOARD_PORT = 8265
GCS_PORT = 6380
RAY_VERSION = RAY_NEWEST  #: the version the test images install: the newest envpin supports


def _say(msg: str) -> None:
    print(f"[envpin ray] {msg}", file=sys.stderr, flush=True)


_user = RootlessUser(
    USER, extra_env={"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin", "RAY_USAGE_STATS_ENABLED": "0"}
)
as_user = _user.run  #: run a command as the cluster's user, in its environment
load_images = _user.load_images  #: Docker images into the user's podman storage, unless already there


def _uid() -> int:
    return _user.uid


def prepare() -> None:
    """Everything but the processes: packages, user, runtime folder, storage, Ray's venv."""
    _user.prepare()
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode != 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "python3-venv"], check=True, stdout=subprocess.DEVNULL, env=env
        )
    Path("/dev/mqueue").mkdir(exist_ok=True)
    if subprocess.run(["mountpoint", "-q", "/dev/mqueue"]).returncode != 0:
        subprocess.run(["mount", "-t", "mqueue", "mqueue", "/dev/mqueue"], check=True)  # Ray's --ipc=host
    marker = VENV / f".envpin-ray-{RAY_VERSION}"
    if not marker.exists():
        _say(f"installing Ray {RAY_VERSION} for the cluster's user (Debian's Python) ...")
        as_user(["/usr/bin/python3", "-m", "venv", "--clear", str(VENV)], check=True)
        as_user([f"{VENV}/bin/pip", "install", "-q", f"ray[default,client]=={RAY_VERSION}"], check=True)
        as_user(["touch", str(marker)], check=True)


def start() -> None:
    """Start the head (and a worker node); return once Ray Client and the dashboard answer."""
    stop()
    _podman_ready()
    as_user(["mkdir", "-p", str(TEMP)], check=True)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"]
    as_user(
        ["ray", "start", "--head", f"--port={GCS_PORT}", f"--ray-client-server-port={CLIENT_PORT}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={DASHBOARD_PORT}", "--include-dashboard=true",
         f"--temp-dir={TEMP}", *common],
        check=True, capture_output=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/v0/cluster_metadata", timeout=2) as r:
                if json.load(r).get("result"):
                    break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("the Ray head did not come up within 60 s")
    # A second node joins (on this machine too): tasks that ask for the resource "node_b" run there.
    as_user(
        ["ray", "start", f"--address=127.0.0.1:{GCS_PORT}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         '--resources={"node_b": 1}', "--disable-usage-stats"],
        check=True, capture_output=True,
    )  # fmt: skip
    warm = f"import ray; ray.init('ray://127.0.0.1:{CLIENT_PORT}'); print(ray.get(ray.put(1))); ray.shutdown()"
    for _ in range(3):
        if as_user(["python", "-c", warm], capture_output=True, timeout=120).returncode == 0:
            return
    raise RuntimeError("Ray Client does not answer on the test cluster")


def stop() -> None:
    """Stop every Ray process and podman container of the cluster's user; nothing of it keeps running."""
    try:
        _uid()
    except KeyError:
        return
    if (VENV / "bin" / "ray").exists():
        as_user(["ray", "stop", "--force"], capture_output=True)
    as_user(["podman", "rm", "--all", "--force"], capture_output=True)
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and subprocess.run(["pgrep", "-u", USER], capture_output=True).returncode == 0:
        time.sleep(0.1)
    # Killing the user's processes also killed podman's rootless "pause" process, which holds the user
    # namespace every podman command joins; its stale pid file made the next `podman run` (Ray's) fail now
    # and then with "cannot set user namespace". `podman system migrate` resets that state.
    as_user(["podman", "system", "migrate"], capture_output=True)


def _podman_ready() -> None:
    """Rootless podman can set up its user namespace (what Ray's image_uri workers need); retry once after a reset."""
    for _ in range(3):
        if as_user(["podman", "unshare", "true"], capture_output=True).returncode == 0:
            return
        as_user(["podman", "system", "migrate"], capture_output=True)
        time.sleep(1)
    raise RuntimeError(f"rootless podman of {USER} cannot set up its user namespace")


def worker_containers() -> list[str]:
    out = as_user(
        ["podman", "ps", "--all", "--format", "{{.ID}} {{.Image}} {{.Status}}"], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def cluster_metadata() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{DASHBOARD_PORT}/api/v0/cluster_metadata", timeout=5) as r:
        return json.load(r)["data"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if "--stop" in sys.argv:
        stop()
    else:
        import docker

        prepare()
        load_images(docker.from_env(), ["envpin-test/ray:latest"])
        start()
        print(f"Ray Client: ray://127.0.0.1:{CLIENT_PORT}  dashboard/jobs: http://127.0.0.1:{DASHBOARD_PORT}")
