"""The control relay of a remote kernel (``remote.control_relay``): its watcher, run here as a real process.

The watcher is what runs in the kernel's container on the remote engine; here
it runs in a subprocess on a temporary folder, speaking the same lines, so its
file handling (atomic answers, refused links and oversized requests, the token
that ends an older watcher) is checked without an engine.  The engine end of
it is ``tests/remote/test_remote_moves.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid

import pytest

from envpin.notebook import control
from envpin_provisioner.remote import control_relay


class Watcher:
    def __init__(self, folder) -> None:
        self.token = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", control_relay.WATCHER, str(folder), str(control.MAX_FILE_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.send_line(self.token.encode())

    def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def next_line(self, skip_alive: bool = True) -> tuple[bytes, bytes]:
        assert self.proc.stdout is not None
        while True:
            kind, _, payload = self.proc.stdout.readline().rstrip(b"\n").partition(b" ")
            if kind != b"K" or not skip_alive:
                return kind, base64.b64decode(payload)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "control"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def watcher(folder):
    w = Watcher(folder)
    yield w
    w.close()


def test_a_request_is_taken_and_sent_and_an_answer_written_atomically(folder, watcher):
    request = json.dumps({"id": "a" * 32, "image": "x"}).encode()
    control.write_json(folder / control.REQUEST, json.loads(request))
    kind, data = watcher.next_line()
    assert (kind, json.loads(data)) == (b"R", json.loads(request))
    assert not (folder / control.REQUEST).exists()
    answer = {"id": "a" * 32, "status": "same"}
    watcher.send_line(
        json.dumps(
            {"name": "response-x.json", "data": base64.b64encode(b"%s" % json.dumps(answer).encode()).decode()}
        ).encode()
    )
    deadline = time.monotonic() + 5
    while not (folder / "response-x.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert json.loads((folder / "response-x.json").read_text()) == answer
    assert oct((folder / "response-x.json").stat().st_mode & 0o777) == "0o600"
    watcher.send_line(json.dumps({"name": "response-x.json"}).encode())  # removed
    while (folder / "response-x.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (folder / "response-x.json").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".relay"]  # no temporary file left


@pytest.mark.parametrize("plant", ["link", "fifo", "big", "folder"])
def test_a_request_that_is_not_a_small_regular_file_is_refused(folder, watcher, tmp_path, plant):
    target = folder / control.REQUEST
    if plant == "link":
        (tmp_path / "secret").write_text("secret")
        target.symlink_to(tmp_path / "secret")
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant == "big":
        target.write_bytes(b"x" * (control.MAX_FILE_BYTES + 1))
    else:
        target.mkdir()
    kind, data = watcher.next_line()
    assert kind == b"E" and data.startswith(b"refused request.json"), (kind, data)
    assert b"secret" not in data
    assert not target.exists()
    assert watcher.proc.poll() is None  # it keeps serving


def test_names_it_will_not_write_and_a_bad_line_do_not_stop_it(folder, watcher):
    for name in ["../escape", ".relay", "request.json", "", 7]:
        watcher.send_line(json.dumps({"name": name, "data": "eA=="}).encode())
    watcher.send_line(b"{not json")
    kind, data = watcher.next_line()
    assert kind == b"E" and data.startswith(b"cannot write an answer")
    assert not (folder.parent / "escape").exists()
    assert sorted(p.name for p in folder.iterdir()) == [".relay"]
    control.write_json(folder / control.REQUEST, {"id": "b" * 32})
    assert watcher.next_line()[0] == b"R"


def test_a_newer_watcher_ends_the_older_one_and_stdin_ending_ends_it(folder, watcher):
    assert watcher.next_line(skip_alive=False)[0] == b"K"  # alive lines come by themselves
    newer = Watcher(folder)
    try:
        watcher.proc.wait(5)  # it saw another token: it ended
        assert newer.proc.poll() is None
        assert newer.proc.stdin is not None
        newer.proc.stdin.close()
        newer.proc.wait(5)
    finally:
        newer.close()


def _tar(members: list[tarfile.TarInfo], data: bytes = b"") -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isreg() else None)
    raw = buf.getvalue()
    return [raw[i : i + 1000] for i in range(0, len(raw), 1000)]


def test_read_one_file_takes_only_one_small_regular_file():
    good = tarfile.TarInfo("handoff.json")
    good.size = 5
    assert control_relay.read_one_file(_tar([good], b"hello"), 100) == b"hello"
    link = tarfile.TarInfo("handoff.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    assert control_relay.read_one_file(_tar([link]), 100) is None
    big = tarfile.TarInfo("handoff.json")
    big.size = 5000
    assert control_relay.read_one_file(_tar([big], b"x" * 5000), 100) is None
    two = tarfile.TarInfo("other")
    two.size = 5
    assert control_relay.read_one_file(_tar([good, two], b"hello"), 100) is None
    assert control_relay.read_one_file(iter([b"not a tar" * 10]), 100) is None
    assert control_relay.read_one_file(iter([b"\0" * 200_000]), 100) is None  # over the cap: not even parsed


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, fmt: str, *args) -> None:
        self.lines.append(fmt % args)

    debug = warning


def test_only_the_current_watchers_requests_count_and_the_backlog_is_bounded():
    channel = control_relay.RemoteControlChannel("python3", _Log(), "kernel k")
    current, old = object(), object()
    channel._current = current  # type: ignore[assignment]
    request = json.dumps({"id": "c" * 32, "image": "img"}).encode()
    line = b"R " + base64.b64encode(request)
    channel.received(old, line)  # type: ignore[arg-type]
    assert channel.take_request() is None
    for _ in range(control_relay.BACKLOG + 5):
        channel.received(current, line)  # type: ignore[arg-type]
    assert channel._bad_in_a_row == 5  # the ones over the backlog were dropped, and counted
    taken = []
    while (r := channel.take_request()) is not None:
        taken.append(r)
    assert len(taken) == control_relay.BACKLOG and taken[0].image == "img"
    channel.received(current, b"R not-base64!")  # type: ignore[arg-type]
    channel.received(current, b"Z " + base64.b64encode(b"x"))  # type: ignore[arg-type]
    assert channel.take_request() is None
    assert channel._bad_in_a_row == 2


def test_an_engine_that_stops_answering_does_not_end_the_relay_thread_with_a_traceback():
    """The engine refusing connections is "try again after the backoff", not an exception out of the thread.

    Was: ``_running`` caught only docker's own errors, and requests' ``ConnectionError`` (what docker-py raises
    when the engine's socket refuses) ended the relay thread with a traceback (CI: a remote engine stopped).
    """
    import docker.errors
    import requests.exceptions

    class Container:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def reload(self) -> None:
            raise self.error

    watcher = object.__new__(control_relay._Watcher)
    watcher.container = Container(requests.exceptions.ConnectionError("refused"))  # type: ignore[assignment]
    assert watcher._running() is True
    watcher.container = Container(docker.errors.NotFound("gone"))  # type: ignore[assignment]
    assert watcher._running() is False
