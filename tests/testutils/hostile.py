"""The hostile-kernel toolbox shared by the security tests: canaries, a kernel as another uid, attack helpers.

The server side runs as root and the kernel as the unprivileged ``KERNEL_UID``
(``user=KERNEL_UID:KERNEL_UID``), as in the findings that started these
tests, so a server that followed a planted link would act with root's rights.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from testutils import program
from testutils.kernels import run

KERNEL_UID = 4242


class Canaries:
    """Root-only files and folders outside the kernel's mounts, and a snapshot to compare against."""

    def __init__(self, base: Path):
        self.dir = base / "canary"
        self.dir.mkdir(mode=0o700)
        self.secret = f"ENVPIN-CANARY-{uuid.uuid4().hex}"
        self.secret_file = self.dir / "secret.txt"
        self.secret_file.write_text(self.secret)
        self.json_file = self.dir / "target.json"
        self.json_file.write_text(json.dumps({"notebooks": {"*": {"image": "evil/image"}}, "secret": self.secret}))
        self.root_only = self.dir / "rootonly"
        self.root_only.mkdir(mode=0o700)
        (self.root_only / "inner.txt").write_text(self.secret)
        for p in (self.secret_file, self.json_file, self.root_only / "inner.txt"):
            p.chmod(0o600)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for root, dirs, files in os.walk(self.dir):
            for name in [".", *dirs, *files]:
                p = os.path.normpath(os.path.join(root, name))
                st = os.lstat(p)
                out[p] = (
                    stat.S_IFMT(st.st_mode),
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid,
                    st.st_size,
                    st.st_mtime_ns,
                )
        return out

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before, "a canary outside the kernel's mounts was created, changed or chowned"
        assert self.secret_file.read_text() == self.secret

    def assert_not_leaked(self, *texts: str) -> None:
        for text in texts:
            assert self.secret not in text, "the canary's secret reached the kernel"


#: Kernel-side helpers, defined once per kernel: the attacker's toolbox (tests/kernel_programs/hostile.py).
TOOLBOX = program("hostile", "toolbox")


async def toolbox(kc):
    res = await run(kc, TOOLBOX)
    assert res["status"] == "ok", res
