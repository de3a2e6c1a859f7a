"""Kernelspecs: the shipped "Containerized Python" one, `envpin kernelspec install`, and the argv fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from envpin.entry.boot import BOOTSTRAP
from testutils import PY311, PY313, ROOT, containers
from testutils.kernels import PROBE, execute_until_running, kernel, run_json


def test_shipped_kernelspec_names_the_provisioner():
    spec = json.loads((ROOT / "kernelspecs" / "containerized-python" / "kernel.json").read_text())
    assert spec["display_name"] == "Containerized Python"
    assert spec["metadata"]["kernel_provisioner"]["provisioner_name"] == "envpin-docker"
    # Started in the notebook's folder: imports nothing from it (envpin.entry.boot)
    assert spec["argv"][1:5] == ["-c", BOOTSTRAP, "envpin_provisioner", "launch"]
    # The provisioner is registered under the entry point jupyter_client looks in.
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyter_client.kernel_provisioners") if e.name == "envpin-docker"]
    assert ep.load().__name__ == "EnvpinProvisioner"


def test_cli_installs_a_kernelspec_for_an_image(jupyter_env, tmp_path, docker_client):
    """The image is checked on the engine before anything is written (--no-check skips that)."""
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "kernelspec", "install", "--image", PY313,
         "--display-name", "Py 3.13 jobs", "--prefix", str(tmp_path / "venv"), "--config", "network_mode=none"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (installed,) = [line for line in out.stdout.splitlines() if line.startswith("Installed kernelspec ")]
    path = Path(installed.split(" in ", 1)[1])
    assert f"envpin: image {PY313} is on the engine" in out.stdout  # checked before it was written
    assert path == tmp_path / "venv" / "share" / "jupyter" / "kernels" / "envpin-envpin-test-py313-latest"
    spec = json.loads((path / "kernel.json").read_text())
    assert spec["display_name"] == "Py 3.13 jobs"
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "envpin-docker",
        "config": {"network_mode": "none", "image": PY313},
    }
    assert spec["argv"] == [
        sys.executable,
        "-c",
        BOOTSTRAP,
        "envpin_provisioner",
        "launch",
        "--image",
        PY313,
        "-f",
        "{connection_file}",
    ]


async def test_argv_fallback_for_clients_that_ignore_provisioners(jupyter_env, docker_client, notebook_dir):
    """VS Code runs argv itself: the kernel must still land in the image, answer interrupts, and clean up."""
    from envpin_provisioner.cli import kernelspec

    spec = kernelspec.kernelspec_dict(PY313, "no provisioner")
    del spec["metadata"]["kernel_provisioner"]  # what such a client effectively sees
    d = jupyter_env["data"] / "kernels" / "argv-only"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps(spec))
    assert KernelSpecManager().get_kernel_spec("argv-only").metadata.get("kernel_provisioner") is None

    async with kernel("argv-only", cwd=notebook_dir) as (km, kc):
        assert type(km.provisioner).__name__ == "LocalProvisioner"
        probe = await run_json(kc, PROBE)
        assert probe["dockerenv"] is True and probe["python"] == [3, 13]
        assert probe["image"] == PY313
        (container,) = containers(docker_client, role="kernel", running=True)
        # The launcher process is the recorded owner, so `envpin gc` can clean up if it is SIGKILLed.
        assert container.labels["envpin.owner-pid"] == str(km.provisioner.pid)
        msg_id = await execute_until_running(kc, "import time; time.sleep(30)")
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await kc.get_shell_msg(timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # Without the provisioner nobody can move this kernel: %use_image says so, and how to get there.
        from testutils.kernels import run

        res = await run(kc, f"%load_ext envpin\n%use_image {PY311}")
        assert res["ename"] == "UsageError" and "the envpin provisioner does not manage" in res["evalue"], res
        assert (await run(kc, f"%use_image {PY313}"))["status"] == "ok"  # its own image: pinned
    # The autouse fixture asserts the container is gone after shutdown.


async def test_argv_fallback_starts_what_the_provisioner_would(jupyter_env, docker_client, notebook_dir):
    """envpin launch builds the provisioner's launch: the folder's pin wins over the argv's image, LC_* and
    ENVPIN_ENVELOPE pass through and nothing else of the client's environment does, the kernel starts pinned
    (envpin loaded), and /dev/shm is sized as the provisioner sizes it ('auto')."""
    from envpin.session import pin_file
    from envpin_provisioner.cli import kernelspec

    pin_file.record(notebook_dir, None, {"image": PY311})  # the folder's pin, as %use_image records it headless
    spec = kernelspec.kernelspec_dict(PY313, "no provisioner")
    del spec["metadata"]["kernel_provisioner"]
    d = jupyter_env["data"] / "kernels" / "argv-pinned"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(json.dumps(spec))
    env = {"LC_ALL": "C.UTF-8", "ENVPIN_ENVELOPE": "strict", "ENVPIN_TEST_SECRET": "not for the kernel"}
    probe = (
        "{**{k: __import__('os').environ.get(k) for k in "
        "('ENVPIN_IMAGE', 'LC_ALL', 'ENVPIN_ENVELOPE', 'ENVPIN_TEST_SECRET', 'ENVPIN_PINNED')}, "
        "'python': list(__import__('sys').version_info[:2]), "
        "'pin': getattr(__import__('envpin').current_pin(), 'name', None), "
        "'shm': (lambda s: s.f_blocks * s.f_frsize)(__import__('os').statvfs('/dev/shm'))}"
    )
    async with kernel("argv-pinned", cwd=notebook_dir, env=env) as (_km, kc):
        got = await run_json(kc, probe)
    assert got.pop("shm") > 64 * 2**20  # Docker's own default is 64 MB
    assert got == {
        "ENVPIN_IMAGE": PY311,
        "LC_ALL": "C.UTF-8",
        "ENVPIN_ENVELOPE": "strict",
        "ENVPIN_TEST_SECRET": None,
        "ENVPIN_PINNED": "1",
        "python": [3, 11],
        "pin": PY311,
    }


@pytest.mark.usefixtures("docker_client")
def test_doctor_checks_the_engine_and_every_envpin_kernelspec(install_kernelspec, tmp_path):
    from testutils import NO_IPYKERNEL

    install_kernelspec(PY311, name="good")
    install_kernelspec(PY313, name="newer")
    install_kernelspec(NO_IPYKERNEL, name="bare")
    install_kernelspec("envpin-test/ray", name="rayimage")
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "doctor"], capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.splitlines()
    assert out.returncode == 1, out.stdout + out.stderr
    assert lines[0].startswith("ok    engine: Docker ")
    assert any(l.startswith(f"ok    kernelspec good ({PY311}): Python 3.11.") for l in lines)
    assert any(l.startswith(f"warn  kernelspec newer ({PY313})") and "python_minor: 3.11 vs 3.13" in l for l in lines)
    assert any(l.startswith(f"FAIL  kernelspec bare ({NO_IPYKERNEL}): no ipykernel") for l in lines)
    assert any(
        l.startswith("ok    kernelspec rayimage (envpin-test/ray)") and "engine clients: ray 2." in l for l in lines
    ), lines
    down = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "doctor"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/none.sock"},
    )  # fmt: skip
    assert down.returncode == 1 and down.stdout.startswith("FAIL  engine: No Docker engine answers")
