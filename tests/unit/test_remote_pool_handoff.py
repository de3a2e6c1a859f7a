"""Unit tier: the remote pool's hand-over (``warm_kernel --poll``) and its keys; no engine.

The waiting side is ``envpin.entry.warm_kernel``'s own ``_make_poll_dir``/``_poll``, run in a thread
of this process on a temporary folder; the server side's archive is ``remote_pool.handover_archive``,
extracted in order as the engine's ``put_archive`` extracts it.  The engine tests are
tests/remote/test_remote_pool.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import tarfile
import threading
import types

import pytest

from envpin.entry import warm_kernel
from envpin.host.images import ResolvedImage
from envpin_provisioner.kernel.launch import KernelLaunch
from envpin_provisioner.remote import remote_pool
from testutils import wait_for

USER = f"{os.getuid()}:{os.getgid()}"
INFO = {
    "key": b"s3cret-key",
    "signature_scheme": "hmac-sha256",
    "transport": "ipc",
    "ip": "/local/channels/sock/k",
    **{f"{ch}_port": n for n, ch in enumerate(("shell", "iopub", "stdin", "control", "hb"), 1)},
}
IMAGE = ResolvedImage(reference="python:3.11-slim", id="sha256:" + "a" * 64, digest=None)


def _extract(archive: bytes, folder: str) -> None:
    """What ``put_archive`` does: the members in their order, written into ``folder``."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isdir():
                os.mkdir(os.path.join(folder, member.name), member.mode)
                continue
            data = tar.extractfile(member)
            assert data is not None
            fd = os.open(os.path.join(folder, member.name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, member.mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data.read())


def _waiter(folder: str) -> tuple[threading.Thread, list]:
    got: list = []

    def wait() -> None:
        try:
            got.append(warm_kernel._poll(folder, warm_kernel._make_poll_dir(folder)))
        except SystemExit as exc:
            got.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    wait_for(lambda: os.path.exists(os.path.join(folder, warm_kernel.POLL_READY)), timeout=5, what="the waiter")
    return thread, got


def test_one_archive_hands_over_and_only_the_key_stays(tmp_path):
    folder = str(tmp_path / "handoff")
    thread, got = _waiter(folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and got == []  # waiting, in a private folder
    launch = KernelLaunch(IMAGE, "k1", INFO, "/local/kernel.json", kernel_args=["--ext", "envpin"])
    message = remote_pool.handover_message(launch, {"A": "1"}, "/work", {"A": "0", "B": "2"})
    assert message == {
        "argv": ["-f", f"{remote_pool.HANDOFF_DIR}/{remote_pool.KEY_FILE}", "--ext", "envpin"],
        "cwd": "/work",
        "env": {"A": "1"},
        "unset": ["B"],  # what the container was created with and a cold start would not have
    }
    archive = remote_pool.handover_archive(INFO, "/remote/R/sock/k", message, USER)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:  # go last: the others are whole when it appears
        assert [(m.name, m.mode) for m in tar.getmembers()] == [
            ("kernel.json", 0o600),
            ("message.json", 0o600),
            ("go", 0o600),
        ]
    _extract(archive, folder)
    thread.join(5)
    assert got == [message]
    assert sorted(os.listdir(folder)) == ["go", "kernel.json"]  # the key, and the empty go (see below)
    key = json.load(open(os.path.join(folder, "kernel.json")))
    assert key["key"] == "s3cret-key" and key["transport"] == "ipc" and key["ip"] == "/remote/R/sock/k"
    assert key["shell_port"] == 1


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b'{"argv": "not a list"}',
        b"[1, 2]",
        b"x" * (warm_kernel.MAX_MESSAGE + 1),
    ],
)
def test_a_hand_over_that_is_not_one_ends_the_waiter(tmp_path, junk):
    folder = str(tmp_path / "handoff")
    thread, got = _waiter(folder)
    with open(os.path.join(folder, "message.json"), "wb") as f:
        f.write(junk)
    open(os.path.join(folder, "go"), "w").close()
    thread.join(5)
    assert len(got) == 1 and isinstance(got[0], SystemExit), got


def test_a_linked_message_is_not_followed(tmp_path):
    folder = str(tmp_path / "handoff")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"argv": ["-f", "/elsewhere"]}))
    thread, got = _waiter(folder)
    os.symlink(elsewhere, os.path.join(folder, "message.json"))
    open(os.path.join(folder, "go"), "w").close()
    thread.join(5)
    assert len(got) == 1 and isinstance(got[0], SystemExit) and "message.json" in str(got[0]), got


def test_a_folder_that_exists_already_is_never_the_hand_over_folder(tmp_path):
    folder = tmp_path / "handoff"
    folder.mkdir()  # an image (or anything before the waiter) made it: not the waiter's own
    with pytest.raises(FileExistsError):
        warm_kernel._make_poll_dir(str(folder))


def test_the_waiting_command_polls_its_own_folder():
    options = remote_pool._waiting_options({"command": ["ipykernel_launcher", "-f", "/tmp/envpin-kernel.json"]})
    assert options["command"] == ["envpin.entry.warm_kernel", "--poll", remote_pool.HANDOFF_DIR]
    assert options["name"].startswith("envpin-warm-remote-")


class _Kernel:
    """What ``RemoteWarmKernels`` reads of a provisioner."""

    def __init__(self, engine: str) -> None:
        self.kernel_id = f"kid-{engine[:3]}"
        self.log = types.SimpleNamespace(info=lambda *a: None, warning=lambda *a: None)
        self.pool_size, self.mount_envpin, self.engine, self.user = 1, True, engine, "1000:1000"
        self.remote_root = self.local_root = ""
        self.mounts: list[str] = []
        self._folder = types.SimpleNamespace(identity=(1, 2), path="/nb")
        self.ssh_side = None
        self.over_ssh = engine.startswith("ssh://")

    def build_launch(self, choice, env, moved=False):
        return KernelLaunch(choice.resolved, self.kernel_id, {}, "/c/kernel.json", cwd="/nb", env=dict(env))


def test_pool_keys_name_the_engine():
    """A pool of one engine never serves a kernel of another: same image, folder and options, other engine."""
    from envpin_provisioner.images.selection import ImageChoice
    from envpin_provisioner.warm import pool

    choice = ImageChoice(name="py", resolved=IMAGE, pinned=False)

    async def keys() -> list[str]:
        out = []
        for engine in ("ssh://alice@gpu-box", "tcp://gpu-box:2376", "ssh://alice@other-box"):
            warm = remote_pool.RemoteWarmKernels(_Kernel(engine))
            assert await warm.take(choice, {}) is None  # nothing is waiting anywhere
            assert warm._refill is not None
            out.append(warm._refill.args[0])
            warm._refill = None
            await warm.discard()
        return out

    try:
        found = asyncio.run(keys())
    finally:
        pool.pools.drain()
    assert [k.split("|")[0] for k in found] == ["ssh://alice@gpu-box", "tcp://gpu-box:2376", "ssh://alice@other-box"]
    assert len(set(found)) == 3


def test_a_cold_start_s_archive_brings_its_folder_and_the_key_stays_where_it_was(tmp_path):
    """``--given`` (a cold start over SSH): the archive goes into the running container's /tmp, folder included."""
    folder = str(tmp_path / "envpin-handoff")
    got: list = []
    thread = threading.Thread(target=lambda: got.append(warm_kernel._given(folder, timeout=10)), daemon=True)
    thread.start()
    launch = KernelLaunch(IMAGE, "k1", INFO, "/local/kernel.json")
    key = "/tmp/envpin-kernel.json"
    message = remote_pool.handover_message(launch, {"A": "1"}, "/work", {"A": "1"}, key=key)
    assert message["argv"] == ["-f", key] and message["unset"] == []
    archive = remote_pool.handover_archive(
        INFO, "/R/sock/k", message, USER, key="envpin-kernel.json", folder="envpin-handoff"
    )
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert [(m.name, m.mode, m.isdir()) for m in tar.getmembers()] == [
            ("envpin-handoff", 0o700, True),
            ("envpin-control", 0o700, True),  # the kernel's control folder (remote.control_relay)
            ("envpin-kernel.json", 0o600, False),
            ("envpin-handoff/message.json", 0o600, False),
            ("envpin-handoff/go", 0o600, False),
        ]
    _extract(archive, str(tmp_path))
    thread.join(5)
    assert got == [message]
    assert os.listdir(folder) == ["go"] and json.load(open(tmp_path / "envpin-kernel.json"))["ip"] == "/R/sock/k"


def test_go_stays_for_the_engine_still_setting_its_owner_and_mode(tmp_path):
    """The engine extracts ``go`` as a file first and sets its owner, mode and times after: the waiter, which
    starts on seeing it, must not remove it (the engine's lchown then failed, and the server's put_archive)."""
    folder = str(tmp_path / "handoff")
    thread, got = _waiter(folder)
    message = {"argv": ["-f", "/tmp/envpin-handoff/kernel.json"], "cwd": "/work", "env": {}, "unset": []}
    with open(os.path.join(folder, warm_kernel.POLL_MESSAGE), "w") as f:
        json.dump(message, f)
    go = os.path.join(folder, warm_kernel.POLL_GO)
    open(go, "w").close()  # created: the engine's next steps on it are to come
    thread.join(5)
    assert got == [message]
    os.chown(go, os.getuid(), os.getgid())  # as the engine's lchown, then chmod: the file is still there
    os.chmod(go, 0o600)


def test_a_cold_start_waits_bounded_and_only_for_a_private_folder(tmp_path):
    with pytest.raises(SystemExit, match="no hand-over"):
        warm_kernel._given(str(tmp_path / "never"), timeout=0.05)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    (shared / "message.json").write_text(json.dumps({"argv": []}))
    (shared / "go").touch()
    with pytest.raises(SystemExit, match="not a private folder"):
        warm_kernel._given(str(shared), timeout=1)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (real / "go").touch()
    os.symlink(real, tmp_path / "linked")
    with pytest.raises(OSError):  # a link is never the folder (O_NOFOLLOW)
        warm_kernel._given(str(tmp_path / "linked"), timeout=1)
