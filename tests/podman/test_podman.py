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
import textwrap
import time

import pytest

from testutils import NO_IPYKERNEL, PY311, PY313, wait_for
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
        ["python", "-c", textwrap.dedent(code)],
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


KERNEL_LIFE = """
import json, os, time, jupyter_client
km = jupyter_client.KernelManager(kernel_name="pm-py311")
km.start_kernel(cwd=os.getcwd())
kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=120)

def run(code, timeout=60):
    out = []
    hook = lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None
    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], "".join(out)

probe = "import json, os, platform; open('written-by-kernel.txt', 'w').write('x'); print(json.dumps({'uid': os.getuid(), 'containerenv': os.path.exists('/run/.containerenv'), 'dockerenv': os.path.exists('/.dockerenv'), 'python': platform.python_version(), 'cwd': os.getcwd(), 'image': os.environ.get('ENVPIN_IMAGE'), 'pid1': open('/proc/1/cmdline').read().split(chr(0))}))"
first = json.loads(run(probe)[1])
first["kernel_id"], first["transport"] = km.kernel_id, km.transport
first["container"] = km.provisioner._container.id
# Interrupt: a cell that would sleep a minute comes back interrupted within seconds.
kc.execute("import time; time.sleep(60)")
time.sleep(1.0)
t = time.monotonic(); km.interrupt_kernel()
while True:
    msg = kc.get_shell_msg(timeout=30)
    if msg["msg_type"] == "execute_reply":
        break
first["interrupted"] = [msg["content"]["status"], msg["content"].get("ename"), round(time.monotonic() - t, 2)]
km.restart_kernel(now=False); kc.wait_for_ready(timeout=120)
first["after_restart"] = json.loads(run(probe)[1])
first["restarted_container"] = km.provisioner._container.id
km.shutdown_kernel(now=False)
print(json.dumps(first))
"""


def test_a_kernel_lives_its_life_on_rootless_podman(podman):
    before = time.monotonic()
    got = user_python(KERNEL_LIFE)
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


MOVE = """
import json, nbformat, nbclient
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (
    "%load_ext envpin", "%use_image envpin-test/py313:latest",
    "import json, os, platform; print(json.dumps([platform.python_version(), os.path.exists('/run/.containerenv'), os.getuid()]))")])
nbclient.NotebookClient(nb, kernel_name="pm-py311", timeout=180, resources={"metadata": {"path": "."}}).execute()
print(nb.cells[2].outputs[0]["text"].strip())
"""


def test_use_image_moves_a_kernel_between_images_on_podman(podman):
    python, in_podman, uid = user_python(MOVE, timeout=300, folder="moved")  # its pin file stays there
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


ERRORS = """
import json, time, jupyter_client
out = {}
for name, kernel in (("missing", None), ("no_ipykernel", "pm-noipy")):
    km = jupyter_client.KernelManager(kernel_name=kernel or "pm-py311")
    if kernel is None:
        km.kernel_spec.metadata["kernel_provisioner"]["config"]["image"] = "envpin-test/nope:latest"
    t = time.monotonic()
    try:
        km.start_kernel()
        out[name] = ["started?!", 0]
        km.shutdown_kernel(now=True)
    except Exception as exc:
        out[name] = [f"{type(exc).__name__}: {exc}", round(time.monotonic() - t, 1)]
print(json.dumps(out))
"""


def test_clear_errors_on_podman(podman):
    got = user_python(ERRORS, folder="errors")
    assert "envpin-test/nope:latest" in got["missing"][0] and got["missing"][1] < 30, got
    assert "has Python but not ipykernel" in got["no_ipykernel"][0] and got["no_ipykernel"][1] < 60, got
    assert not envpin_containers(podman, **{"envpin.role": "kernel"})
    gone = pu.as_user(
        ["envpin", "doctor"], extra_env={"DOCKER_HOST": "unix:///run/user/0/no-podman.sock"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode == 1 and "No Docker engine answers at unix:///run/user/0/no-podman.sock" in gone.stdout
    assert "podman.socket" in gone.stdout  # and how to start rootless Podman's


JOBS = """
import json, os, subprocess, sys
import envpin
from envpin.jobs.executor import ContainerExecutor
probe = lambda: [os.path.exists("/run/.containerenv"), os.getuid(), __import__("platform").python_version()]
ex = ContainerExecutor("envpin-test/py311:latest", mode="container", max_workers=1)
job = ex.submit(probe).result(timeout=120)
ex.shutdown()
run = subprocess.run(["envpin", "run", "--image", "envpin-test/py311:latest", "--", "python3", "-c",
                      "import os; print(os.path.exists('/run/.containerenv'), os.getuid())"], capture_output=True, text=True)
open("respawned.py", "w").write("import envpin, os, sys; envpin.use_image('envpin-test/py311:latest'); print(os.path.exists('/run/.containerenv'), os.getuid(), sys.version.split()[0])")
respawn = subprocess.run([sys.executable, "respawned.py"], capture_output=True, text=True)
print(json.dumps({"job": job, "run": [run.returncode, run.stdout.strip(), run.stderr[-500:]],
                  "respawn": [respawn.returncode, respawn.stdout.strip(), respawn.stderr[-500:]]}))
"""


def test_jobs_run_and_respawn_on_podman(podman):
    got = user_python(JOBS, timeout=300, folder="jobs")
    user = pu.uid()
    assert got["job"] == [True, user, "3.11.2"]
    assert got["run"][:2] == [0, f"True {user}"], got["run"]
    assert got["respawn"][:2] == [0, f"True {user} 3.11.2"], got["respawn"]
    assert not envpin_containers(podman)  # workers and respawned containers are gone
