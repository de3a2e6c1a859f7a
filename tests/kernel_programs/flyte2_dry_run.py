"""Flyte 2 (``flyte``) environments imported after %use_image, serialized as a remote run would be, offline
(``with_runcontext(mode="remote", dry_run=True, copy_bundle_to=...)``): ``flyte2`` holds the task template's
image, environment and arguments, the files of the code bundle Flyte would upload, and the warnings; the run as
a cluster would receive it (its task template and inputs, protobuf) is written to ``template.pb`` and ``inputs.pb``."""

import importlib
import pathlib
import warnings

import flyte

MODULE = ...  # the module with a TaskEnvironment and its task `double`
flyte.init(root_dir=pathlib.Path.cwd())
out = pathlib.Path("bundle")
out.mkdir(exist_ok=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tasks = importlib.import_module(MODULE)
    try:
        run = flyte.with_runcontext(mode="remote", dry_run=True, copy_bundle_to=out).run(tasks.double, x=3)
    except Exception as exc:  # the refusal, reported as data
        run, refused = None, f"{type(exc).__name__}: {exc}"
    else:
        refused = None
template = run.task_spec.task_template if run is not None else None
if run is not None:
    pathlib.Path("template.pb").write_bytes(template.SerializeToString())
    pathlib.Path("inputs.pb").write_bytes(run.inputs.proto_inputs.SerializeToString())
flyte2 = {
    "image": template.container.image if template else None,
    "env": {e.key: e.value for e in template.container.env} if template else {},
    "args": list(template.container.args) if template else [],
    "bundle": sorted(p.name for p in out.iterdir()),
    "refused": refused,
    "warnings": [f"{type(w.message).__name__}: {w.message}" for w in caught],
}
