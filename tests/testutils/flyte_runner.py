"""A stand-in for a Flyte cluster's execution side: runs serialized tasks the way a Flyte pod does.

What is fake: FlyteAdmin and FlytePropeller, i.e. storing the registered
entities and walking a workflow's graph (``FlyteRunner.execute``): node after
node, each input bound from the workflow's inputs or an upstream node's
outputs, ``@dynamic`` tasks' returned job specs (``futures.pb``) walked the
same way, a local folder as the blob store (``file://``).

What is real: each task execution.  It runs the task template's own
container (``template.container.image``, its ``args`` with Flyte's
placeholders filled in: ``{{.input}}``, ``{{.outputPrefix}}``,
``{{ .remote_package_path }}`` for fast registration, ...), its ``env``, as
``docker run --network none -v DATA:/data IMAGE ARGS``: flytekit's own
``pyflyte-execute`` (and ``pyflyte-fast-execute``) in the image loads the
inputs written with flytekit's ``TypeEngine``, runs the task, and writes
``outputs.pb``, ``error.pb`` (a failed task still exits 0) or, for a
``@dynamic``, ``futures.pb``.  The outputs are read back with ``TypeEngine``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from flyteidl.admin.task_pb2 import TaskSpec
from flyteidl.admin.workflow_pb2 import WorkflowSpec
from flyteidl.core import dynamic_job_pb2, errors_pb2, literals_pb2
from flytekit.core.context_manager import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from flytekit.core.utils import load_proto_from_file, write_proto_to_file
from flytekit.models import literals as lit_models
from flytekit.models import types as type_models

LABEL = "envpin-test.role"


class TaskFailed(Exception):
    """A task wrote error.pb (flytekit's ErrorDocument) or its container exited non-zero."""


class FlyteRunner:
    """``FlyteRunner(docker_client, package_tgz, workdir).execute("flows.pipeline.pipeline", x=3)``."""

    def __init__(self, docker_client: Any, package: str | os.PathLike, workdir: str | os.PathLike):
        self.docker = docker_client
        self.data = Path(workdir) / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, Any] = {}  #: task name -> TaskTemplate (proto)
        self.workflows: dict[str, Any] = {}  #: workflow name -> WorkflowTemplate (proto)
        self.fast_bundle: str | None = None  #: container path of the fast-registration code bundle
        self.runs: list[dict[str, Any]] = []  #: one record per container: image, args, env, seconds
        self._ids = itertools.count(1)
        with tarfile.open(package) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read() if member.isfile() else None
                if data is None:
                    continue
                if member.name.endswith(".tar.gz"):  # the code bundle of fast registration
                    (self.data / "code.tar.gz").write_bytes(data)
                    self.fast_bundle = "file:///data/code.tar.gz"
                elif member.name.endswith(".pb"):
                    self._register(data)

    def _register(self, data: bytes) -> None:
        task = TaskSpec()
        try:
            task.ParseFromString(data)
            if task.template.id.name and task.template.HasField("container"):
                self.tasks[task.template.id.name] = task.template
                return
        except Exception:  # not a task: try the next kind
            pass
        workflow = WorkflowSpec()
        try:
            workflow.ParseFromString(data)
            if workflow.template.id.name and workflow.template.nodes:
                self.workflows[workflow.template.id.name] = workflow.template
        except Exception:  # a launch plan: not needed to run
            pass

    # ---- executing ----------------------------------------------------------------------

    def execute(self, name: str, **inputs: Any) -> dict[str, Any]:
        """Run task or workflow ``name`` with Python ``inputs``; return its outputs as Python values."""
        template, outputs = self._execute(name, inputs)
        return self._to_python(template.interface.outputs, outputs)

    def execute_to_file(self, name: str, path: str | os.PathLike, **inputs: Any) -> None:
        """Run ``name`` and write its outputs where a client would fetch them (outputs.pb, a LiteralMap)."""
        _, outputs = self._execute(name, inputs)
        write_proto_to_file(literals_pb2.LiteralMap(literals=outputs), str(path))

    def _execute(self, name: str, inputs: dict[str, Any]):
        """(template, output literals) of one execution of task or workflow ``name``."""
        template = self.tasks.get(name) or self.workflows.get(name)
        if template is None:
            raise KeyError(f"{name} is not in the package (have: {sorted(self.tasks) + sorted(self.workflows)})")
        literals = self._to_literals(template.interface.inputs, inputs)
        if name in self.tasks:
            return template, self._run_task(template, literals)
        return template, self._run_graph(template.nodes, template.outputs, literals, self.tasks)

    def _run_graph(self, nodes, output_bindings, inputs: dict, tasks: dict) -> dict:
        """Walk ``nodes`` (a workflow's or a dynamic job's) once each upstream node has run."""
        results: dict[str, dict] = {"": inputs, "start-node": inputs}
        pending = list(nodes)
        while pending:
            ready = [n for n in pending if all(self._bound(b.binding, results, probe=True) for b in n.inputs)]
            if not ready:
                raise RuntimeError(f"flyte runner: nodes {[n.id for n in pending]} can never run")
            for node in ready:
                pending.remove(node)
                node_inputs = {b.var: self._bound(b.binding, results) for b in node.inputs}
                task = tasks.get(node.task_node.reference_id.name) or self.tasks[node.task_node.reference_id.name]
                results[node.id] = self._run_task(task, node_inputs)
        return {b.var: self._bound(b.binding, results) for b in output_bindings}

    @staticmethod
    def _bound(binding, results: dict, probe: bool = False):
        kind = binding.WhichOneof("value")
        if kind == "scalar":
            return True if probe else literals_pb2.Literal(scalar=binding.scalar)
        if kind == "promise":
            node = results.get(binding.promise.node_id)
            if probe:
                return node is not None
            return node[binding.promise.var]
        if kind == "collection":
            items = [FlyteRunner._bound(b, results, probe) for b in binding.collection.bindings]
            return (
                all(items) if probe else literals_pb2.Literal(collection=literals_pb2.LiteralCollection(literals=items))
            )
        raise NotImplementedError(f"flyte runner: binding of kind {kind}")

    def _run_task(self, template, inputs: dict) -> dict:
        """One task execution, in a container of the template's image, as a Flyte pod runs it."""
        run_id = f"run-{next(self._ids)}"
        folder = self.data / run_id
        (folder / "out").mkdir(parents=True)
        write_proto_to_file(literals_pb2.LiteralMap(literals=inputs), str(folder / "inputs.pb"))
        where = f"/data/{run_id}"
        values = {
            "input": f"{where}/inputs.pb",
            "outputPrefix": f"{where}/out",
            "rawOutputDataPrefix": f"{where}/raw",
            "checkpointOutputPrefix": f"{where}/checkpoint",
            "prevCheckpointPrefix": '""',
            "remote_package_path": self.fast_bundle or "",
        }
        args = [_fill(a, values) for a in template.container.args]
        env = {e.key: e.value for e in template.container.env}
        env.update(FLYTE_INTERNAL_EXECUTION_ID=run_id, FLYTE_INTERNAL_EXECUTION_PROJECT="envpin",
                   FLYTE_INTERNAL_EXECUTION_DOMAIN="development", FLYTE_INTERNAL_TASK_NAME=template.id.name)  # fmt: skip
        record = {"task": template.id.name, "image": template.container.image, "args": args, "env": env}
        self.runs.append(record)
        started = time.monotonic()
        container = self.docker.containers.run(
            template.container.image, args, detach=True, environment=env, network_mode="none",
            volumes={str(self.data): {"bind": "/data", "mode": "rw"}}, labels={LABEL: "flyte-task"},
        )  # fmt: skip
        try:
            code = container.wait(timeout=600)["StatusCode"]
            logs = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        record.update(seconds=time.monotonic() - started, logs=logs)
        out = folder / "out"
        if (out / "error.pb").exists():
            error = load_proto_from_file(errors_pb2.ErrorDocument, str(out / "error.pb"))
            raise TaskFailed(f"task {template.id.name} failed in {template.container.image}: {error.error.message}")
        if code != 0:
            raise TaskFailed(
                f"task {template.id.name} exited with {code} in {template.container.image}: {logs[-2000:]}"
            )
        if (out / "futures.pb").exists():  # a @dynamic: it returned the rest of its graph
            spec = load_proto_from_file(dynamic_job_pb2.DynamicJobSpec, str(out / "futures.pb"))
            record["dynamic"] = [t.id.name for t in spec.tasks]
            tasks = {t.id.name: t for t in spec.tasks}
            return self._run_graph(spec.nodes, spec.outputs, dict(inputs), tasks)
        return dict(load_proto_from_file(literals_pb2.LiteralMap, str(out / "outputs.pb")).literals)

    # ---- conversions ----------------------------------------------------------------------

    @staticmethod
    def _to_literals(interface, values: dict[str, Any]) -> dict:
        ctx = FlyteContextManager.current_context()
        out = {}
        for name, var in interface.variables.items():
            lt = type_models.LiteralType.from_flyte_idl(var.type)
            py = TypeEngine.guess_python_type(lt)
            out[name] = TypeEngine.to_literal(ctx, values[name], py, lt).to_flyte_idl()
        return out

    @staticmethod
    def _to_python(interface, literals: dict) -> dict[str, Any]:
        ctx = FlyteContextManager.current_context()
        out = {}
        for name, var in interface.variables.items():
            lt = type_models.LiteralType.from_flyte_idl(var.type)
            out[name] = TypeEngine.to_python_value(
                ctx, lit_models.Literal.from_flyte_idl(literals[name]), TypeEngine.guess_python_type(lt)
            )
        return out


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{{.%s}}" % key, value).replace("{{ .%s }}" % key, value)
    return arg


def cleanup(workdir: str | os.PathLike) -> None:
    shutil.rmtree(Path(workdir) / "data", ignore_errors=True)
