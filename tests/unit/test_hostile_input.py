"""Unit tier: the pieces that stand between a kernel's files and the server, without any engine."""

from __future__ import annotations

import json
import os

import pytest

from envpin import safe_files
from envpin.errors import PinFileError
from envpin.images import allowlist
from envpin.session import pin_file
from envpin_provisioner.moves.control_requests import BadRequest, ControlChannel, ControlRequest

RID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "kernel-writable"
    d.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    return d, secret


def test_read_regular_refuses_links_fifos_hard_links_and_big_files(folder):
    d, secret = folder
    with safe_files.directory(d) as fd:
        (d / "link").symlink_to(secret)
        os.mkfifo(d / "fifo")
        os.link(secret, d / "hard")
        (d / "big").write_bytes(b"x" * 101)
        (d / "ok").write_bytes(b"fine")
        for name, why in (
            ("link", "symbolic link"),
            ("fifo", "not a regular file"),
            ("hard", "hard links"),
            ("big", "larger"),
        ):
            with pytest.raises(safe_files.UnsafeFile, match=why):
                safe_files.read_regular(fd, name, 100)
        assert safe_files.read_regular(fd, "ok", 100) == b"fine"
        with pytest.raises(safe_files.UnsafeFile):
            safe_files.read_regular(fd, "../secret.txt", 100)


def test_read_regular_reads_a_file_replaced_after_it_was_opened(folder, monkeypatch):
    """A writer's atomic ``os.replace`` between our open and fstat leaves the opened file with no link:
    that is the file the name held at the open, not a hard link to a file elsewhere (CI once saw the
    aliases file refused so while a kernel rewrote it)."""
    d, _ = folder
    (d / "aliases.json").write_bytes(b"old")
    real_open = os.open

    def open_then_replace(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        (d / "new").write_bytes(b"new")
        os.replace(d / "new", d / "aliases.json")
        return fd

    with safe_files.directory(d) as fd:
        monkeypatch.setattr(safe_files.os, "open", open_then_replace)
        assert safe_files.read_regular(fd, "aliases.json", 100) == b"old"


def test_write_atomic_replaces_a_planted_link_instead_of_writing_through(folder):
    d, secret = folder
    (d / "answer.json").symlink_to(secret)
    with safe_files.directory(d) as fd:
        safe_files.write_atomic(fd, "answer.json", b"{}")
    assert secret.read_text() == "SECRET" and not (d / "answer.json").is_symlink()
    assert (d / "answer.json").read_bytes() == b"{}" and oct((d / "answer.json").stat().st_mode & 0o777) == "0o600"


def test_take_removes_what_it_took_even_when_refused(folder):
    d, secret = folder
    (d / "request.json").symlink_to(secret)
    with safe_files.directory(d) as fd:
        with pytest.raises(safe_files.UnsafeFile):
            safe_files.take(fd, "request.json", 100)
        assert safe_files.take(fd, "request.json", 100) is None
    assert os.listdir(d) == [] and secret.read_text() == "SECRET"


@pytest.mark.parametrize(
    "request_, problem",
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b"[" * 100000, "not JSON"),
        (json.dumps({"id": "/../../etc/x", "image": "a"}).encode(), "no valid id"),
        (json.dumps({"id": RID.upper(), "image": "a"}).encode(), "no valid id"),
        (json.dumps({"id": RID, "image": "a", "notebook": "/etc/x.ipynb"}).encode(), "unknown field"),
        (json.dumps({"id": RID, "image": "a", "cwd": "/etc"}).encode(), "unknown field"),
        (json.dumps({"id": RID, "image": 5}).encode(), "'image'"),
        (json.dumps({"id": RID, "image": "x" * 600}).encode(), "'image'"),
        (json.dumps({"id": RID, "image": "a", "pull": "yes"}).encode(), "'pull'"),
        (json.dumps({"id": RID, "image": "a", "python": "3.11; rm"}).encode(), "'python'"),
        (json.dumps({"id": RID, "image": "a", "options": {"ray_mode": "x"}}).encode(), "ray_mode"),
        (json.dumps({"id": RID, "image": "a", "options": {"envelope": "lenient"}}).encode(), "envelope"),
        (json.dumps({"id": RID, "image": "a", "options": {"path": "/"}}).encode(), "unknown option"),
    ],
)
def test_control_requests_follow_a_strict_schema(request_, problem):
    with pytest.raises(BadRequest, match=problem):
        ControlRequest.parse(request_)


def test_a_valid_request_parses():
    req = ControlRequest.parse(json.dumps({"id": RID, "image": "py:3", "allow_restart": True, "python": "3.11.2",
                                           "options": {"strict": True, "ray_mode": "env_vars", "envelope": "strict"}}).encode())  # fmt: skip
    assert req.allow_restart
    assert req.options.as_dict() == {"strict": True, "ray_mode": "env_vars", "envelope": "strict"}


def test_control_channel_answers_bad_requests_and_bounds_unread_answers(tmp_path):
    import logging

    d = tmp_path / "control"
    d.mkdir()
    channel = ControlChannel(str(d), logging.getLogger("test"))
    (d / "request.json").write_text(json.dumps({"id": RID, "image": "a", "cwd": "/"}))
    assert channel.take_request() is None
    assert json.loads((d / f"response-{RID}.json").read_text())["status"] == "error"
    for i in range(100):
        channel.respond(f"{i:032x}", status="same")
    assert len([n for n in os.listdir(d) if n.startswith("response-")]) == 32
    for _ in range(25):
        (d / "request.json").write_text("{")
        channel.take_request()
    assert channel.delay == 1.0  # backs off after a burst of bad requests
    channel.close()


def test_pin_file_link_is_refused_without_its_content(folder):
    d, secret = folder
    secret.write_text(json.dumps({"notebooks": {"*": {"image": "evil"}}, "token": "SECRET"}))
    (d / ".envpin.json").symlink_to(secret)
    with pytest.raises(PinFileError) as info:
        pin_file.read(d)
    assert "not a plain file" in str(info.value) and "SECRET" not in str(info.value)
    (d / ".envpin.json").unlink()
    (d / ".envpin.json").write_text("[" * 100000)
    with pytest.raises(PinFileError, match="nested too deeply"):
        pin_file.read(d)


def test_pin_record_never_writes_through_a_link(folder):
    d, secret = folder
    pin_file.record(d, "a.ipynb", {"image": "py"})
    tmp = d / "elsewhere"
    os.rename(d / ".envpin.json", tmp)
    (d / ".envpin.json").symlink_to(secret)
    with pytest.raises(PinFileError):
        pin_file.record(d, "a.ipynb", {"image": "py"})
    assert secret.read_text() == "SECRET"


@pytest.mark.parametrize(
    "reference, patterns, ok",
    [
        ("python:3.11", [], True),
        ("python:3.11", ["python:3.11*"], True),
        ("python", ["python:latest"], True),
        ("registry.example.com/ml/py:3", ["registry.example.com/ml/*"], True),
        ("registry.example.com/other/py:3", ["registry.example.com/ml/*"], False),
        ("evil/python:3.11", ["python:*"], False),
    ],
)
def test_allowed_images_patterns(reference, patterns, ok):
    assert allowlist.allowed(reference, patterns) is ok


def test_allowed_images_message_names_image_source_and_patterns():
    with pytest.raises(allowlist.ImageNotAllowed) as info:
        allowlist.check("evil:1", ["python:*"], "the pin file /x/.envpin.json", "alias")
    msg = str(info.value)
    assert (
        "'alias' (evil:1)" in msg
        and "/x/.envpin.json" in msg
        and "'python:*'" in msg
        and "ENVPIN_ALLOWED_IMAGES" in msg
    )


def test_allowed_images_from_the_environment():
    assert allowlist.patterns_from_env({"ENVPIN_ALLOWED_IMAGES": "a/*, b:1  c"}) == ["a/*", "b:1", "c"]


@pytest.mark.parametrize(
    "reference, repo, rest",
    [
        ("python", "python", "latest"),
        ("python:3.11", "python", "3.11"),
        ("localhost:5000/img", "localhost:5000/img", "latest"),
        ("localhost:5000/team/img:1.2", "localhost:5000/team/img", "1.2"),
        ("registry.example.com/ml/py@sha256:" + "a" * 64, "registry.example.com/ml/py", "sha256:" + "a" * 64),
    ],
)
def test_one_reference_parser_for_both_sides(reference, repo, rest):
    """The kernel side once read the repository of localhost:5000/img as 'localhost' (its digest never matched)."""
    from envpin.images import references
    from envpin_provisioner.images import pulling

    assert references.split(reference) == (repo, rest) == pulling._split(reference)
