"""A local container registry on 127.0.0.1, for tests of the pull path.

No public registry is reachable from envpin's development machines, but
Debian packages the real registry server (``docker-registry``, the
distribution project's ``registry`` binary).  Running it on loopback gives the
engine a real registry to pull from: real manifests, real ``repo@sha256``
digests, real progress events.  The engine treats 127.0.0.0/8 registries as
insecure (plain HTTP) by default, so no TLS setup is needed.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tools.docker_engine import apt_install
from tools.images import CACHE_DIR

_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRegistry:
    """``with LocalRegistry() as reg: reg.address`` -> ``127.0.0.1:PORT``."""

    def __init__(self, root: Path | None = None):
        self.binary = apt_install("docker-registry", "docker-registry")
        self.root = root or CACHE_DIR / "registry"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LocalRegistry:
        config = self.root.parent / f"registry-{self.port}.yml"
        config.write_text(_CONFIG.format(root=self.root, port=self.port))
        self.proc = subprocess.Popen(
            [self.binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1)
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the local registry did not start")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
