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

Where: a subprocess on the host (the venv's ``a0``) with the pod's working
folder, not a container of ``template.container.image``: no test image
carries ``flyte`` 2 (tools/images.py).  Measured with flyte 2.12.1, this needs
no control plane for a task that calls no other task: ``a0`` creates its
controller (endpoint ``_U_EP_OVERRIDE``) but contacts it only to start a
sub-action.  A task that awaits another task cannot run here: its controller
enqueues the sub-action at the control plane
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


class ActionFailed(Exception):
    """``a0`` wrote error.pb (Flyte's ExecutionError) or exited non-zero."""


@dataclass
class ActionRun:
    args: list[str]  #: the template's args with the placeholders filled in, as run
    env: dict[str, str]  #: the template's env plus the pod's variables (not the host's)
    outputs: Any  #: the task's return value, converted by Flyte
    log: str


def run_action(
    task: Any,
    template: Any,
    inputs: Any,
    workdir: str | os.PathLike,
    *,
    python_path: str | os.PathLike | None = None,
    timeout: float = 120,
) -> ActionRun:
    """Run ``template``'s container args for ``inputs`` (``flyte`` Inputs); return the outputs of ``task``.

    ``template`` is the serialized ``TaskTemplate`` (``run.task_spec.task_template`` of a dry run) and
    ``inputs`` the dry run's ``run.inputs``; ``task`` (the Python task) gives the interface the outputs are
    converted with.  A ``--tgz`` in the args is the bundle ``copy_bundle_to`` wrote, which stands in for
    the blob store's copy.  ``python_path``: what the image puts on
    ``PYTHONPATH`` (the code it holds); the host's own ``PYTHONPATH`` is not passed on.
    """
    from flyte._internal.runtime import convert, io

    work = Path(workdir)
    data, pod = work / "data", work / "pod"
    for folder in (data / "out", data / "base", pod):
        folder.mkdir(parents=True, exist_ok=True)
    (data / "inputs.pb").write_bytes(inputs.proto_inputs.SerializeToString())
    values = {
        "input": str(data / "inputs.pb"),
        "outputPrefix": str(data / "out"),
        "rawOutputDataPrefix": str(data / "raw"),
        "checkpointOutputPrefix": str(data / "checkpoint"),
        "prevCheckpointPrefix": '""',
        "runName": "envpin-run",
        "actionName": "a0",
        "runStartTime": "2026-01-01T00:00:00Z",
    }
    args = [_fill(a, values) for a in template.container.args]
    if "--tgz" in args:  # the bundle where copy_bundle_to wrote it (a relative path: from this process's folder)
        at = args.index("--tgz") + 1
        args[at] = str(Path(args[at]).resolve())
    env = {e.key: e.value for e in template.container.env}
    env.update(
        PATH=os.environ["PATH"], HOME=str(pod), _U_ORG_NAME="envpin", FLYTE_INTERNAL_EXECUTION_PROJECT="envpin",
        FLYTE_INTERNAL_EXECUTION_DOMAIN="development", _U_RUN_BASE=str(data / "base"), _U_EP_OVERRIDE=NO_CONTROL_PLANE,
    )  # fmt: skip
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    entry = Path(sys.executable).parent / args[0]  # the console script a Flyte 2 image runs (`a0`)
    done = subprocess.run(
        [str(entry), *args[1:]], cwd=pod, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    log = done.stdout + done.stderr
    out = data / "out"
    if (out / "error.pb").exists():
        error = asyncio.run(io.load_error(str(out / "error.pb")))
        raise ActionFailed(f"{template.id.name}: {error.code}: {error.message[-2000:]}")
    if done.returncode != 0 or not (out / "outputs.pb").exists():
        raise ActionFailed(f"{template.id.name}: a0 exited with {done.returncode}, no outputs.pb: {log[-2000:]}")
    outputs = asyncio.run(io.load_outputs(str(out / "outputs.pb")))
    value = asyncio.run(convert.convert_outputs_to_native(task.native_interface, outputs))
    return ActionRun(args=args, env=env, outputs=value, log=log)


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{{.%s}}" % key, value).replace("{{ .%s }}" % key, value)
    return arg
