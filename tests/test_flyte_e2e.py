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
    """The image carries the project's tasks (ENVPIN_CODE_IN_IMAGE): registered WITH fast registration asked for
    (in the kernel, and by a ``pyflyte package --copy all`` started from it), no bundle is made and the task runs
    from the image's code."""
    name = install_kernelspec(CODE_IMAGE)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        status = await _ok(kc, f"%load_ext envpin\n%use_image {CODE_IMAGE}")
        said = await _ok(
            kc, program("flyte_package", MODULE="flows_in_image.tasks", PACKAGES=["flows_in_image"], FAST=True)
        )
        cli = await _ok(kc, PYFLYTE_PACKAGE.format(pkgs="flows_in_image", output="cli.tgz"), timeout=180)
        runner = FlyteRunner(docker_client, notebook_dir / "flows.tgz", tmp_path / "flyte")
        out = runner.execute("flows_in_image.tasks.shout", word="hello")
        cli_runner = FlyteRunner(docker_client, notebook_dir / "cli.tgz", tmp_path / "flyte-cli")
        cli_out = cli_runner.execute("flows_in_image.tasks.shout", word="cli")
    assert "registered without a code bundle" in status
    assert said.count("no files scanned or uploaded") == 1 and "flows_in_image.tasks" in said, said
    assert runner.fast_bundle is None and cli_runner.fast_bundle is None  # no archive in either package
    assert cli.startswith("0 ") and cli.count("no files scanned or uploaded") == 1, cli
    assert out == {"o0": f"HELLO from the image {CODE_IMAGE}"}
    assert cli_out["o0"].startswith("CLI from the image")
    for r in runner.runs + cli_runner.runs:
        assert r["image"] == CODE_IMAGE and r["args"][0] == "pyflyte-execute", r


#: ``!pyflyte package`` from the notebook: another process, which gets envpin's rules through the flytekit plugin.
PYFLYTE_PACKAGE = (
    "import os, subprocess, sys\n"
    "pyflyte = os.path.join(os.path.dirname(sys.executable), 'pyflyte')\n"
    "done = subprocess.run([pyflyte, '--pkgs', '{pkgs}', 'package', '--copy', 'all', '--output', '{output}', "
    "'--force'], capture_output=True, text=True)\n"
    "print(done.returncode, done.stdout[-3000:], done.stderr[-3000:])"
)

MIXED_OTHER = """\
import os

from flytekit import task


@task(container_image="envpin-test/flyte:latest")
def exclaim(word: str) -> str:
    return word + "! then in " + (os.environ.get("ENVPIN_IMAGE") or "an image of its own")
"""

MIXED_FLOWS = """\
from flytekit import ContainerTask, kwtypes, workflow

from flows_in_image.tasks import shout
from mixedflows.other import exclaim

raw = ContainerTask(name="raw", image="envpin-test/py311:latest", command=["echo", "{{.inputs.word}}"],
                    inputs=kwtypes(word=str))


@workflow
def mixed(word: str) -> str:
    return exclaim(word=shout(word=word))
"""


async def test_a_mixed_workflow_bundles_only_the_task_whose_image_lacks_the_code(
    install_kernelspec, notebook_dir, docker_client, tmp_path
):
    """shout runs from the pinned image's code (no wrapper); exclaim, with its own image, gets the bundle; both run.
    The raw ContainerTask registered with the bundle is warned about (it is registered, not run: the stand-in has
    no Flyte copilot for raw containers' inputs)."""
    (notebook_dir / "mixedflows").mkdir()
    (notebook_dir / "mixedflows" / "__init__.py").write_text("")
    (notebook_dir / "mixedflows" / "other.py").write_text(MIXED_OTHER)
    (notebook_dir / "mixedflows" / "flows.py").write_text(MIXED_FLOWS)
    name = install_kernelspec(CODE_IMAGE)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {CODE_IMAGE}")
        said = await _ok(kc, program("flyte_package", MODULE="mixedflows.flows", PACKAGES=["mixedflows"], FAST=True))
        bundle_warnings = await run_json(kc, "bundle_warnings")
        runner = FlyteRunner(docker_client, notebook_dir / "flows.tgz", tmp_path / "flyte")
        out = runner.execute("mixedflows.flows.mixed", word="hi")
    assert "no files scanned" not in said
    assert runner.fast_bundle is not None  # the package carries the bundle, for exclaim
    assert out == {"o0": f"HI from the image {CODE_IMAGE}! then in an image of its own"}
    by_task = {r["task"].rsplit(".", 1)[-1]: r for r in runner.runs}
    assert by_task["shout"]["image"] == CODE_IMAGE and by_task["shout"]["args"][0] == "pyflyte-execute"
    assert by_task["exclaim"]["image"] == FLYTE_IMAGE and by_task["exclaim"]["args"][0] == "pyflyte-fast-execute"
    (warning,) = bundle_warnings
    assert "ContainerTask 'raw'" in warning and "envpin-test/py311:latest" in warning


async def test_a_false_code_in_image_claim_is_refused_before_anything_is_packaged(
    install_kernelspec, notebook_dir, docker_client
):
    """A task in the pinned image whose module only the notebook's folder has: refused, naming the module."""
    (notebook_dir / "notinimage").mkdir()
    (notebook_dir / "notinimage" / "__init__.py").write_text("")
    (notebook_dir / "notinimage" / "tasks.py").write_text(
        "from flytekit import task\n\n\n@task\ndef local(x: int) -> int:\n    return x\n"
    )
    name = install_kernelspec(CODE_IMAGE)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {CODE_IMAGE}")
        res = await run(
            kc, program("flyte_package", MODULE="notinimage.tasks", PACKAGES=["notinimage"], FAST=True), timeout=180
        )
    assert res["ename"] == "CodeNotInImage", res
    assert "Module 'notinimage.tasks' is not in image" in res["evalue"] and "Nothing was uploaded" in res["evalue"]
    assert not (notebook_dir / "flows.tgz").exists()
