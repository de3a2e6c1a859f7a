"""Make sure a Docker engine answers, starting one when this machine has none.

Used by the quickstart, the test suite and CI.  The machines envpin is developed
on ship the docker *client* but no engine, so a fresh machine needs Debian's
``docker.io`` installed and ``dockerd`` started in the background.  Everything
here is idempotent: an engine that already answers is left alone.

Run as ``python -m tools.docker_engine`` to do it from a shell.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

DOCKERD_LOG = "/var/log/envpin-dockerd.log"


def engine_answers(timeout: float = 3.0) -> bool:
    """True when the engine named by the environment (``DOCKER_HOST``) answers a ping."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _say(msg: str) -> None:
    print(f"[envpin] {msg}", file=sys.stderr, flush=True)


#: Image builds run in threads and several may need the same package: apt allows one at a time.
_APT_LOCK = threading.Lock()


def apt_install(package: str, command: str) -> str:
    """Install Debian's ``package`` unless ``command`` is on PATH already; return its path.

    Serialized (apt holds a lock of its own and fails instead of waiting), and
    ``apt-get`` is retried a few times: a mirror in the middle of a sync
    answers ``update`` with an error that is gone a few seconds later.
    """
    with _APT_LOCK:
        path = shutil.which(command)
        if path:
            return path
        if os.geteuid() != 0:
            raise SystemExit(f"{command} is missing and this is not root: sudo apt-get install {package}")
        _say(f"installing Debian's {package} with apt-get ...")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
            for attempt in range(4):
                done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL)
                if done.returncode == 0:
                    break
                if attempt == 3:
                    raise subprocess.CalledProcessError(done.returncode, argv)
                time.sleep(5 * (attempt + 1))
        return shutil.which(command) or command


def ensure_engine(wait: float = 60.0) -> None:
    """Return once an engine answers; install and start one if we are root and none does."""
    if engine_answers():
        return
    if os.environ.get("DOCKER_HOST"):
        raise SystemExit(
            f"The Docker engine at DOCKER_HOST={os.environ['DOCKER_HOST']} does not answer. "
            "Start it, or unset DOCKER_HOST to use a local engine."
        )
    if os.geteuid() != 0:
        raise SystemExit(
            "No Docker engine answers on /var/run/docker.sock and this is not root, so envpin cannot "
            "start one. Start the engine (sudo systemctl start docker, or sudo dockerd &) or re-run as root."
        )
    apt_install("docker.io", "dockerd")
    _say(f"starting dockerd in the background (log: {DOCKERD_LOG}) ...")
    log = open(DOCKERD_LOG, "ab")
    subprocess.Popen(
        ["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True
    )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if engine_answers():
            _say("Docker engine is up")
            return
        time.sleep(0.5)
    raise SystemExit(f"dockerd did not answer within {wait:.0f}s; see {DOCKERD_LOG}")


def ensure_debootstrap() -> None:
    """The offline image builder needs Debian's debootstrap."""
    apt_install("debootstrap", "debootstrap")


if __name__ == "__main__":
    ensure_engine()
