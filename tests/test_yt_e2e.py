"""YTsaurus end to end: jobs run, in the pinned image, and their rows come back to the notebook.

What is real: the notebook kernel (a Containerized Python kernel in
``envpin-test/yt``, pinned with ``%use_image``), ytsaurus-client in it and in
the jobs, the job commands, pickles and containers.  What is fake: the
cluster's server side, scheduler and storage (``tests/testutils/fake_yt.py``): its exec
node runs every user job in a container of the job's ``docker_image``, as an
exec node does.  The kernel shares the host's network to reach the fake
proxy on 127.0.0.1, and so do the jobs (nested operations).
"""

from __future__ import annotations

import json
import time

import pytest

from testutils import program
from testutils.fake_yt import FakeYtProxy
from testutils.kernels import kernel, run, run_json

YT_IMAGE = "envpin-test/yt:latest"


@pytest.fixture
def cluster(docker_client):
    with FakeYtProxy(exec_node=docker_client) as proxy:
        yield proxy


async def _ok(kc, code: str, timeout: float = 300) -> str:
    res = await run(kc, code, timeout)
    assert res["status"] == "ok", res
    return res["stdout"]


async def pinned_yt_kernel(install_kernelspec, notebook_dir):
    name = install_kernelspec(YT_IMAGE, network_mode="host")
    return kernel(name, cwd=notebook_dir)


async def test_map_reduce_map_reduce_and_vanilla_run_in_the_pinned_image(
    cluster, install_kernelspec, notebook_dir, docker_client
):
    image_id = docker_client.images.get(YT_IMAGE).id
    timings = {}
    async with await pinned_yt_kernel(install_kernelspec, notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {YT_IMAGE}")
        await _ok(kc, program("yt_cluster", "client", PROXY=cluster.url) + program("yt_cluster", "probe"))
        kernel_python = await run_json(kc, "sys.executable")
        await _ok(kc, program("yt_cluster", "operations"))
        mapped = await run_json(kc, "list(client.read_table('//tmp/mapped'))")
        reduced = await run_json(kc, "sorted(client.read_table('//tmp/reduced'), key=lambda r: r['k'])")
        mr = await run_json(kc, "sorted(client.read_table('//tmp/mr'), key=lambda r: r['k'])")
        timings = await run_json(kc, "timings")
    print("YTsaurus per-operation cell time (s):", {k: round(v, 1) for k, v in timings.items()})
    # The rows the notebook read back are the jobs' own work...
    assert [r["y"] for r in mapped] == [0, 2, 4, 6, 8, 10]
    assert [(r["k"], r["n"], r["total"]) for r in reduced] == [(0, 3, 6), (1, 3, 9)]
    assert [(r["k"], r["n"], r["total"]) for r in mr] == [(0, 3, 6), (1, 3, 9)]
    # ... done in containers of the pinned image, with the kernel's own interpreter, without envpin.
    vanilla = [
        json.loads(j["stderr"].strip().splitlines()[-1]) for j in cluster.exec_node.jobs_run if j["type"] == "train"
    ]
    assert len(vanilla) == 2
    for seen in [*mapped, *reduced, *mr, *vanilla]:
        assert seen["docker"] and seen["marker"] and not seen["envpin_loaded"], seen
        assert seen["python"] == kernel_python and seen["yt_image"] == YT_IMAGE and seen["image_id"] == image_id, seen
    assert {j["image"] for j in cluster.exec_node.jobs_run} == {YT_IMAGE}
    assert {j["type"] for j in cluster.exec_node.jobs_run} == {"map", "reduce", "train"}


async def test_nested_operations_keep_the_image_two_levels_deep(
    cluster, install_kernelspec, notebook_dir, docker_client
):
    """A mapper starts an operation with a new client, whose mapper starts one with the job's configuration.

    Every level's jobs run in the pinned image, which no level below the notebook names, and envpin is
    loaded in none of the jobs.
    """
    async with await pinned_yt_kernel(install_kernelspec, notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {YT_IMAGE}")
        await _ok(
            kc,
            program("yt_cluster", "client", PROXY=cluster.url)
            + program("yt_cluster", "probe")
            + program("yt_cluster", "nested", URL=cluster.url),
        )
        started = time.monotonic()
        res = await run(kc, program("yt_cluster", "top"), timeout=600)
        if res["status"] != "ok":
            for j in cluster.exec_node.jobs_run:
                print(f"--- job {j['job_id']} in {j['image']}:\n{j.get('stderr', '')[-3000:]}")
        assert res["status"] == "ok", res["evalue"]
        result = json.loads(res["stdout"].strip().splitlines()[-1])
    print(f"YTsaurus: three nested levels in {time.monotonic() - started:.1f} s")
    levels, node = [], result[0]
    while node:
        levels.append(node)
        node = (node.get("below") or [None])[0]
    assert [(n["depth"], n["how"]) for n in levels] == [(1, "notebook"), (2, "fresh"), (3, "config")]
    for n in levels:  # each level ran in a container of the pinned image
        assert n["docker"] and n["marker"] and n["yt_image"] == YT_IMAGE and not n["envpin_loaded"], n
    specs = [op["spec"]["mapper"] for op in cluster.operations if op["operation_type"] == "map"]
    assert len(specs) == 3 and {s["docker_image"] for s in specs} == {YT_IMAGE}
    assert {j["image"] for j in cluster.exec_node.jobs_run} == {YT_IMAGE}


async def test_a_job_under_another_python_is_refused_with_its_message(cluster, install_kernelspec, notebook_dir):
    """A job that names another image (3.13, with the client): the check envpin turned on refuses it.

    The job's stderr, with the client's own message, reaches the notebook in the operation's error.
    """
    async with await pinned_yt_kernel(install_kernelspec, notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {YT_IMAGE}")
        await _ok(
            kc, program("yt_cluster", "client", PROXY=cluster.url) + "client.write_table('//tmp/in', [{'x': 1}])\n"
        )
        started = time.monotonic()
        res = await run(kc, program("yt_cluster", "other-python"), timeout=300)
    assert res["status"] == "error" and res["ename"] == "YtOperationFailedError", res
    job = cluster.exec_node.jobs_run[-1]
    assert job["image"] == "envpin-test/yt313:latest"
    assert "Python version on cluster differs from local python version" in job["stderr"], job["stderr"][-1500:]
    assert "Python version on cluster differs" in res["stdout"] + res["evalue"]  # shown under the cell
    assert time.monotonic() - started < 120
