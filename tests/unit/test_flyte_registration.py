"""envpin.adapters.flyte_registration with the real flytekit, offline: which tasks lose fast registration's wrapper.

What the image holds is told to ``code_in_image.remember`` here (no engine in this tier);
``tests/test_flyte_e2e.py`` asks real images and runs the tasks in them.
"""

from __future__ import annotations

import importlib
import sys
import tarfile
import textwrap
import warnings
from collections import OrderedDict

import pytest

pytest.importorskip("flytekit")

from envpin.adapters import code_in_image
from envpin.adapters.flyte_registration import BundleWarning, Registration
from envpin.session.stamping import Stamp

PIN = "registry.example/code:1"
STAMP = Stamp(image=PIN, image_id="sha256:" + "c" * 64, code_in_image="/opt/project")

MODULES = {
    "inimage/__init__.py": "",
    "inimage/tasks.py": f"""
        from flytekit import task

        @task(container_image="{PIN}")
        def shout(word: str) -> str:
            return word.upper()
    """,
    "mine/__init__.py": "",
    "mine/flows.py": f"""
        from flytekit import ContainerTask, kwtypes, task, workflow
        from inimage.tasks import shout

        @task(container_image="registry.example/other:2")
        def exclaim(word: str) -> str:
            return word + "!"

        @task(container_image="{PIN}")
        def local_only(word: str) -> str:
            return word

        raw = ContainerTask(name="raw", image="registry.example/tool:3", command=["echo", "{{{{.inputs.word}}}}"],
                            inputs=kwtypes(word=str))

        @workflow
        def mixed(word: str) -> str:
            return exclaim(word=shout(word=word))

        @workflow
        def all_in_image(word: str) -> str:
            return shout(word=shout(word=word))
    """,
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    for name, text in MODULES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code_in_image.reset()
    code_in_image.remember(STAMP.image_id, "/opt/project", {"inimage.tasks": None, "mine.flows": "not found"})
    registration = Registration(STAMP)
    registration.install()
    try:
        module = importlib.import_module("mine.flows")
        module.registration = registration
        yield module
    finally:
        registration.uninstall()
        code_in_image.reset()
        for name in [m for m in sys.modules if m.split(".")[0] in ("inimage", "mine")]:
            del sys.modules[name]


def _settings(fast: bool = True):
    from flytekit.configuration import FastSerializationSettings, ImageConfig, SerializationSettings

    return SerializationSettings(
        image_config=ImageConfig.auto(img_name=PIN),
        fast_serialization_settings=FastSerializationSettings(
            enabled=fast, destination_dir="/root", distribution_location="s3://bucket/code.tar.gz"
        ),
    )


def _args(entity) -> dict[str, list[str]]:
    from flytekit.tools.translator import get_serializable

    entities: OrderedDict = OrderedDict()
    get_serializable(entities, _settings(), entity)
    return {
        spec.template.id.name.rsplit(".", 1)[-1]: list(spec.template.container.args or [])
        for spec in entities.values()
        if getattr(getattr(spec, "template", None), "container", None) is not None
    }


def test_a_task_from_the_image_loses_the_wrapper_and_the_others_keep_it(project):
    args = _args(project.mixed)
    assert args["shout"][0] == "pyflyte-execute" and "inimage.tasks" in args["shout"]
    assert args["exclaim"][0] == "pyflyte-fast-execute" and "s3://bucket/code.tar.gz" in args["exclaim"]


def test_a_task_in_the_pin_whose_module_the_image_lacks_is_refused_naming_it(project):
    with pytest.raises(code_in_image.CodeNotInImage, match="Module 'mine.flows' is not in image") as caught:
        _args(project.local_only)
    assert "skip_bundle = False" in str(caught.value)


def test_skip_bundle_false_restores_flytekits_behaviour(project):
    project.registration.skip_bundle = False
    args = _args(project.mixed)
    assert args["shout"][0] == "pyflyte-fast-execute" and args["exclaim"][0] == "pyflyte-fast-execute"


def test_a_raw_container_task_registered_with_a_bundle_is_warned_about(project):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _args(project.raw)
    (warning,) = [w for w in caught if issubclass(w.category, BundleWarning)]
    assert "ContainerTask 'raw'" in str(warning.message) and "registry.example/tool:3" in str(warning.message)


def test_package_with_every_task_in_the_image_has_no_archive_and_says_so_once(project, tmp_path, capsys, monkeypatch):
    from flytekit.constants import CopyFileDetection
    from flytekit.core.context_manager import FlyteEntities
    from flytekit.tools.fast_registration import FastPackageOptions
    from flytekit.tools.repo import serialize_and_package

    monkeypatch.setattr(FlyteEntities, "entities", [project.shout])  # what loading only 'inimage' would leave
    serialize_and_package(
        ["inimage"], _settings(), source=str(tmp_path), output=str(tmp_path / "in.tgz"),
        fast_options=FastPackageOptions([], copy_style=CopyFileDetection.ALL),
    )  # fmt: skip
    said = capsys.readouterr().out
    with tarfile.open(tmp_path / "in.tgz") as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith(".tar.gz")], names
    assert said.count("no files scanned or uploaded") == 1 and "inimage.tasks" in said


def test_fast_package_uploads_nothing_when_the_registration_is_all_in_the_image(project, tmp_path, capsys):
    from flytekit.core.context_manager import FlyteEntities
    from flytekit.remote.remote import FlyteRemote

    from envpin.adapters import flyte_registration

    token = flyte_registration._scope.set(flyte_registration._tasks_of(project.all_in_image))
    try:
        digest, url = FlyteRemote.fast_package(None, tmp_path)  # type: ignore[arg-type]  # never reaches the remote
    finally:
        flyte_registration._scope.reset(token)
    assert url == "" and len(digest) == 16
    assert "no files scanned or uploaded" in capsys.readouterr().out
    assert FlyteEntities.entities  # the loaded tasks: what pyflyte register judges instead


def test_register_script_of_a_workflow_all_in_the_image_uploads_nothing(project, tmp_path, capsys):
    """FlyteRemote.register_script, which would tar and upload the module (script mode) or the folder (fast):
    with every task from the image, neither happens, and the workflow is registered with a version all the same.
    The remote's upload and registration calls are replaced by recorders: no Flyte cluster here."""
    from flytekit.configuration import Config
    from flytekit.remote.remote import FlyteRemote

    remote = FlyteRemote(Config.for_sandbox(), default_project="p", default_domain="d")
    registered = []

    def no_upload(*args, **kwargs):
        raise AssertionError(f"uploaded {args}")

    remote.upload_file = no_upload  # type: ignore[method-assign]
    remote.register_workflow = lambda entity, settings, version, *a, **k: registered.append((entity, settings, version))  # type: ignore[method-assign]
    remote.register_script(project.all_in_image, source_path=str(tmp_path), module_name="mine.flows")
    ((entity, settings, version),) = registered
    assert entity is project.all_in_image and version
    assert "no files scanned or uploaded" in capsys.readouterr().out
    assert _args_with(settings, project.all_in_image)["shout"][0] == "pyflyte-execute"


def _args_with(settings, entity) -> dict[str, list[str]]:
    from flytekit.tools.translator import get_serializable

    entities: OrderedDict = OrderedDict()
    get_serializable(entities, settings, entity)
    return {
        spec.template.id.name.rsplit(".", 1)[-1]: list(spec.template.container.args or [])
        for spec in entities.values()
        if getattr(getattr(spec, "template", None), "container", None) is not None
    }


def test_a_false_claim_in_a_mixed_registration_is_refused_before_the_bundle_is_uploaded(project, tmp_path):
    """pyflyte register uploads the bundle (FlyteRemote.fast_package) before serializing: the claim is checked there."""
    from flytekit.remote.remote import FlyteRemote

    from envpin.adapters import flyte_registration

    token = flyte_registration._scope.set([project.exclaim, project.local_only])
    try:
        with pytest.raises(code_in_image.CodeNotInImage, match="'mine.flows'"):
            FlyteRemote.fast_package(None, tmp_path)  # type: ignore[arg-type]  # refused before the remote is used
    finally:
        flyte_registration._scope.reset(token)
