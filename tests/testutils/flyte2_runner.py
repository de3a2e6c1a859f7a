"""A stand-in for a Flyte 2 cluster's execution side, for one action: runs a serialized task as its pod does.

The Flyte 2 counterpart of ``flyte_runner.py``.  What is fake: the control
plane's part of starting an action (placing its ``inputs.pb``, filling the
task template's placeholders ``{{.input}}``, ``{{.outputPrefix}}``,
``{{.runName}}``, ``{{.actionName}}``, ...; the pod's variables
``FLYTE_INTERNAL_EXECUTION_PROJECT`` / ``_DOMAIN``, ``_U_ORG_NAME``,
``_U_RUN_BASE``) and a local folder as the blob store.

What is real: the execution.  The task template's own container ``args`` (as
serialized by ``with_runcontext(mode="remote", dry_run=True, ...)``) and its
``env`` are run as they are: Flyte 2's runtime ``a0`` unpacks the code bundle
(``--tgz``) if there is one, loads the task with the template's resolver and
its arguments (``mod M instance T``), reads ``inputs.pb``, runs the task and
writes ``outputs.pb`` or ``error.pb``, which are read back with Flyte's own
conversion.

Where: given a Docker client, in a container of ``template.container.image``
as a pod runs it: the image's own ``PATH``, ``PYTHONPATH`` and working folder,
the template's env on top, ``--network none``, the data folder mounted at
``/data``; the container is created through envpin's one container layer
(``envpin.host.dialect.create``) and removed afterwards.  Without one, as a
subprocess on the host (the venv's ``a0``) with the pod's working folder and
``python_path`` standing in for the image's code: quick, for the unit tier.

Measured with flyte 2.12.1, this needs no control plane for a task that calls
no other task: ``a0`` creates its controller (endpoint ``_U_EP_OVERRIDE``) but
contacts it only to start a sub-action.  A task that awaits another task
cannot run here: its controller enqueues the sub-action at the control plane
(``flyteidl2.workflow.QueueService/EnqueueAction``) and waits on
``flyteidl2.workflow.StateService/Watch``, retrying while nothing answers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Nothing listens there: a run that needed the control plane would hang on it (and time out), not reach one.
NO_CONTROL_PLANE = "localhost:9"
#: The data folder (the stand-in blob store) inside the action's container.
DATA = "/data"
#: On the action's containers, which are the test's own (not envpin's): what made them.
LABEL = "envpin-test.role"


class ActionFailed(Exception):
    """``a0`` wrote error.pb (Flyte's ExecutionError) or exited non-zero."""


@dataclass
class ActionRun:
    args: list[str]  #: the template's args with the placeholders filled in, as run
    env: dict[str, str]  #: the template's env plus the pod's variables (not the host's)
    outputs: Any  #: the task's return value, converted by Flyte
    log: str
    container: str | None = None  #: the id of the container it ran in (removed since); None: on the host
    image_id: str | None = None  #: the id of that container's image, as the engine says


def run_action(
    task: Any,
    template: Any,
    inputs: Any,
    workdir: str | os.PathLike,
    *,
    python_path: str | os.PathLike | None = None,
    docker: Any = None,
    timeout: float = 120,
) -> ActionRun:
    """Run ``template``'s container args for ``inputs``; return the task's outputs, converted by Flyte.

    ``template`` is the serialized ``TaskTemplate`` (``run.task_spec.task_template`` of a dry run) and
    ``inputs`` the dry run's ``run.inputs`` (or its proto, ``flyteidl2.task.common_pb2.Inputs``).
    ``task``, the Python task, gives the interface the outputs are converted with; None: the interface
    is read from the template, as a cluster's client does (Flyte's ``guess_interface``).  A ``--tgz`` in
    the args is the bundle ``copy_bundle_to`` wrote, which stands in for the blob store's copy.
    ``docker``: a Docker client, to run in a container of the template's image; else on the host, with
    ``python_path`` for what the image would put on ``PYTHONPATH`` (the host's own is not passed on).
    """
    from flyte._internal.runtime import convert, io
    from flyte.types._interface import guess_interface

    if docker is not None and python_path is not None:
        raise ValueError("python_path is for a run on the host: in a container, the image gives PYTHONPATH")
    work = Path(workdir)
    data, pod = work / "data", work / "pod"
    for folder in (data / "out", data / "base", *([pod] if docker is None else [])):
        folder.mkdir(parents=True, exist_ok=True)
    (data / "inputs.pb").write_bytes(getattr(inputs, "proto_inputs", inputs).SerializeToString())
    at = DATA if docker is not None else str(data)  # the data folder as the action sees it
    values = {
        "input": f"{at}/inputs.pb",
        "outputPrefix": f"{at}/out",
        "rawOutputDataPrefix": f"{at}/raw",
        "checkpointOutputPrefix": f"{at}/checkpoint",
        "prevCheckpointPrefix": '""',
        "runName": "envpin-run",
        "actionName": "a0",
        "runStartTime": "2026-01-01T00:00:00Z",
    }
    args = [_fill(a, values) for a in template.container.args]
    if "--tgz" in args:  # the bundle where copy_bundle_to wrote it (a relative path: from this process's folder)
        where = args.index("--tgz") + 1
        bundle = Path(args[where]).resolve()
        if docker is not None:  # in the data folder, as the pod finds it in the blob store
            (data / bundle.name).write_bytes(bundle.read_bytes())
        args[where] = f"{DATA}/{bundle.name}" if docker is not None else str(bundle)
    env = {e.key: e.value for e in template.container.env}
    env.update(
        _U_ORG_NAME="envpin", FLYTE_INTERNAL_EXECUTION_PROJECT="envpin", FLYTE_INTERNAL_EXECUTION_DOMAIN="development",
        _U_RUN_BASE=f"{at}/base", _U_EP_OVERRIDE=NO_CONTROL_PLANE,
    )  # fmt: skip
    if docker is not None:
        code, log, container, image_id = _in_container(docker, template.container.image, args, env, data, timeout)
    else:
        env.update(PATH=os.environ["PATH"], HOME=str(pod))
        if python_path is not None:
            env["PYTHONPATH"] = str(python_path)
        entry = Path(sys.executable).parent / args[0]  # the console script a Flyte 2 image runs (`a0`)
        done = subprocess.run(
            [str(entry), *args[1:]], cwd=pod, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        code, log, container, image_id = done.returncode, done.stdout + done.stderr, None, None
    out = data / "out"
    if (out / "error.pb").exists():
        error = asyncio.run(io.load_error(str(out / "error.pb")))
        raise ActionFailed(f"{template.id.name}: {error.code}: {error.message[-2000:]}")
    if code != 0 or not (out / "outputs.pb").exists():
        raise ActionFailed(f"{template.id.name}: a0 exited with {code}, no outputs.pb: {log[-2000:]}")
    interface = task.native_interface if task is not None else guess_interface(template.interface)
    outputs = asyncio.run(io.load_outputs(str(out / "outputs.pb")))
    value = asyncio.run(convert.convert_outputs_to_native(interface, outputs))
    return ActionRun(args=args, env=env, outputs=value, log=log, container=container, image_id=image_id)


def _in_container(
    docker: Any, image: str, args: list[str], env: dict[str, str], data: Path, timeout: float
) -> tuple[int, str, str, str]:
    """(exit code, log, container id, image id) of ``args`` in a container of ``image``, as a pod runs them."""
    from requests.exceptions import RequestException

    from envpin.host import dialect

    container = dialect.create(
        docker, image=image, command=args, environment=env, network_mode="none", labels={LABEL: "flyte2-action"},
        volumes={str(data): {"bind": DATA, "mode": "rw"}},
    )  # fmt: skip
    try:
        container.start()
        try:
            code, said = container.wait(timeout=timeout)["StatusCode"], ""
        except RequestException:  # the wait timed out: report what it said so far
            code, said = -1, f"(still running after {timeout} s)\n"
        log = said + container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    return code, log, container.id, container.attrs["Image"]


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{{.%s}}" % key, value).replace("{{ .%s }}" % key, value)
    return arg
