"""envpin.adapters.flyte_adapter, offline: the image names Flyte gets."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "reference, flyte",
    [
        ("py", "py:latest"),
        ("localhost:5000/py", "localhost:5000/py:latest"),
        ("py:1", "py:1"),
        ("p@sha256:x", "p@sha256:x"),
    ],
)
def test_flyte_images_always_carry_a_tag(reference, flyte):
    from envpin.images.references import with_tag

    assert with_tag(reference) == flyte


def test_pinning_puts_the_pyflyte_plugin_on_child_processes_path_and_unpinning_takes_it_out(monkeypatch):
    """`!pyflyte` from a pinned notebook gets envpin's registration rules; after the pin its environment is as before."""
    import json
    import os

    pytest.importorskip("flytekit")
    from envpin import names
    from envpin.adapters.flyte_adapter import FlyteAdapter
    from envpin.session.stamping import Stamp

    monkeypatch.setenv("PYTHONPATH", "/mine")
    monkeypatch.delenv(names.FLYTE_STAMP, raising=False)
    adapter = FlyteAdapter()
    adapter.activate(Stamp(image="img:1", image_id="sha256:" + "e" * 64, code_in_image="/app"))
    try:
        assert os.environ["PYTHONPATH"].split(os.pathsep) == [names.FLYTE_HOOK_DIR, "/mine"]
        assert os.path.isfile(os.path.join(names.FLYTE_HOOK_DIR, "envpin_flyte_hook-1.dist-info", "entry_points.txt"))
        assert json.loads(os.environ[names.FLYTE_STAMP])["code_in_image"] == "/app"
        adapter.skip_bundle = False
        assert json.loads(os.environ[names.FLYTE_STAMP])["skip_bundle"] is False
        os.environ["PYTHONPATH"] += os.pathsep + "/added-later"
    finally:
        adapter.deactivate()
    assert os.environ["PYTHONPATH"] == os.pathsep.join(["/mine", "/added-later"])
    assert names.FLYTE_STAMP not in os.environ
