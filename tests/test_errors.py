"""Errors a user will hit: each one paragraph naming the image and the fix, within seconds, nothing left running.

The engine is real.  "Not pullable" is real too: no registry is reachable from
these machines, so the engine's own pull fails the way a typo'd name or an
offline laptop does.
"""

from __future__ import annotations

import os
import time

import pytest
from jupyter_client.manager import AsyncKernelManager

from envpin_provisioner.errors import (
    ConfigError,
    EngineUnavailable,
    ImageUnavailable,
    InvalidImageReference,
    KernelStartFailed,
)
from testutils import BROKEN_IPYKERNEL, NO_IPYKERNEL, NO_PYTHON, PY311


def hand_edited_kernelspec(install_kernelspec, name, **config):
    """A kernelspec whose provisioner config was edited by hand, past the CLI's checks."""
    import json

    from jupyter_client.kernelspec import KernelSpecManager

    install_kernelspec(PY311, name=name)
    path = KernelSpecManager().get_kernel_spec(name).resource_dir + "/kernel.json"
    spec = json.load(open(path))
    spec["metadata"]["kernel_provisioner"]["config"].update(config)
    json.dump(spec, open(path, "w"))
    return name


async def start_fails(name, notebook_dir, exc_type):
    """Start kernelspec ``name``, which must fail with ``exc_type``; its message, with the lines joined.

    What a start raises is what JupyterLab's "Error Starting Kernel" dialog
    shows, in a box that keeps line breaks and does not wrap: short lines, the
    fix first where the error states one (``envpin.errors.for_dialog``).
    """
    from envpin.errors import DIALOG_WIDTH

    km = AsyncKernelManager(kernel_name=name)
    started = time.monotonic()
    with pytest.raises(exc_type) as info:
        await km.start_kernel(cwd=str(notebook_dir))
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert elapsed < 10, f"took {elapsed:.1f}s: {message}"
    explanation = message.split(" Its last output:")[0].split("Its last output:")[0]
    assert "Traceback" not in explanation
    # Short lines (a path longer than a line stays whole: it is not broken where a copy would need it).
    explained = message.split("\nIts last output:")[0]  # the container's own lines follow as they are
    assert all(len(line) <= DIALOG_WIDTH or " " not in line.strip() for line in explained.splitlines()), message
    # A closing command is on lines of its own, continued with " \\" (shell-pasteable): one line again here.
    flat = " ".join(message.replace("\n  | ", "\n").replace(" \\\n", " ").split())
    if info.value.fix:
        assert flat.startswith(" ".join(info.value.fix.split())), "the fix comes first"
    return flat


async def test_engine_not_running(install_kernelspec, notebook_dir, monkeypatch, tmp_path):
    name = install_kernelspec(PY311)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    msg = await start_fails(name, notebook_dir, EngineUnavailable)
    assert "No Docker engine answers" in msg and "no-engine.sock" in msg
    assert "Start the engine" in msg


async def test_engine_socket_permission_denied(install_kernelspec, notebook_dir, monkeypatch, tmp_path):
    import socket

    path = tmp_path / "locked.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    path.chmod(0)
    name = install_kernelspec(PY311)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    import os

    if os.getuid() == 0:  # root ignores file modes (the real socket is tested as nobody, below)
        from envpin.host.docker_client import explain_engine_failure

        msg = str(explain_engine_failure(PermissionError(13, "Permission denied")))
    else:
        msg = await start_fails(name, notebook_dir, EngineUnavailable)
    server.close()
    assert "permission denied" in msg and "docker' group" in msg


@pytest.mark.usefixtures("docker_client")
async def test_image_missing_and_not_pullable(install_kernelspec, notebook_dir):
    name = install_kernelspec("envpin-test/does-not-exist:1.0")
    msg = await start_fails(name, notebook_dir, ImageUnavailable)
    assert "'envpin-test/does-not-exist:1.0'" in msg and "could not be pulled" in msg
    assert "docker build" in msg


@pytest.mark.usefixtures("docker_client")
async def test_image_missing_and_pull_policy_never(install_kernelspec, notebook_dir):
    name = install_kernelspec("envpin-test/does-not-exist:1.0", pull_policy="never")
    msg = await start_fails(name, notebook_dir, ImageUnavailable)
    assert "pull policy is 'never'" in msg and "envpin-test/does-not-exist:1.0" in msg


@pytest.mark.usefixtures("docker_client")
async def test_invalid_reference(install_kernelspec, notebook_dir):
    from envpin_provisioner.cli import kernelspec

    # The CLI refuses it up front ...
    with pytest.raises(InvalidImageReference):
        kernelspec.kernelspec_dict("Bad Image!", "x")
    # ... and a hand-edited kernelspec is refused at start.
    name = hand_edited_kernelspec(install_kernelspec, "handmade", image="MyImage:latest")
    msg = await start_fails(name, notebook_dir, InvalidImageReference)
    assert "'MyImage:latest' is not a valid Docker image reference" in msg
    assert "did you mean 'myimage:latest'" in msg


@pytest.mark.usefixtures("docker_client")
async def test_image_without_python(install_kernelspec, notebook_dir):
    name = install_kernelspec(NO_PYTHON)
    msg = await start_fails(name, notebook_dir, KernelStartFailed)
    assert f"'{NO_PYTHON}' has no 'python3'" in msg
    assert "Use an image with Python and ipykernel" in msg


@pytest.mark.usefixtures("docker_client")
async def test_image_without_ipykernel(install_kernelspec, notebook_dir):
    name = install_kernelspec(NO_IPYKERNEL)
    msg = await start_fails(name, notebook_dir, KernelStartFailed)
    assert f"Image '{NO_IPYKERNEL}' has Python but not ipykernel" in msg
    assert "pip install ipykernel" in msg
    assert "No module named ipykernel" in msg  # the container's own last log lines follow


@pytest.mark.usefixtures("docker_client")
async def test_image_with_a_broken_or_incompatible_ipykernel(install_kernelspec, notebook_dir):
    name = install_kernelspec(BROKEN_IPYKERNEL)
    msg = await start_fails(name, notebook_dir, KernelStartFailed)
    assert f"The ipykernel in image '{BROKEN_IPYKERNEL}' fails to start" in msg
    assert "pip install -U ipykernel" in msg
    assert "No module named 'jupyter_client'" in msg  # the real reason, from the container's output


async def test_unknown_config_key(install_kernelspec, notebook_dir):
    name = hand_edited_kernelspec(install_kernelspec, "typo", netwrok_mode="none")
    msg = await start_fails(name, notebook_dir, ConfigError)
    assert "unknown option 'netwrok_mode' (did you mean 'network_mode'?)" in msg


async def test_ill_typed_config_value(install_kernelspec, notebook_dir):
    name = hand_edited_kernelspec(install_kernelspec, "badtype", launch_timeout="soon", pull_policy="sometimes")
    msg = await start_fails(name, notebook_dir, ConfigError)
    assert "option 'launch_timeout' has the wrong type or value 'soon'" in msg
    assert "option 'pull_policy'" in msg


def test_cli_refuses_bad_options(jupyter_env, capsys):
    from envpin_provisioner.cli.main import main

    assert main(["kernelspec", "install", "--image", PY311, "--config", "cpu_limt=2", "--user"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'cpu_limt' (did you mean 'cpu_limit'?)" in err
    assert main(["kernelspec", "install", "--image", "My Image", "--user"]) == 2
    assert "not a valid Docker image reference" in capsys.readouterr().err


def test_gpus_option_is_checked():
    from envpin_provisioner.kernel.launch import parse_gpus

    assert parse_gpus("all")[0]["Count"] == -1
    assert parse_gpus("2")[0]["Count"] == 2
    assert parse_gpus("device=0,1")[0]["DeviceIDs"] == ["0", "1"]
    with pytest.raises(ConfigError):
        parse_gpus("many")


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root to become nobody")
@pytest.mark.usefixtures("docker_client")
def test_engine_socket_permission_denied_for_a_real_user():
    """`envpin gc` as a user outside the docker group, against the real engine socket."""
    import importlib.util
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="envpin-nobody-"))  # pytest's tmp dirs are root-only
    lib = tmp_path / "lib"
    for name in (
        "docker",
        "requests",
        "urllib3",
        "idna",
        "charset_normalizer",
        "certifi",
        "traitlets",  # the CLI's help comes from the options' traitlets
        "envpin",
        "envpin_provisioner",
    ):
        shutil.copytree(importlib.util.find_spec(name).submodule_search_locations[0], lib / name)
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    started = time.monotonic()
    out = subprocess.run(
        ["/usr/bin/python3", "-m", "envpin_provisioner", "gc"],
        env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        user=65534, group=65534, extra_groups=[], cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "permission denied on its socket" in out.stderr and "docker' group" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - started < 10
    shutil.rmtree(tmp_path)
