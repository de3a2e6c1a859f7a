"""Ray end to end: tasks really run in the pinned image on a real Ray cluster whose nodes use podman.

Nothing is faked.  ``tools/ray_cluster.py`` builds the cluster from nothing
(rootless podman for an unprivileged user, Ray on Debian's Python, the images
loaded into that user's storage) and starts a head with Ray Client and the
job server on 127.0.0.1.  The notebooks are Containerized Python kernels in a
Ray image, sharing the host's network to reach it.  Each task reports from
inside: its interpreter (the image's ``/opt/python``, not the node's venv),
``/run/.containerenv`` (a podman container: the worker, not the kernel,
which runs in Docker), ``ENVPIN_IMAGE_ID`` and the image's marker file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from testutils import program
from testutils.kernels import kernel, run, run_json

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the Ray test cluster is set up by root")

RAY_A = "envpin-test/ray:latest"
RAY_B = "envpin-test/ray-b:latest"
UV_PROJECT = "envpin-test/ray-uv-project:latest"
UV_IMAGE = "envpin-test/ray-uv:latest"
CLIENT = "ray://127.0.0.1:10001"
DASHBOARD = "http://127.0.0.1:8265"

#: The kernel connected to the cluster, with ``probe()`` (tests/kernel_programs/ray_cluster.py).
CONNECT = program("ray_cluster", "connect", CLIENT=CLIENT)


@pytest.fixture(scope="module")
def ray_cluster(docker_client):
    from tools import ray_cluster as rc

    started = time.monotonic()
    rc.prepare()
    rc.load_images(docker_client, [RAY_A, RAY_B, UV_PROJECT, UV_IMAGE])
    rc.start()
    print(f"Ray cluster (podman, images loaded) ready in {time.monotonic() - started:.1f} s")
    yield rc
    rc.stop()
    assert not rc.worker_containers()  # Ray leaves exited worker containers: stop() removed them


async def _ok(kc, code: str, timeout: float = 180) -> str:
    res = await run(kc, code, timeout)
    assert res["status"] == "ok", res
    return res["stdout"]


def ray_kernel(install_kernelspec, notebook_dir, image: str):
    return kernel(install_kernelspec(image, network_mode="host"), cwd=notebook_dir)


async def test_task_actor_options_and_job_run_in_the_pinned_image(
    ray_cluster, install_kernelspec, notebook_dir, docker_client
):
    image_id = docker_client.images.get(RAY_A).id
    async with ray_kernel(install_kernelspec, notebook_dir, RAY_A) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {RAY_A}")
        await _ok(kc, CONNECT)
        await _ok(kc, program("ray_cluster", "task") + program("ray_cluster", "tasks"), timeout=300)
        seen = await run_json(
            kc,
            "{'first': first, 'warm': warm, 'optioned': optioned, 'actor': from_actor, 'node b': on_b, 'head': on_head}",
        )
        timings = await run_json(kc, "timings")
        # A submitted job: its entrypoint is a driver on a node (ray.init() joins the cluster there), and its
        # own task inherits the job's runtime_env.
        await _ok(kc, program("ray_cluster", "job", DASHBOARD=DASHBOARD), timeout=300)
        job = await run_json(kc, "job")
    print("Ray through Ray Client (s):", {k: round(v, 2) for k, v in timings.items()})
    for name, where in seen.items():
        assert where["podman"] and where["exe"] == "/opt/python/bin/python", (name, where)
        assert where["ray_at"].startswith("/opt/python/lib/python3.11/site-packages/ray/"), (name, where)
        assert where["image_id"] == image_id and where["image"] == RAY_A and where["marker"] is None, (name, where)
    assert seen["node b"]["node"] != seen["head"]["node"]  # two nodes, each started its worker in the image
    assert job["status"].endswith("SUCCEEDED"), job
    line = [x for x in job["logs"].splitlines() if x.startswith("[")][-1]
    exe, podman, job_image_id, task_exe = json.loads(line)
    assert exe == task_exe == "/opt/python/bin/python" and podman and job_image_id == image_id, job["logs"]


async def test_two_notebooks_on_one_cluster_each_get_their_own_image(ray_cluster, install_kernelspec, tmp_path):
    """Two applications, two images (same Ray and Python, different marker), one cluster, at the same time."""
    work = {}
    for image in (RAY_A, RAY_B):
        work[image] = tmp_path / image.split("/")[1].split(":")[0]
        work[image].mkdir()

    async def notebook(image):
        async with ray_kernel(install_kernelspec, work[image], image) as (km, kc):
            await _ok(kc, f"%load_ext envpin\n%use_image {image}")
            await _ok(kc, CONNECT + program("ray_cluster", "task"))
            seen = await run_json(kc, "[ray.get([task.remote() for _ in range(4)])][0]", timeout=300)
            await _ok(kc, "ray.shutdown()")
            return seen

    a, b = await asyncio.gather(notebook(RAY_A), notebook(RAY_B))
    assert {(s["image"], s["marker"], s["podman"]) for s in a} == {(RAY_A, None, True)}
    assert {(s["image"], s["marker"], s["podman"]) for s in b} == {(RAY_B, "b", True)}


async def test_a_cluster_the_image_cannot_join_is_refused_before_connecting(ray_cluster, jupyter_env, tmp_path):
    """A host notebook pinned to a 3.13 image without Ray: refused at ray.init, in seconds, naming both sides."""
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, "%load_ext envpin\n%use_image envpin-test/py313")
        started = time.monotonic()
        res = await run(kc, f"import ray\nray.init({CLIENT!r})", timeout=120)
        elapsed = time.monotonic() - started
        connected = await run_json(kc, "ray.is_initialized()")
        job = await run(
            kc,
            "from ray.job_submission import JobSubmissionClient\n"
            f"JobSubmissionClient({DASHBOARD!r}).submit_job(entrypoint='python -c pass')",
            timeout=120,
        )
    assert job["ename"] == "ClusterMismatch" and "Nothing was submitted" in job["evalue"], job
    assert res["status"] == "error" and res["ename"] == "ClusterMismatch", res
    message = res["evalue"]
    assert "runs Ray 2.60.0 on Python 3.11.2" in message and "'envpin-test/py313'" in message
    assert "has no Ray installed" in message and "has Python 3.13" in message and "Nothing was submitted" in message
    assert "(measured: cloudpickle pickles made under Python 3.13 fail under Python 3.11" in message  # the matrix
    assert not connected and elapsed < 30, elapsed


async def test_uv_built_images_the_seed_scenario(ray_cluster, install_kernelspec, notebook_dir):
    """Images built with real uv: installing fields are refused before submission; the recommended build runs.

    ``envpin-test/ray-uv-project`` ran ``uv sync``, which installed the project into the image;
    ``envpin-test/ray-uv`` ran ``uv sync --no-install-project`` (dependencies only), as recommended.
    A ``runtime_env`` that asks Ray to run the project with uv (what ``uv run`` makes Ray do) cannot be
    combined with ``image_uri``: envpin refuses it with the fix, before anything reaches the cluster.
    """
    async with ray_kernel(install_kernelspec, notebook_dir, UV_PROJECT) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {UV_PROJECT}")
        await _ok(kc, CONNECT)
        started = time.monotonic()
        res = await run(
            kc,
            "@ray.remote(runtime_env={'py_executable': 'uv run --project /opt/app'})\n"
            "def train():\n    return probe()\n"
            "train.remote()",
        )
        refused_in = time.monotonic() - started
        assert res["ename"] == "RuntimeEnvConflict", res
        assert "'py_executable'" in res["evalue"] and "uv sync --no-install-project" in res["evalue"], res
        assert "Nothing was submitted" in res["evalue"] and refused_in < 10
        res = await run(kc, "train.options(runtime_env={'uv': ['demoapp']}).remote()")
        assert res["ename"] == "RuntimeEnvConflict" and "'uv'" in res["evalue"], res
        await _ok(kc, "ray.shutdown()")
        # The image built the recommended way: the task runs in it, with the project's dependencies.
        await _ok(kc, f"%use_image {UV_IMAGE} --restart", timeout=120)
        await _ok(kc, CONNECT)
        seen = await run_json(
            kc,
            "ray.get(ray.remote(lambda: dict(probe(), cloudpickle=__import__('cloudpickle').__version__)).remote())",
            timeout=300,
        )
        await _ok(kc, "ray.shutdown()")
    assert seen["image"] == UV_IMAGE and seen["podman"] and seen["cloudpickle"], seen


def test_ray_cluster_notebook_shows_a_task_in_the_image(ray_cluster, install_kernelspec, tmp_path, docker_client):
    """notebooks/ray_cluster.ipynb, headless, in a kernel of the Ray image, against the test cluster."""
    import shutil

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from testutils import ROOT

    work = tmp_path / "ray_cluster"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "ray_cluster.ipynb", work)
    name = install_kernelspec(RAY_A, network_mode="host", environment={"RAY_ADDRESS": CLIENT})
    # Ray's client proxier now and then fails to start the per-client server it forks (ray-project/ray#63202:
    # ray.init raises ConnectionAbortedError, "Starting Ray client server failed"); the notebook is run again,
    # as its reader would run it again, at most twice.  Any other failure fails at once.
    for attempt in range(3):
        nb = nbformat.read(work / "ray_cluster.ipynb", as_version=4)
        try:
            NotebookClient(nb, kernel_name=name, timeout=300, resources={"metadata": {"path": str(work)}}).execute()
            break
        except CellExecutionError as exc:
            if attempt == 2 or "ConnectionAbortedError" not in str(exc):
                raise
    text = "\n".join(
        o.get("text") or o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )
    image_id = docker_client.images.get(RAY_A).id
    assert "'in a podman container': True" in text and f"'image id': '{image_id[:19]}'" in text, text
    assert "'python': '/opt/python/bin/python'" in text, text
