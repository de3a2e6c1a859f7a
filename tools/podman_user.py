"""A rootless-Podman user on this machine, set up from nothing, for envpin's Podman tests.

What a person on a Fedora workstation or an HPC login node has: no Docker,
their own rootless Podman, its API socket at
``$XDG_RUNTIME_DIR/podman/podman.sock``, and Jupyter running as themselves.
Made here, as root:

* Debian's ``podman`` (plus ``uidmap`` for the subordinate ids ``useradd``
  hands out, ``slirp4netns``) and a user ``envpin-podman`` with a runtime
  folder ``/run/user/UID`` (what a login would create) and overlay storage;
* a venv of that user's own, from Debian's Python, with envpin installed
  from a copy of this checkout (the checkout, and root's Python, may not be
  readable by the user: as for a real user, envpin lives in their venv);
* ``podman system service`` as that user (``service()``, stopped on exit);
* images copied from Docker (``docker save | podman load``, what the README
  tells a user without a registry), reloaded only when the id changed.

Nothing here is used by envpin itself: tests drive the user's Jupyter side
with ``as_user([...])``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tools.docker_engine import apt_install
from tools.rootless_podman import RootlessUser

USER = "envpin-podman"
HOME = Path("/home") / USER
VENV = HOME / "venv"
SRC = HOME / "envpin-src"
REPO = Path(__file__).resolve().parent.parent
#: What the user's venv holds besides envpin: a notebook runner, jobs' pickler, the kernel's IPython.
PACKAGES = ("nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "cloudpickle>=3.0")


def _say(msg: str) -> None:
    print(f"[envpin podman user] {msg}", file=sys.stderr, flush=True)


_user = RootlessUser(USER, extra_env={"PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin"})
load_images = _user.load_images  #: Docker images into the user's Podman storage (docker save | podman load)


def uid() -> int:
    return _user.uid


def socket_path() -> str:
    return f"/run/user/{uid()}/podman/podman.sock"


def env(**extra: str) -> dict[str, str]:
    """The user's environment: theirs only, nothing of root's (DOCKER_HOST points at their Podman)."""
    return _user.env(DOCKER_HOST=f"unix://{socket_path()}", **extra)


def as_user(argv: list[str], extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` as the user, in the user's environment (never a login shell)."""
    return _user.run(argv, {"DOCKER_HOST": f"unix://{socket_path()}", **(extra_env or {})}, **kwargs)


def _source_digest() -> str:
    h = hashlib.sha256()
    for top in ("ipython_ext", "kernel_provisioner", "kernelspecs", "jupyter-config", "jupyterlab_ext/labextension"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(REPO)).encode())
                h.update(path.read_bytes())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def prepare() -> None:
    """Packages, the user, runtime folder, storage, and the user's venv with this checkout's envpin."""
    _user.prepare()
    _venv()


def _venv() -> None:
    marker = VENV / ".envpin-deps"
    wanted = "\n".join(PACKAGES)
    if not marker.exists() or marker.read_text() != wanted:
        _say("a venv for the Podman user, from Debian's Python ...")
        if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True).returncode:
            apt_install("python3-venv", "envpin-no-such-command")  # always installs: venv is a module, not a command
        as_user(["/usr/bin/python3", "-m", "venv", "--clear", str(VENV)], check=True)
        as_user([f"{VENV}/bin/pip", "install", "-q", "hatchling>=1.18", *PACKAGES], check=True)
        as_user(["sh", "-c", f"printf '%s' '{wanted}' > {marker}"], check=True)
    digest = _source_digest()
    stamp = VENV / ".envpin-src"
    if stamp.exists() and stamp.read_text() == digest:
        return
    _say("installing this checkout's envpin into the Podman user's venv ...")
    if SRC.exists():
        shutil.rmtree(SRC)
    SRC.mkdir()
    for top in ("ipython_ext", "kernel_provisioner", "kernelspecs", "jupyter-config", "jupyterlab_ext/labextension"):
        shutil.copytree(REPO / top, SRC / top, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "jupyterlab_ext/install.json"):
        shutil.copy(REPO / name, SRC / name)
    subprocess.run(["chown", "-R", f"{USER}:{USER}", str(SRC)], check=True)
    # The JupyterLab extension is copied prebuilt (this checkout's install built it): no build hook, no npm.
    no_hooks = {"HATCH_BUILD_NO_HOOKS": "true"}
    as_user(
        [f"{VENV}/bin/pip", "install", "-q", "--no-build-isolation", "--force-reinstall", "--no-deps", str(SRC)],
        no_hooks,
        check=True,
    )
    as_user(
        [f"{VENV}/bin/pip", "install", "-q", "--no-build-isolation", str(SRC)], no_hooks, check=True
    )  # envpin's own dependencies
    as_user(["sh", "-c", f"printf '%s' {digest} > {stamp}"], check=True)


@contextlib.contextmanager
def service(timeout: float = 30) -> Iterator[str]:
    """``podman system service`` as the user for the duration; yields ``DOCKER_HOST``; stops it and its containers."""
    sock = Path(socket_path())
    if sock.exists():
        sock.unlink()
    proc = subprocess.Popen(
        _user.argv(["podman", "system", "service", "--time=0", f"unix://{sock}"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=HOME,  # not the caller's folder (see RootlessUser.run)
    )
    try:
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        as_user(["podman", "rm", "--all", "--force"], capture_output=True)


if __name__ == "__main__":
    prepare()
