"""Nothing an image or a kernel says reaches a terminal raw (issue 31, finding 9).

An image whose ``python3`` printed a fingerprint with newlines and terminal
escapes in ``python_version`` made ``envpin doctor`` print a forged "ok
kernelspec ..." line and a fake "4 checks, 0 failed; envpin is ready" above
the real result.  Here real hostile images (the py311 test image with a
``python3`` of the attacker's first on ``PATH``) are probed by the real
doctor, started as kernels, and named on the command line; what reaches the
terminal has no escape byte and no line the image wrote.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import uuid

import pytest
from jupyter_client.manager import AsyncKernelManager

from envpin import printable
from envpin_provisioner.errors import KernelStartFailed
from testutils import PY311

FORGED_LINE = "ok    kernelspec good (envpin-test/py311:latest): Python 3.11.2, all fine"
FORGED_SUMMARY = "4 checks, 0 failed; envpin is ready"
ESCAPES = "\x1b[1A\x1b[2K\r\x1b]0;pwned\x07\u202e"

#: A fingerprint (what envpin's probe prints) whose values carry lines and escapes of the image's choosing.
HOSTILE_FINGERPRINT = {
    "fingerprint_version": 5,
    "python_implementation": "CPython",
    "python_version": f"3.11.2{ESCAPES}\n{FORGED_LINE}\n\n{FORGED_SUMMARY}\n",
    "python_minor": "3.11",
    "ipykernel": f"6.29{ESCAPES}\n{FORGED_LINE}",
    "cloudpickle": "3.1.1\x1b[31m",
    "platform": "linux-x86_64\r\n" + FORGED_LINE,
}

LYING_PYTHON = "#!/bin/sh\nprintf '%s\\n' '" + json.dumps(HOSTILE_FINGERPRINT) + "'\n"
CRASHING_PYTHON = (
    "#!/bin/sh\n"
    f"printf 'boom\\n\\033[2J\\033]0;pwned\\007{FORGED_LINE}\\n{FORGED_SUMMARY}\\n'\n"
    f"printf '\\033[2J{FORGED_LINE}\\n{FORGED_SUMMARY}\\n' >&2\n"
    "exit 3\n"
)


def build_with_python(client, script: str, kind: str) -> str:
    """The py311 test image with ``script`` as the first ``python3`` on PATH; returns its tag."""
    files = {
        "Dockerfile": f"FROM {PY311}\nCOPY python3 /hostile/python3\nENV PATH=/hostile:$PATH\n",
        "python3": script,
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tag = f"envpin-test/hostile-{kind}:{uuid.uuid4().hex[:8]}"
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    return tag


@pytest.fixture
def hostile_images(docker_client):
    from envpin.compat import fingerprints

    made = {
        kind: build_with_python(docker_client, script, kind)
        for kind, script in (("lying", LYING_PYTHON), ("crashing", CRASHING_PYTHON))
    }
    yield made
    for tag in made.values():
        image_id = docker_client.images.get(tag).id
        (fingerprints._cache_dir() / (image_id.replace(":", "_") + ".json")).unlink(missing_ok=True)
        docker_client.images.remove(tag, force=True)


def assert_clean(text: str) -> None:
    """No control character but newlines, and no line of the image's at the start of a line."""
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202e]", text), repr(text)
    for line in text.splitlines():
        assert not line.startswith((FORGED_LINE, FORGED_SUMMARY)), repr(text)
        assert not line.lstrip().startswith(FORGED_SUMMARY), repr(text)


def test_doctor_prints_what_a_hostile_image_says_on_its_own_escaped_line(hostile_images, install_kernelspec):
    install_kernelspec(hostile_images["lying"], name="lying")
    install_kernelspec(hostile_images["crashing"], name="crashing")
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "doctor"], capture_output=True, text=True, timeout=180
    )
    assert_clean(out.stdout + out.stderr)
    assert "\x1b" not in out.stdout + out.stderr
    lines = out.stdout.splitlines()
    summaries = [line for line in lines if re.match(r"\d+ checks, \d+ failed", line)]
    assert len(summaries) == 1 and re.fullmatch(r"\d+ checks, 1 failed", summaries[0]), out.stdout  # the real one
    findings = [line for line in lines if line and line not in summaries]
    assert len(findings) == int(summaries[0].split()[0]), out.stdout  # one line per check, none added
    assert all(re.match(r"(ok  |warn|FAIL)  ", line) for line in findings), out.stdout
    lying = next(line for line in findings if "kernelspec lying" in line)
    assert lying.startswith(("ok    kernelspec lying", "warn  kernelspec lying"))
    assert "Python 3.11.2\\x1b[1A\\x1b[2K\\r\\x1b]0;pwned\\x07\\u202e\\nok    kernelspec good" in lying  # shown, inert
    crashing = next(line for line in findings if "kernelspec crashing" in line)
    assert crashing.startswith("FAIL  kernelspec crashing") and "failed (exit 3)" in crashing
    assert out.returncode == 1


async def test_a_kernel_start_failure_quotes_the_containers_output_inertly(
    hostile_images, install_kernelspec, tmp_path
):
    """The last output of a kernel container that died reaches the error (and the server's log) escaped and marked."""
    name = install_kernelspec(hostile_images["crashing"], name="crashing-kernel")
    km = AsyncKernelManager(kernel_name=name)
    with pytest.raises(KernelStartFailed) as info:
        await km.start_kernel(cwd=str(tmp_path))
    message = str(info.value)  # in short lines for JupyterLab's dialog: the container's output follows on its own
    assert "exited with code 3" in message and "\nIts last output:\n" in message, message
    assert_clean(message)
    tail = message.split("\nIts last output:\n", 1)[1].splitlines()
    assert tail and all(line.startswith("  | ") for line in tail), tail  # every line marked as the container's
    assert any("\\x1b[2J" in line for line in tail)  # the escapes are shown, not sent


def test_cli_errors_escape_what_they_quote(docker_client):
    """``envpin run`` names an image the engine refuses: the error quotes it, escaped, on one line."""
    name = "x\x1b[31m\n" + FORGED_SUMMARY
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "run", "--image", name, "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert_clean(out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("envpin: ")
    assert "x\\x1b[31m\\n" + FORGED_SUMMARY in out.stderr


def test_printable_escapes_controls_format_characters_and_separators():
    assert printable.one_line("a\nb\r\tc\x1b[0m\x07\x9b\u202e\u2028\u2029\ufeffd é 中 ") == (
        "a\\nb\\r\\tc\\x1b[0m\\x07\\x9b\\u202e\\u2028\\u2029\\ufeffd é 中 "
    )
    assert printable.one_line("x" * 50, limit=10) == "x" * 10 + "... (50 characters in all)"
    assert printable.one_line({"k": "\x1b"}) == "{'k': '\\x1b'}"
    block = printable.lines("one\n\x1b[2Jtwo\nthree", max_lines=2)
    assert block == "  | (1 earlier line(s) left out)\n  | \\x1b[2Jtwo\n  | three"
