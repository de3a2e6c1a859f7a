"""An unprivileged user with rootless Podman, made from nothing by root: what the Ray cluster and the Podman tests share.

* Debian's ``podman``, ``uidmap`` (the setuid helpers that map the
  subordinate ids ``useradd`` hands out) and ``slirp4netns`` (rootless
  networking; ``/dev/net/tun`` made usable by users);
* the user, and its runtime folder ``/run/user/UID`` (its
  ``XDG_RUNTIME_DIR``: what a login would create), with ``podman/`` in it for
  the API socket;
* overlay storage (the rootless default, vfs, copies whole images);
* images copied from the Docker engine (``docker save | podman load``;
  Podman keeps Docker's image id), loaded again only when the id changed.

Commands run as the user with ``env -i`` and the user's own environment
(never a login shell): nothing of root's leaks in.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from tools.docker_engine import apt_install


class RootlessUser:
    def __init__(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.home = Path("/home") / name
        self._extra_env = extra_env or {}

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": f"/run/user/{self.uid}",
            "LANG": "C.UTF-8",
            **self._extra_env,
            **extra,
        }

    def argv(self, argv: list[str], extra_env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as the user, in the user's environment (for ``subprocess.Popen``)."""
        pairs = [f"{k}={v}" for k, v in self.env(**(extra_env or {})).items()]
        return ["runuser", "-u", self.name, "--", "env", "-i", *pairs, *argv]

    def run(self, argv: list[str], extra_env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        """``argv`` as the user; in the user's home unless ``cwd`` says otherwise.

        Never in the caller's folder: a checkout in a private folder (``mktemp -d``,
        mode 700) is not the user's to enter, and rootless podman, which
        re-enters its working folder inside its user namespace, fails there.
        """
        kwargs.setdefault("cwd", self.home)
        return subprocess.run(self.argv(argv, extra_env), **kwargs)

    def prepare(self) -> None:
        """Packages, the user, its runtime folder and overlay storage (each step only when missing)."""
        if os.geteuid() != 0:
            raise SystemExit(f"The rootless-Podman user {self.name} is set up by root.")
        apt_install("podman", "podman")
        apt_install("uidmap", "newuidmap")
        apt_install("slirp4netns", "slirp4netns")
        try:
            pwd.getpwnam(self.name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", self.name], check=True)
        runtime = Path(f"/run/user/{self.uid}")
        runtime.mkdir(parents=True, exist_ok=True)
        os.chown(runtime, self.uid, self.uid)
        runtime.chmod(0o700)
        if os.path.exists("/dev/net/tun"):
            os.chmod("/dev/net/tun", 0o666)  # rootless podman's network (slirp4netns) opens it
        config = self.home / ".config" / "containers"
        self.run(["mkdir", "-p", str(config), f"{runtime}/podman"], check=True)
        self.run(["sh", "-c", f"printf '[storage]\\ndriver = \"overlay\"\\n' > {config}/storage.conf"], check=True)

    def load_images(self, docker_client, tags: list[str]) -> None:
        """Copy Docker images into the user's Podman storage, unless Podman has the same id already."""
        for tag in tags:
            docker_id = docker_client.images.get(tag).id.split(":", 1)[1]
            have = self.run(["podman", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
            if have.returncode == 0 and have.stdout.strip() == docker_id:
                continue
            print(f"[rootless podman] docker save {tag} | podman load ({self.name}) ...", file=sys.stderr, flush=True)
            save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
            load = self.run(["podman", "load"], stdin=save.stdout, capture_output=True, text=True)
            save.wait()
            if load.returncode != 0 or save.returncode != 0:
                raise RuntimeError(f"podman load of {tag} failed: {load.stderr[-2000:]}")
            self.run(["podman", "image", "prune", "-f"], capture_output=True)  # the id this tag had before
