"""A hostile job cannot reach its caller's files, privileges or executor beyond its own results.

Issue 31, finding 7, each as a regression test: the caller is this test
process, running as root; the jobs run in real worker containers of a real
image (``ContainerExecutor`` in container mode) and attack with nothing but
Python: they try to write a setuid file into the caller's root-only folder,
connect to the executor's socket and say nothing, send ``0xff`` bytes, huge
length prefixes, random bytes and half-closed connections, flood it with
fake hellos, write garbage into their own worker's connection, and reach
another executor's socket through a working folder at the temp folder.

After each attack the executor must still start new workers at once (the
accept loop lives and is not stalled) and the caller's descriptors stay
bounded.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
import uuid

import pytest

from envpin.jobs.executor import ContainerExecutor, WorkerDied
from envpin.jobs.listener import HANDSHAKE_SECONDS, MAX_PENDING, SOCKET_NAME
from envpin.names import CONTAINER_JOB_SOCKETS as CONTAINER_SOCKET_DIR
from testutils import PY311, containers, wait_for

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the findings need a caller running as root")

SOCKET = f"{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"


@pytest.fixture
def root_only_cwd(tmp_path, monkeypatch):
    """The caller works in a root-only folder holding a root-only secret; returns (folder, snapshot)."""
    folder = tmp_path / "caller"
    folder.mkdir(mode=0o700)
    secret = folder / "secret.txt"
    secret.write_text(f"ENVPIN-CANARY-{uuid.uuid4().hex}")
    secret.chmod(0o600)
    monkeypatch.chdir(folder)
    return folder, snapshot(folder)


def snapshot(folder) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in [".", *dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            out[os.path.normpath(os.path.join(root, name))] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns)
    return out


def caller_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- what jobs do: plain Python in the worker (shipped by value: this module is not installed) ----------


def who_am_i(folder: str) -> dict:
    """The job's identity and reach, and its try at a setuid file in the caller's folder."""
    import os

    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
    target = os.path.join(folder, "suid")
    try:
        with open(target, "wb") as fh:
            fh.write(b"#!/bin/sh\nid\n")
        os.chmod(target, 0o4755)
        wrote = "wrote"
    except OSError as exc:
        wrote = type(exc).__name__
    try:
        open(os.path.join(folder, "secret.txt")).read()
        read = "read"
    except OSError as exc:
        read = type(exc).__name__
    try:
        os.setuid(0)
        setuid = "became root"
    except OSError as exc:
        setuid = type(exc).__name__
    try:
        open(os.path.join(os.path.dirname(SOCKET_PATH), "planted"), "w").close()
        planted = "planted"
    except OSError as exc:
        planted = type(exc).__name__
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
        "no_new_privs": status["NoNewPrivs"].strip(),
        "mounts": mounts,
        "sees_folder": os.path.isdir(folder),
        "cwd": os.getcwd(),
        "wrote": wrote,
        "read": read,
        "setuid": setuid,
        "planted_in_socket_folder": planted,
    }


SOCKET_PATH = SOCKET


def attack(kind: str, count: int = 1, path: str = SOCKET) -> dict:
    """Open ``count`` connections to the executor's socket doing ``kind``; keep them open after returning."""
    import builtins
    import json
    import os
    import random
    import socket

    held = builtins.__dict__.setdefault("_envpin_held", [])
    errors: dict[str, int] = {}
    rng = random.Random(count)
    for i in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(path)
            action = kind if kind != "fuzz" else rng.choice(["silent", "ff", "huge", "random", "half", "fake-hello",
                                                                 "bad-json", "wrong-kind", "drip", "close"])  # fmt: skip
            if action == "ff":
                s.sendall(b"\xff" * 8)
            elif action == "huge":
                s.sendall((1 << 62).to_bytes(8, "big") + os.urandom(rng.randint(0, 64)))
            elif action == "random":
                s.sendall(os.urandom(rng.randint(1, 70_000)))
            elif action == "half":
                s.sendall(b"\x00\x00\x00")
                s.shutdown(socket.SHUT_WR)
            elif action in ("fake-hello", "bad-json", "wrong-kind"):
                header = {
                    "fake-hello": json.dumps(
                        {
                            "kind": "hello",
                            "slot": f"{i % 2}-abcdef",
                            "token": os.urandom(16).hex(),
                            "env": {"python": "3.11\n\x1b[2Jok"},
                        }
                    ).encode(),  # fmt: skip
                    "bad-json": b"{" * 5000,
                    "wrong-kind": json.dumps({"kind": ["hello"]}).encode(),
                }[action]
                s.sendall(len(header).to_bytes(8, "big") + header + bytes(16))
            elif action == "drip":
                s.sendall(b"\x00")  # one byte of a length, then silence
            elif action == "close":
                s.close()
                continue
        except OSError as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            s.close()
            continue
        held.append(s)
    return {"held": len(held), "errors": errors}


def break_own_connection(data: bytes) -> None:
    """Write ``data`` into this worker's own connection to the executor, as if it were the answer."""
    import gc
    import socket

    for obj in gc.get_objects():
        if isinstance(obj, socket.socket) and obj.family == socket.AF_UNIX and obj.fileno() >= 0:
            try:
                obj.getpeername()
            except OSError:
                continue
            obj.sendall(data)


def reach(path: str) -> dict:
    """Try to connect to ``path`` (another executor's socket, by its host path) and to list its folders."""
    import os
    import socket

    out = {}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
        out["connect"] = "connected"
    except OSError as exc:
        out["connect"] = type(exc).__name__
    finally:
        s.close()
    for name, folder in (("folder", os.path.dirname(path)), ("base", os.path.dirname(os.path.dirname(path)))):
        try:
            out[name] = sorted(os.listdir(folder))
        except OSError as exc:
            out[name] = type(exc).__name__
    out["own_socket_folder"] = sorted(os.listdir(os.path.dirname(SOCKET_PATH)))
    return out


def two_new_workers_start(ex: ContainerExecutor, docker_client) -> float:
    """Seconds it takes the executor to serve two jobs at once (one at least on a newly started worker)."""
    started = time.monotonic()
    futures = [ex.submit(time.sleep, 1) for _ in range(2)]
    for f in futures:
        f.result(timeout=60)
    assert len(containers(docker_client, role="job", running=True)) >= 2
    return time.monotonic() - started


# ---- the tests ----------------------------------------------------------------------------------------


def test_a_root_callers_job_cannot_write_a_setuid_file_into_the_callers_folder(executor, root_only_cwd, docker_client):
    folder, before = root_only_cwd
    # Default: nothing of the caller's is mounted, the job is nobody, without capabilities.
    seen = executor(PY311, max_workers=1).submit(who_am_i, str(folder)).result(timeout=60)
    assert (seen["uid"], seen["gid"]) == (65534, 65534)
    assert seen["caps"] == ["0000000000000000"] * 5 and seen["no_new_privs"] == "1"
    assert not seen["sees_folder"] and str(folder) not in seen["mounts"]
    assert seen["wrote"] == "FileNotFoundError" and seen["setuid"] == "PermissionError"
    assert seen["planted_in_socket_folder"] == "OSError"  # EROFS: its socket folder is read-only
    assert seen["cwd"] == "/tmp/envpin-home"  # a private tmpfs, not a host folder
    assert {m for m in seen["mounts"] if m.startswith(("/opt/envpin", "/run/envpin"))} == {
        "/opt/envpin/python/envpin",
        CONTAINER_SOCKET_DIR,
    }
    # Asked for, read-only: it sees the folder, cannot write it, and as nobody cannot read the root-only secret.
    seen = executor(PY311, max_workers=1, workdir="ro").submit(who_am_i, str(folder)).result(timeout=60)
    assert seen["sees_folder"] and seen["cwd"] == str(folder)
    assert seen["wrote"] in ("OSError", "PermissionError") and seen["read"] == "PermissionError"
    # Read-write: still nobody, so a root-only folder stays closed.
    seen = executor(PY311, max_workers=1, workdir="rw").submit(who_am_i, str(folder)).result(timeout=60)
    assert seen["wrote"] == "PermissionError" and seen["uid"] == 65534
    assert snapshot(folder) == before
    assert not any(os.stat(p).st_mode & stat.S_ISUID for p in before)


def test_executor_options_are_validated_with_clear_errors():
    import envpin

    with pytest.raises(envpin.EnvpinError, match=r"workdir='yes'.*workdir='ro'.*workdir='rw'.*workdir=None"):
        ContainerExecutor(PY311, workdir="yes")
    with pytest.raises(envpin.EnvpinError, match=r"user='root'\) is not a user id.*numeric uid or uid:gid"):
        ContainerExecutor(PY311, user="root")


@pytest.mark.parametrize("kind", ["silent", "ff", "huge", "half", "random"])
def test_a_job_talking_nonsense_to_the_socket_does_not_stop_new_workers(kind, executor, docker_client):
    ex = executor(PY311, max_workers=2)
    ex.submit(abs, -1).result(timeout=60)
    fds = caller_fds()  # with a worker and the engine's client
    got = ex.submit(attack, kind, 3).result(timeout=60)
    assert got["held"] == 3, got
    assert two_new_workers_start(ex, docker_client) < HANDSHAKE_SECONDS - 2  # not stalled by the silent ones
    assert caller_fds() <= fds + 12  # one more worker's connection, its Docker calls; not a descriptor per attack
    assert ex._listener._thread.is_alive()


def test_a_flood_of_fake_hellos_does_not_exhaust_the_callers_descriptors(executor, docker_client):
    ex = executor(PY311, max_workers=2)
    ex.submit(abs, -1).result(timeout=60)
    fds = caller_fds()
    got = ex.submit(attack, "fake-hello", 1100).result(timeout=120)
    assert got["held"] + sum(got["errors"].values()) == 1100
    assert caller_fds() <= fds + MAX_PENDING + 8  # never more than the waiting bound ...
    wait_for(lambda: caller_fds() <= fds + 8, timeout=3, what="the fake hellos to be closed")  # ... and soon none
    got = ex.submit(attack, "silent", 1100).result(timeout=120)
    assert caller_fds() <= fds + MAX_PENDING + 8  # silent ones wait, at most MAX_PENDING at a time
    assert two_new_workers_start(ex, docker_client) < HANDSHAKE_SECONDS - 2
    assert ex._listener._thread.is_alive()


def test_a_fuzzing_job_leaves_the_accept_loop_serving(executor, docker_client):
    ex = executor(PY311, max_workers=2)
    ex.submit(abs, -1).result(timeout=60)
    fds = caller_fds()
    for round_ in range(3):
        got = ex.submit(attack, "fuzz", 200 + round_).result(timeout=120)
        assert got["held"] > 0
    assert two_new_workers_start(ex, docker_client) < HANDSHAKE_SECONDS - 2
    assert caller_fds() <= fds + MAX_PENDING + 12
    assert ex._listener._thread.is_alive()


@pytest.mark.parametrize(
    "answer",
    [b"\xff" * 8, (5).to_bytes(8, "big") + b"nope!" + bytes(16), (1 << 39).to_bytes(8, "big")],
    ids=["ff", "bad-json", "huge-header"],
)
def test_a_job_writing_into_its_own_connection_fails_alone(answer, executor):
    ex = executor(PY311, max_workers=1)
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="sent a malformed answer"):
        ex.submit(break_own_connection, answer).result(timeout=60)
    assert time.monotonic() - started < 20
    assert ex.submit(abs, -7).result(timeout=60) == 7  # replaced


@pytest.mark.parametrize("user", [None, "0:0"], ids=["nobody", "root-asked"])
def test_one_executors_job_cannot_reach_another_executors_socket(user, executor, docker_client, monkeypatch):
    """The caller works in the temp folder, where every executor's private folder lives, and mounts it rw."""
    monkeypatch.chdir(tempfile.gettempdir())
    victim = executor(PY311, max_workers=2)
    assert victim.submit(abs, -1).result(timeout=60) == 1
    hostile = executor(PY311, max_workers=1, workdir="rw", user=user)
    seen = hostile.submit(reach, victim._listener.socket_path).result(timeout=60)
    assert seen["connect"] in ("FileNotFoundError", "PermissionError"), seen
    assert seen["folder"] in ("FileNotFoundError", "PermissionError")
    assert seen["base"] in ("PermissionError", [])  # an empty read-only tmpfs hides every executor's folder
    assert seen["own_socket_folder"] == [SOCKET_NAME]
    got = hostile.submit(attack, "ff", 5, victim._listener.socket_path).result(timeout=60)
    assert got["held"] == 0
    assert two_new_workers_start(victim, docker_client) < HANDSHAKE_SECONDS - 2
    assert victim._listener._thread.is_alive()
