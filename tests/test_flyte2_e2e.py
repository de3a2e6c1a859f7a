"""Flyte 2 end to end: a task serialized in a pinned notebook runs by its own pod command in a container of the pin.

What is real: the notebook kernel (the host's ``python3`` kernel, pinned with
``%use_image`` to ``envpin-test/flyte2-code``, an image with ``flyte`` 2 and the
project's code in /opt/project, marked with ``ENVPIN_CODE_IN_IMAGE``), the
serialization by the real ``flyte`` SDK (``with_runcontext(mode="remote",
dry_run=True)``: the task template and inputs a cluster would receive), and the
execution: the template's own ``args`` (Flyte 2's runtime ``a0``) and ``env`` in
a container of the template's image, ``--network none``.  What is fake
(``tests/testutils/flyte2_runner.py``): the control plane's part of starting the
action (placing the inputs, filling the template's placeholders, the pod's
variables) and a local folder as the blob store.  A task that awaits another
task is not run: its sub-action goes through Flyte 2's control plane, which no
stand-in here provides.
"""

from __future__ import annotations

import asyncio
import json

import docker.errors
import pytest

from testutils import program
from testutils.kernels import kernel, run, run_json
from tools.images import FLYTE2_PROJECT

IMAGE = "envpin-test/flyte2-code:latest"


async def _ok(kc, code: str, timeout: float = 120) -> str:
    res = await run(kc, code, timeout)
    assert res["status"] == "ok", res
    return res["stdout"]


async def test_a_flyte2_task_from_the_images_code_runs_by_its_pod_command_in_a_container_of_the_pin(
    jupyter_env, tmp_path, docker_client
):
    """The notebook's folder holds the same project as the image (as a checkout of the code the image was built
    from does): the run is serialized without a bundle (``copy_style="none"``), and its pod command, run in a
    container of the pinned image, loads the task from the image's /opt/project and says where it ran."""
    pytest.importorskip("flyte")
    from flyteidl2.core.tasks_pb2 import TaskTemplate
    from flyteidl2.task.common_pb2 import Inputs

    from testutils.flyte2_runner import run_action

    for name, text in FLYTE2_PROJECT.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    image_id = docker_client.images.get(IMAGE).id
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        status = await _ok(kc, f"%load_ext envpin\n%use_image {IMAGE}\nimport flyte\n%use_image")
        said = await _ok(kc, program("flyte2_dry_run", MODULE="flows2_in_image.tasks"), timeout=180)
        serialized = await run_json(kc, "flyte2")
    assert "copy_style='none'" in status and said.count("copy_style='none'") == 1
    assert serialized["refused"] is None and serialized["bundle"] == [], serialized
    assert serialized["image"] == IMAGE and serialized["env"]["ENVPIN_IMAGE_ID"] == image_id

    # The cluster's side: what the notebook serialized, read back from its protobuf, run as the pod runs it.
    template = TaskTemplate.FromString((tmp_path / "template.pb").read_bytes())
    inputs = Inputs.FromString((tmp_path / "inputs.pb").read_bytes())
    # (a thread: the runner converts with asyncio.run, and waits on the engine)
    ran = await asyncio.to_thread(run_action, None, template, inputs, tmp_path / "action", docker=docker_client)
    where = json.loads(ran.outputs)
    pairs = list(zip(ran.args, serialized["args"], strict=True))  # as run, as serialized
    assert [a for a, s in pairs if a != s] == [a for a, s in pairs if "{{" in s]  # only the placeholders filled
    assert ran.args[0] == "a0" and "--tgz" not in ran.args
    assert ran.args[ran.args.index("mod") + 1] == "flows2_in_image.tasks"
    assert ran.image_id == image_id  # the container was of the pinned image
    assert where["double"] == 6, (where, ran.log)
    assert where["python"] == "/opt/python/bin/python" and where["prefix"] == "/opt/python"  # the image's Python
    assert where["image_id"] == image_id  # the pin's variables reached the pod
    assert where["container"] and where["file"] == "/opt/project/flows2_in_image/tasks.py"  # the image's code
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(ran.container)
