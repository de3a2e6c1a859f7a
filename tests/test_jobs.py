"""Jobs on the real engine: envpin.submit / ContainerExecutor, the envelope, code shipping, faults, stamping."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import platform
import subprocess
import sys
import threading
import time

import pytest

import envpin
from envpin.jobs import envelope
from envpin.jobs.executor import ModuleNotInImage, WorkerDied
from testutils import PY311, PY313, containers, wait_for
from testutils.kernels import JOB_PROBE, kernel, run, run_json


def image_python(client, image) -> str:
    return (
        client.containers.run(
            image, ["python3", "-c", "import platform; print(platform.python_version())"], remove=True
        )
        .decode()
        .strip()
    )


async def test_jobs_from_a_containerized_kernel_run_in_its_image(install_kernelspec, notebook_dir, docker_client):
    """Process mode: the kernel has no engine access; workers are processes of its own container."""
    name = install_kernelspec(PY313)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, f"%load_ext envpin\n%use_image {PY313}")
        job = await run_json(
            kc, f"envpin.submit({JOB_PROBE}).result(timeout=60) if (envpin := __import__('envpin')) else 0"
        )
        kernel_host = await run_json(kc, "__import__('socket').gethostname()")
        assert job["python"].startswith("3.13.") and job["dockerenv"]
        assert job["image_id"] == docker_client.images.get(PY313).id
        assert job["hostname"] == kernel_host  # same container
        status = await run(kc, "%use_image")
        assert "worker processes in this kernel's container" in status["stdout"]
        assert "envpin.submit" in status["stdout"]  # the built-in adapter is active


def test_jobs_from_a_host_run_in_worker_containers(executor, docker_client, notebook_dir):
    ex = executor(PY311, max_workers=2)
    assert ex.mode == "container"
    job = ex.submit(eval(JOB_PROBE)).result(timeout=60)
    assert job["dockerenv"] and job["python"] == image_python(docker_client, PY311)
    assert job["python"] != platform.python_version()  # the image's 3.11.2, not this host's
    assert job["image_id"] == docker_client.images.get(PY311).id
    workers = containers(docker_client, role="job", running=True)
    assert len(workers) == 1 and workers[0].labels["envpin.owner-pid"] == str(os.getpid())
    assert job["hostname"] == workers[0].attrs["Config"]["Hostname"]
    # Warm: the next jobs reuse the worker (and a second one for parallelism).
    assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    assert {c.id for c in containers(docker_client, role="job", running=True)} >= {workers[0].id}
    ex.shutdown()
    assert not containers(docker_client, role="job")


def test_large_arrays_travel_out_of_band(executor):
    import numpy as np

    ex = executor(PY311)
    a = np.arange(12_500_000, dtype=np.float64)  # 100 MB
    b = ex.submit(np.multiply, a, 2).result(timeout=120)
    assert b.shape == a.shape and b[-1] == a[-1] * 2
    frames = envelope.dumps((np.multiply, (a, 2), {}), "job")
    assert len(frames[3]) < 10_000  # the pickle itself is tiny: the 100 MB went as a separate buffer
    assert sum(len(memoryview(f).cast("B")) for f in frames[5:]) >= a.nbytes


def test_a_job_pickled_under_another_python_is_refused_before_loads(executor, docker_client, notebook_dir):
    # 3.11 (this host) -> 3.13 worker: the worker reads the JSON header and refuses.
    ex = executor(PY313)
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        ex.submit(abs, -1).result(timeout=60)
    msg = str(info.value)
    assert "Refusing to unpickle a job made under CPython 3.11" in msg and "under CPython 3.13" in msg
    assert PY313 in msg and "%use_image" in msg

    # 3.13 -> 3.11 worker: a payload made inside the 3.13 image, sent to a 3.11 worker.
    made = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "run", "--image", PY313, "--", "python3", "-c",
         "import envpin.jobs.envelope as e, sys; sys.stdout.buffer.write(b''.join(bytes(f) for f in e.dumps((abs, (-1,), {}), 'job')))"],
        cwd=notebook_dir, capture_output=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    ex11 = executor(PY311)
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        ex11._enqueue([made.stdout], "job").result(timeout=60)
    assert "made under CPython 3.13" in str(info.value) and "under CPython 3.11" in str(info.value)

    # And results: a result envelope from 3.13 is refused here before loads.
    view = memoryview(made.stdout)
    pos = [0]

    def take(n):
        pos[0] += n
        return view[pos[0] - n : pos[0]]

    header, payload, buffers = envelope.read_frames(take)
    with pytest.raises(envelope.EnvelopeMismatch, match="job result made under CPython 3.13"):
        envelope.loads(header, payload, buffers, "job result")


def test_envpin_run_on_a_terminal_gives_the_program_a_terminal(notebook_dir, docker_client):
    """`envpin run` said "wired to this terminal", but the program saw no terminal: no REPL, no pdb, no input()."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: envpin run on a terminal (the pty)
        os.chdir(notebook_dir)
        os.execv(sys.executable, [sys.executable, "-m", "envpin_provisioner", "run", "--image", PY311, "--", "python3",
                 "-c", "import sys; print('tty', sys.stdin.isatty(), sys.stdout.isatty()); print('got', input('name? '))"])  # fmt: skip
    seen, answered, deadline = b"", False, time.monotonic() + 60
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal: it has ended
            break
        if not chunk:
            break
        seen += chunk
        if not answered and b"name? " in seen:
            os.write(fd, b"Ada\r")  # typed at the terminal, in the program's terminal
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "tty True True" in text and "got Ada" in text, text


def test_a_jobs_exception_comes_back_with_its_remote_traceback(executor):
    ex = executor(PY311)

    def failing(x):
        return {"a": 1}[x]

    with pytest.raises(KeyError) as info:
        ex.submit(failing, "b").result(timeout=60)
    assert "Traceback in the worker" in str(info.value.__cause__) and "failing" in str(info.value.__cause__)


def test_notebook_modules_are_shipped_by_value_and_missing_ones_refused_at_submit(executor, notebook_dir, monkeypatch):
    (notebook_dir / "nbhelpers.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(notebook_dir))
    monkeypatch.chdir(notebook_dir.parent)  # the worker cannot import nbhelpers from its working directory
    import nbhelpers

    ex = executor(PY311)
    assert ex.submit(nbhelpers.triple, 5).result(timeout=60) == 15
    assert ex.submit(lambda: "nbhelpers" in sys.modules).result(timeout=60) is False  # shipped, not imported

    import requests  # installed here, absent from the image

    started = time.monotonic()
    with pytest.raises(ModuleNotInImage) as info:
        ex.submit(lambda: requests.__version__)
    assert "needs requests" in str(info.value) and PY311 in str(info.value)
    assert time.monotonic() - started < 10


def test_unpicklable_jobs_and_results_are_clear_errors(executor):
    ex = executor(PY311)
    lock = threading.Lock()
    with pytest.raises(envpin.EnvpinError, match="cannot be sent to a worker.*_thread.lock"):
        ex.submit(lambda: lock)
    with pytest.raises(envpin.EnvpinError, match="its result cannot be sent back"):
        ex.submit(lambda: __import__("threading").Lock()).result(timeout=60)
    assert ex.submit(abs, -4).result(timeout=60) == 4  # the worker lives on

    def worker_only_type():
        import sys
        import types

        mod = types.ModuleType("only_in_the_worker")
        exec("class Thing:\n    pass", mod.__dict__)
        sys.modules["only_in_the_worker"] = mod
        return mod.Thing()

    started = time.monotonic()
    with pytest.raises(envpin.EnvpinError, match="its result cannot be loaded here.*only_in_the_worker"):
        ex.submit(worker_only_type).result(timeout=60)
    assert time.monotonic() - started < 10


def test_nested_submission_inherits_the_pin(executor, docker_client):
    ex = executor(PY311)
    inner = ex.submit(
        lambda: __import__("envpin").submit(lambda: __import__("os").environ["ENVPIN_IMAGE_ID"]).result(60)
    )
    assert inner.result(timeout=120) == docker_client.images.get(PY311).id


@pytest.mark.usefixtures("docker_client")
async def test_two_kernels_pinned_to_different_images_get_their_own(install_kernelspec, notebook_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    a, b = install_kernelspec(PY311), install_kernelspec(PY313)
    async with kernel(a, cwd=notebook_dir) as (_, kc1), kernel(b, cwd=other) as (_, kc2):
        await run(kc1, f"%load_ext envpin\n%use_image {PY311}")
        await run(kc2, f"%load_ext envpin\n%use_image {PY313}")
        code = (
            "import envpin; print([envpin.submit(__import__('platform').python_version).result(60) for _ in range(5)])"
        )
        r1, r2 = await asyncio.gather(run(kc1, code), run(kc2, code))
        assert all(v.startswith("3.11") for v in eval(r1["stdout"]))
        assert all(v.startswith("3.13") for v in eval(r2["stdout"]))


def test_a_dead_worker_fails_only_its_job(executor, docker_client):
    ex = executor(PY311, max_workers=1)
    assert ex.submit(abs, -1).result(timeout=60) == 1
    future = ex.submit(time.sleep, 30)
    wait_for(future.running, what="the job to reach the warm worker")
    (worker,) = containers(docker_client, role="job", running=True)
    worker.kill()
    with pytest.raises(WorkerDied, match="died: it was killed"):
        future.result(timeout=30)
    assert ex.submit(abs, -2).result(timeout=60) == 2  # replaced


def test_out_of_memory_is_named(executor):
    ex = executor(PY311, max_workers=1, mem_limit="96m")
    assert ex.submit(abs, -1).result(timeout=60) == 1  # a warm worker
    started = time.monotonic()
    with pytest.raises(WorkerDied, match="out of memory"):
        ex.submit(lambda: len(bytearray(400 * 2**20))).result(timeout=60)
    assert time.monotonic() - started < 10
    assert ex.submit(abs, -3).result(timeout=60) == 3


def test_a_hung_job_can_be_cancelled(executor, docker_client):
    ex = executor(PY311, max_workers=1)
    future = ex.submit(time.sleep, 300)
    wait_for(future.running, timeout=60, what="the job to start in a new worker")
    started = time.monotonic()
    assert future.cancel()
    with pytest.raises(cf.CancelledError):
        future.result(timeout=30)
    assert time.monotonic() - started < 10
    assert ex.submit(abs, -5).result(timeout=60) == 5


def test_stamp_for_systems_without_an_adapter(request):
    from envpin.session import stamping, state

    with pytest.raises(envpin.EnvpinError, match="pin the session first"):
        envpin.stamp()
    pin = state.Pin(PY311, PY311, "sha256:abc", "3.11.2", "3.1.3", "host")
    stamping.pin_session(pin)
    request.addfinalizer(stamping.unpin_session)
    stamped = envpin.stamp()
    assert stamped["env"] == {"ENVPIN_IMAGE": PY311, "YT_JOB_DOCKER_IMAGE": PY311, "ENVPIN_IMAGE_ID": "sha256:abc"}
    job = envpin.stamp({"name": "train", "env": {"ENVPIN_IMAGE": "mine"}})
    assert job["image"] == PY311 and job["env"]["ENVPIN_IMAGE"] == "mine"  # explicit values win
    with pytest.warns(
        stamping.ImageConflictWarning, match=f"names image 'other:1' but this session is pinned to '{PY311}'"
    ):
        kept = envpin.stamp({"image": "other:1"})
    assert kept["image"] == "other:1"
    pin.strict = True
    with pytest.raises(stamping.ImageConflict):
        envpin.stamp({"image": "other:1"})

    seen = []

    class Adapter:
        name = "test-adapter"

        def available(self):
            return True

        def activate(self, s):
            seen.append(("on", s.image))

        def deactivate(self):
            seen.append(("off", None))

    stamping.register(Adapter())  # the session is pinned already: active at once
    assert seen == [("on", PY311)] and "test-adapter" in stamping.active()
    stamping.unregister("test-adapter")
    assert seen[-1] == ("off", None)


def test_worker_containers_of_a_killed_caller_are_collected(docker_client, notebook_dir):
    code = (
        "import os, signal, envpin\n"
        f"ex = envpin.ContainerExecutor({PY311!r})\n"
        "print(ex.submit(abs, -1).result(60), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=notebook_dir, capture_output=True, text=True, timeout=60)
    assert out.returncode == -9 and out.stdout.strip() == "1"
    assert containers(docker_client, role="job")  # left behind ...
    gc = subprocess.run([sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0 and "removed 1" in gc.stdout
    assert not containers(docker_client, role="job")  # ... and collected


def test_a_host_kernels_worker_containers_go_when_the_kernel_ends(jupyter_env, notebook_dir, docker_client):
    """A plain ipykernel on the host submits to worker containers; its shutdown removes them."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"%load_ext envpin\n%use_image {PY311}"),
        nbformat.v4.new_code_cell(
            "import envpin; print(envpin.submit(lambda: __import__('os').path.exists('/.dockerenv')).result(60))"
        ),
        nbformat.v4.new_code_cell(
            "import docker; print(len(docker.from_env().containers.list(filters={'label': 'envpin.role=job'})))"
        ),
    ]
    NotebookClient(nb, kernel_name="python3", timeout=90, resources={"metadata": {"path": str(notebook_dir)}}).execute()
    assert "worker containers of" in nb.cells[0].outputs[-1]["data"]["text/plain"]
    assert nb.cells[1].outputs[0]["text"].strip() == "True"
    assert nb.cells[2].outputs[0]["text"].strip() == "1"  # a warm worker container while the kernel lived
    assert not containers(docker_client, role="job")
