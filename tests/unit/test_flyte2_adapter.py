"""envpin.adapters.flyte2_adapter with the real ``flyte`` 2.x SDK, offline.

Serialized as a run would be (``with_runcontext(mode="remote", dry_run=True, copy_bundle_to=...)``:
the task spec and the code bundle Flyte would upload, with no cluster).  What the image holds is told
to ``code_in_image.remember`` (no engine in this tier).

Run from its serialized form: the task template's own pod command (``a0 ... --resolver ... mod M
instance T``, Flyte 2's runtime) with its env, as a subprocess on the host
(tests/testutils/flyte2_runner.py), from the image's code (``copy_style="none"``) or the bundle.
Measured with flyte 2.12.1, a task that calls no other task needs no control plane: ``a0`` creates
its controller but contacts it only to start a sub-action.  The same command in a container of its
image (``envpin-test/flyte2-code``, which carries ``flyte`` 2 and the code) is the engine tier's
tests/test_flyte2_e2e.py.

What is not run here, nor anywhere in the suite: a task that awaits another task, whose controller
enqueues the sub-action at Flyte 2's control plane (``flyteidl2.workflow.QueueService/EnqueueAction``,
then ``StateService/Watch``), which no stand-in here provides: ``a0`` retries it until killed.
``flyte.deploy`` needs a control-plane client even for a dry run: its rule is checked at
``_deploy.apply``, up to where the client is asked for.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings

import pytest

flyte = pytest.importorskip("flyte")

from envpin.adapters import code_in_image  # noqa: E402
from envpin.adapters.flyte2_adapter import Flyte2Adapter, LocalRunOutsideImage, LocalRunWarning  # noqa: E402
from envpin.session.stamping import ImageConflictWarning, Stamp  # noqa: E402

PIN = "registry.example/code:1"
IMAGE_ID = "sha256:" + "d" * 64


def _stamp(**kw) -> Stamp:
    return Stamp(image=PIN, image_id=IMAGE_ID, code_in_image="/opt/project", **kw)


@pytest.fixture
def pinned(tmp_path, monkeypatch):
    """A Flyte 2 adapter active with the pin; a project folder as flyte's root; ``load(name, text)`` imports a module."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    flyte.init(root_dir=tmp_path)
    code_in_image.reset()
    adapter = Flyte2Adapter()
    loaded = []

    def pin(**kw):
        adapter.deactivate()
        adapter.activate(_stamp(**kw))
        return adapter

    def load(name, text):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
        loaded.append(name)
        return importlib.import_module(name)

    pin()
    try:
        yield pin, load, tmp_path
    finally:
        adapter.deactivate()
        code_in_image.reset()
        for name in loaded:
            sys.modules.pop(name, None)


ENVS = f"""
    import flyte

    auto = flyte.TaskEnvironment(name="auto_env")
    none = flyte.TaskEnvironment(name="none_env", image=None, env_vars={{"ENVPIN_IMAGE": "mine", "A": "1"}})
    own = flyte.TaskEnvironment(name="own_env", image="registry.example/other:2")
    based = flyte.TaskEnvironment(name="based_env", image=flyte.Image.from_base("{PIN}"))
    built = flyte.TaskEnvironment(name="built_env", image=flyte.Image.from_base("{PIN}").clone(name="mine", extendable=True).with_pip_packages("x"))
"""


def test_new_environments_get_the_pin_and_variables_and_own_images_are_kept_with_the_warning(pinned):
    _, load, _ = pinned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = load("envs_a", ENVS)
    assert m.auto.image == PIN and m.auto.env_vars["ENVPIN_IMAGE_ID"] == IMAGE_ID
    assert m.none.image == PIN and m.none.env_vars["ENVPIN_IMAGE"] == "mine" and m.none.env_vars["A"] == "1"
    assert m.own.image == "registry.example/other:2" and not m.own.env_vars
    assert m.based.env_vars["ENVPIN_IMAGE"] == PIN  # the pin as a flyte.Image, used as it is
    assert m.built.image.base_image == PIN and not m.built.env_vars  # the user's image on top of the pin
    conflicts = [str(w.message) for w in caught if issubclass(w.category, ImageConflictWarning)]
    assert len(conflicts) == 1 and "own_env" in conflicts[0] and "registry.example/other:2" in conflicts[0]


TASKS = """
    import flyte

    env = flyte.TaskEnvironment(name="{env}")

    @env.task
    async def double(x: int) -> int:
        return 2 * x
"""


def _dry_run(task, tmp_path, **kw):
    out = tmp_path / "bundle"
    out.mkdir(exist_ok=True)
    run = flyte.with_runcontext(mode="remote", dry_run=True, copy_bundle_to=out, **kw).run(task, x=3)
    template = run.task_spec.task_template
    return template, run.code_bundle, sorted(p.name for p in out.iterdir())


def test_a_run_of_an_environment_whose_image_holds_the_code_has_no_bundle(pinned, capsys):
    _, load, tmp_path = pinned
    code_in_image.remember(IMAGE_ID, "/opt/project", {"flows_b": None})
    m = load("flows_b", TASKS.format(env="code_env"))
    template, bundle, files = _dry_run(m.double, tmp_path)  # copy_style: Flyte's default, loaded_modules
    args = list(template.container.args)
    assert template.container.image == PIN
    assert {e.key: e.value for e in template.container.env}["ENVPIN_IMAGE_ID"] == IMAGE_ID
    assert bundle is None and files == [] and "--tgz" not in args
    assert args[args.index("mod") + 1] == "flows_b" and args[args.index("--version") + 1].startswith("envpin-")
    assert capsys.readouterr().out.count("copy_style='none'") == 1


def test_a_mixed_run_keeps_the_bundle(pinned):
    _, load, tmp_path = pinned
    code_in_image.remember(IMAGE_ID, "/opt/project", {"flows_c": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageConflictWarning)
        m = load(
            "flows_c",
            textwrap.dedent(TASKS.format(env="code_env_c"))
            + '\nother = flyte.TaskEnvironment(name="other_c", image="registry.example/other:2", depends_on=[env])\n'
            "\n@other.task\nasync def outer(x: int) -> int:\n    return await double(x)\n",
        )
    template, bundle, files = _dry_run(m.outer, tmp_path, interactive_mode=False)
    assert template.container.image == "registry.example/other:2"
    assert bundle is not None and len(files) == 1 and "--tgz" in list(template.container.args)


def test_a_false_claim_is_refused_before_the_bundle_naming_the_module(pinned):
    _, load, tmp_path = pinned
    code_in_image.remember(IMAGE_ID, "/opt/project", {"flows_d": "not found"})
    m = load("flows_d", TASKS.format(env="code_env_d"))
    with pytest.raises(code_in_image.CodeNotInImage, match="Module 'flows_d' is not in image"):
        _dry_run(m.double, tmp_path)
    assert not list((tmp_path / "bundle").iterdir())


def test_skip_bundle_false_leaves_flytes_copy_style(pinned):
    pin, load, tmp_path = pinned
    pin().skip_bundle = False
    m = load("flows_e", TASKS.format(env="code_env_e"))
    template, bundle, files = _dry_run(m.double, tmp_path, interactive_mode=False)
    assert bundle is not None and len(files) == 1


def test_local_runs_outside_the_image_are_warned_about_and_refused_when_strict(pinned):
    pin, load, _ = pinned
    m = load("flows_f", TASKS.format(env="local_env"))
    with pytest.warns(LocalRunWarning, match="local mode"):
        run = flyte.with_runcontext(mode="local").run(m.double, x=4)
    assert run.outputs()[0] == 8
    pin(strict=True)
    with pytest.raises(LocalRunOutsideImage, match="not in the pinned image"):
        flyte.with_runcontext(mode="local").run(m.double, x=4)


def test_unpinning_restores_flyte(pinned):
    pin, _, _ = pinned
    adapter = pin()
    adapter.deactivate()
    env = flyte.TaskEnvironment(name="after")
    assert env.image == "auto" and not env.env_vars


def test_in_a_kernel_of_the_pinned_image_local_runs_are_in_the_image_and_the_status_says_so(pinned, monkeypatch):
    """As a Containerized Python kernel of the pin sees itself (the image's id, a container marker): strict, yet run."""
    from envpin import names

    pin, load, tmp_path = pinned
    monkeypatch.setattr(names, "CONTAINER_MARKERS", (str(tmp_path),))
    monkeypatch.setenv(names.IMAGE_ID, IMAGE_ID)
    adapter = pin(strict=True)
    assert "local runs are in the image (this kernel)" in adapter.summary()
    m = load("flows_g", TASKS.format(env="in_image_env"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LocalRunWarning)
        run = flyte.with_runcontext(mode="local").run(m.double, x=5)
    assert run.outputs()[0] == 10


# --------------------------------------------------------------------------------------
# the serialized task run as its pod runs it (tests/testutils/flyte2_runner.py: `a0` on the host; in a container
# of the image: tests/test_flyte2_e2e.py)
# --------------------------------------------------------------------------------------

WHERE = """
    import os

    import flyte

    env = flyte.TaskEnvironment(name="{env}")

    @env.task
    async def where(x: int) -> str:
        return f"{{2 * x}} {{__file__}} {{os.environ.get('ENVPIN_IMAGE')}}"
"""


def test_the_serialized_task_of_an_image_with_the_code_runs_from_the_images_code(pinned):
    """copy_style='none': the pod's `a0` has no bundle; it loads the module from the image's code (its
    PYTHONPATH, a copy of the notebook's module elsewhere) and runs with the template's ENVPIN_ variables.
    The outputs are converted with the interface read from the serialized template, as a cluster's client does."""
    from tests.testutils.flyte2_runner import run_action

    _, load, tmp_path = pinned
    code_in_image.remember(IMAGE_ID, "/opt/project", {"flows_h": None})
    m = load("flows_h", WHERE.format(env="code_env_h"))
    image_code = tmp_path / "image_project"
    image_code.mkdir()
    (image_code / "flows_h.py").write_text((tmp_path / "flows_h.py").read_text())
    out = tmp_path / "bundle"
    out.mkdir()
    run = flyte.with_runcontext(mode="remote", dry_run=True, copy_bundle_to=out).run(m.where, x=3)
    template = run.task_spec.task_template
    assert "--tgz" not in list(template.container.args) and not list(out.iterdir())
    sent = type(template).FromString(template.SerializeToString())  # as the cluster receives it: no Python task
    ran = run_action(None, sent, run.inputs.proto_inputs, tmp_path / "pod_h", python_path=image_code)
    assert ran.args[0] == "a0" and ran.env["ENVPIN_IMAGE_ID"] == IMAGE_ID
    assert ran.outputs == f"6 {image_code / 'flows_h.py'} {PIN}", ran.log


def test_the_serialized_task_with_a_bundle_runs_from_the_bundle(pinned):
    """skip_bundle=False: the pod's `a0` unpacks the run's bundle (--tgz) into its folder and loads the task from it."""
    from tests.testutils.flyte2_runner import run_action

    pin, load, tmp_path = pinned
    pin().skip_bundle = False
    m = load("flows_i", WHERE.format(env="bundle_env_i"))
    out = tmp_path / "bundle"
    out.mkdir()
    run = flyte.with_runcontext(mode="remote", dry_run=True, copy_bundle_to=out, interactive_mode=False).run(
        m.where, x=4
    )
    template = run.task_spec.task_template
    assert "--tgz" in list(template.container.args) and len(list(out.iterdir())) == 1
    ran = run_action(m.where, template, run.inputs, tmp_path / "pod_i")
    assert ran.outputs == f"8 {tmp_path / 'pod_i' / 'pod' / 'flows_i.py'} {PIN}", ran.log
