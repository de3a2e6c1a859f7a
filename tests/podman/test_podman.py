"""envpin on rootless Podman, as a user without Docker has it.

The harness (``tools/podman_user.py``) sets up, as root and from nothing,
Debian's podman, a user ``envpin-podman`` with subordinate ids and a runtime
folder, that user's ``podman system service`` (the API socket envpin talks
to through ``DOCKER_HOST``), a venv of the user's own with this checkout's
envpin, and the test images copied in with ``docker save | podman load``.
Everything on the Jupyter side then runs *as that user* (``as_user``), as it
would on their workstation; these tests only look from outside (root) at what
happened: containers, file owners, processes.

One test per capability (the whole suite does not run twice): a kernel's
life (start, probe, interrupt, restart, shutdown), a ``%use_image`` move,
labels with ``envpin gc`` and ``envpin doctor``, the clear errors, and jobs
(``ContainerExecutor``, ``envpin run``, ``envpin.use_image()``).  Podman on
Debian has no catatonit, so every container here also proves envpin's own
init (``envpin.entry.pid1``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from testutils import NO_IPYKERNEL, PY311, PY313, program, wait_for
from tools import podman_user as pu

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the harness creates a user (root only)")

NOTEBOOKS = pu.HOME / "notebooks"


@pytest.fixture(scope="module")
def podman(docker_client):
    """The user's Podman API socket, with the images loaded; stopped (and its containers removed) after."""
    pu.prepare()
    with pu.service() as host:
        pu.load_images(docker_client, [PY311, PY313, NO_IPYKERNEL])
        shutil.rmtree(NOTEBOOKS, ignore_errors=True)  # a fresh start: no pin file of an earlier run
        pu.as_user(["mkdir", "-p", str(NOTEBOOKS)], check=True)
        for name, image in (("pm-py311", PY311), ("pm-noipy", NO_IPYKERNEL)):
            pu.as_user(["envpin", "kernelspec", "install", "--user", "--image", image, "--name", name], check=True)
        import docker

        client = docker.DockerClient(base_url=host)
        yield client
        client.close()


def user_python(code: str, timeout: float = 180, folder: str = "", **env: str) -> dict:
    """Run ``code`` as the Podman user in their venv, in (a subfolder of) their notebooks; its last line, as JSON."""
    cwd = NOTEBOOKS / folder
    pu.as_user(["mkdir", "-p", str(cwd)], check=True)
    r = pu.as_user(
        ["python", "-c", code],
        extra_env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def envpin_containers(client, **labels: str) -> list:
    wanted = ["envpin.role", *(f"{k}={v}" for k, v in labels.items())]
    return client.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)


def test_a_kernel_lives_its_life_on_rootless_podman(podman):
    before = time.monotonic()
    got = user_python(program("podman_kernel_life"))
    user = pu.uid()
    for probe in (got, got["after_restart"]):
        assert probe["uid"] == user  # the kernel runs as the user (keep-id), not as a subordinate id
        assert probe["containerenv"] and not probe["dockerenv"]  # in a Podman container
        assert probe["python"] == "3.11.2" and probe["cwd"] == str(NOTEBOOKS) and probe["image"] == PY311
        assert "envpin.entry.pid1" in probe["pid1"]  # Debian's podman has no catatonit: envpin's own init
    assert os.stat(NOTEBOOKS / "written-by-kernel.txt").st_uid == user  # the user's file on the host
    assert got["transport"] == "ipc"  # channels are sockets in a folder: no TCP port at all
    assert got["interrupted"][:2] == ["error", "KeyboardInterrupt"] and got["interrupted"][2] < 10
    assert got["restarted_container"] != got["container"]
    wait_for(lambda: not envpin_containers(podman, **{"envpin.kernel-id": got["kernel_id"]}), 30, "its removal")
    assert time.monotonic() - before < 150


def test_use_image_moves_a_kernel_between_images_on_podman(podman):
    python, in_podman, uid = user_python(
        program("podman_move"), timeout=300, folder="moved"
    )  # its pin file stays there
    assert python.startswith("3.13.") and in_podman and uid == pu.uid()
    # Both kernels go with the notebook (the last one's removal may finish just after nbclient returns).
    wait_for(lambda: not envpin_containers(podman, **{"envpin.role": "kernel"}), 30, "the kernels to be removed")


def test_labels_gc_and_doctor_on_podman(podman):
    # A Jupyter side killed with its kernel running leaves a labelled container; envpin gc removes it.
    proc = subprocess.Popen(
        ["runuser", "-u", pu.USER, "--", "env", "-i", *(f"{k}={v}" for k, v in pu.env().items()), "python", "-c",
         "import jupyter_client, time; km = jupyter_client.KernelManager(kernel_name='pm-py311'); "
         "km.start_kernel(); km.client().wait_for_ready(timeout=120); print('up', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=str(NOTEBOOKS),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        running = envpin_containers(podman, **{"envpin.role": "kernel"})
        assert len(running) == 1 and running[0].labels["envpin.owner-uid"] == str(pu.uid())
    finally:
        # SIGKILL the user's Python (runuser's child), as a crash would: no cleanup runs.
        pids = subprocess.run(["pgrep", "-u", pu.USER, "-f", "KernelManager"], capture_output=True, text=True)
        for pid in pids.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.5)
    gc = pu.as_user(["envpin", "gc"], capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert not envpin_containers(podman, **{"envpin.role": "kernel"})
    doctor = pu.as_user(["envpin", "doctor"], capture_output=True, text=True, timeout=300)
    assert "ok    engine: Podman 4." in doctor.stdout and "(rootless)" in doctor.stdout, doctor.stdout
    assert f"unix:///run/user/{pu.uid()}/podman/podman.sock" in doctor.stdout


def test_clear_errors_on_podman(podman):
    got = user_python(program("podman_errors"), folder="errors")
    assert "envpin-test/nope:latest" in got["missing"][0] and got["missing"][1] < 30, got
    assert "has Python but not ipykernel" in got["no_ipykernel"][0] and got["no_ipykernel"][1] < 60, got
    assert not envpin_containers(podman, **{"envpin.role": "kernel"})
    gone = pu.as_user(
        ["envpin", "doctor"], extra_env={"DOCKER_HOST": "unix:///run/user/0/no-podman.sock"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 1 and "No Docker engine answers at unix:///run/user/0/no-podman.sock" in gone.stdout
    assert "podman.socket" in gone.stdout  # and how to start rootless Podman's


def test_jobs_run_and_respawn_on_podman(podman):
    got = user_python(program("podman_jobs"), timeout=300, folder="jobs")
    user = pu.uid()
    assert got["job"] == [True, user, "3.11.2"]
    assert got["run"][:2] == [0, f"True {user}"], got["run"]
    assert got["respawn"][:2] == [0, f"True {user} 3.11.2"], got["respawn"]
    assert not envpin_containers(podman)  # workers and respawned containers are gone
