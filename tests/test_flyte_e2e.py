"""Flyte end to end: tasks declared in a pinned notebook run in the pinned image and their outputs come back.

What is real: the notebook kernel (a Containerized Python kernel in
``envpin-test/flyte``, pinned with ``%use_image``), flytekit's serialization
and packaging in it (what ``pyflyte package``/``register`` do, fast
registration's code bundle included), and every task execution: flytekit's
own ``pyflyte-execute`` in a container of the task template's image, inputs
and outputs as protobuf files.  What is fake: FlyteAdmin and FlytePropeller
(``tests/testutils/flyte_runner.py``): storing the package, walking the workflow's and
the ``@dynamic``'s graphs, a local folder as the blob store.
"""

from __future__ import annotations

from testutils import program
from testutils.flyte_runner import FlyteRunner
from testutils.kernels import kernel, run, run_json

FLYTE_IMAGE = "envpin-test/flyte:latest"
CODE_IMAGE = "envpin-test/flyte-code:latest"


async def _ok(kc, code: str, timeout: float = 180) -> str:
    res = await run(kc, code, timeout)
    assert res["status"] == "ok", res
    return res["stdout"]


def _fields(report: str) -> dict:
    x, exe, version, docker, image, image_id, flytekit_installed = report.split(" | ")
    return {"x": x, "exe": exe, "version": version, "docker": docker == "True", "image": image,
            "image_id": image_id, "flytekit_in_image": flytekit_installed == "True"}  # fmt: skip


async def test_task_workflow_and_dynamic_run_in_the_pinned_image(
    install_kernelspec, notebook_dir, docker_client, tmp_path
):
    (notebook_dir / "flows").mkdir()
    (notebook_dir / "flows" / "__init__.py").write_text("")
    (notebook_dir / "flows" / "pipeline.py").write_text(program("flows_pipeline"))
    image_id = docker_client.images.get(FLYTE_IMAGE).id
    name = install_kernelspec(FLYTE_IMAGE)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {FLYTE_IMAGE}")
        await _ok(kc, program("flyte_package", MODULE="flows.pipeline", PACKAGES=["flows"], FAST=True))
        conflicts = await run_json(kc, "conflicts")
        kernel_python = await run_json(kc, "__import__('os').path.realpath(__import__('sys').executable)")
        # The cluster side runs what the notebook registered; the notebook reads the outputs back.
        runner = FlyteRunner(docker_client, notebook_dir / "flows.tgz", tmp_path / "flyte")
        assert runner.execute("flows.pipeline.double", x=21) == {"o0": 42}
        runner.execute_to_file("flows.pipeline.pipeline", notebook_dir / "outputs.pb", x=3)
        await _ok(kc, program("flyte_read_back"))
        report = _fields(await run_json(kc, "result"))
        elsewhere = _fields(runner.execute("flows.pipeline.elsewhere", x=1)["o0"])
    # pipeline(3): double -> fan (a @dynamic: double(double(6))) -> report(24)
    assert report["x"] == "24"
    assert report["docker"] and report["exe"] == kernel_python and report["image"] == FLYTE_IMAGE
    assert report["image_id"] == image_id and report["flytekit_in_image"]
    by_task = {}
    for r in runner.runs:
        by_task.setdefault(r["task"].rsplit(".", 1)[-1], []).append(r)
    assert len(by_task["double"]) == 4 and by_task["fan"][0]["dynamic"] == ["flows.pipeline.double"]
    for r in runner.runs:
        if r["task"].endswith("elsewhere"):
            continue
        assert r["image"] == FLYTE_IMAGE, r  # the task, the workflow's tasks, the dynamic and its sub-tasks
        assert r["args"][0] == "pyflyte-fast-execute"  # the notebook's code travelled as fast registration
    # A task with its own image keeps it (and says so when declared).
    assert by_task["elsewhere"][0]["image"] == CODE_IMAGE and elsewhere["image"] == "-"
    assert any("elsewhere" in c and CODE_IMAGE in c for c in conflicts), conflicts
    print("Flyte per-task container time (s):", sorted(round(r["seconds"], 1) for r in runner.runs))


async def test_code_in_the_image_runs_without_fast_registration(
    install_kernelspec, notebook_dir, docker_client, tmp_path
):
    """The image carries the project's tasks (ENVPIN_CODE_IN_IMAGE): registered with --copy none, they run."""
    name = install_kernelspec(CODE_IMAGE)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        status = await _ok(kc, f"%load_ext envpin\n%use_image {CODE_IMAGE}")
        await _ok(kc, program("flyte_package", MODULE="flows_in_image.tasks", PACKAGES=["flows_in_image"], FAST=False))
        runner = FlyteRunner(docker_client, notebook_dir / "flows.tgz", tmp_path / "flyte")
        assert runner.fast_bundle is None
        out = runner.execute("flows_in_image.tasks.shout", word="hello")
    assert "--copy none" in status
    assert out == {"o0": f"HELLO from the image {CODE_IMAGE}"}
    (only,) = runner.runs
    assert only["image"] == CODE_IMAGE and only["args"][0] == "pyflyte-execute"
