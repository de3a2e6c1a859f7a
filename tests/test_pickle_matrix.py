"""Environment identity from evidence, on the real engine.

1. The matrix is reproducible: a subset (Python 3.11 and 3.13, cloudpickle
   3.1.1 and 3.1.3) measured here, in containers of the real images, gives
   the outcomes the shipped ``pickle_matrix.json`` records.
2. The policy end to end: a host process with this venv's cloudpickle submits
   jobs to an image identical but for an older cloudpickle patch release
   (envpin-test/py311-cloudpickle311): in ``compatible`` mode the job runs in
   the image and its result comes back; in ``strict`` mode it is refused
   before any job runs, and no worker container is left behind.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from envpin.compat import policy
from envpin.jobs import envelope
from envpin.jobs.executor import ContainerExecutor
from testutils import containers
from tools import pickle_matrix

OLDER_CLOUDPICKLE = "envpin-test/py311-cloudpickle311:latest"


def test_the_quick_matrix_reproduces_the_shipped_data(docker_client):
    measured = pickle_matrix.measure(pickle_matrix.QUICK["pythons"], pickle_matrix.QUICK["picklers"], jobs=2)
    shipped = {(p["pickler"], tuple(p["sent"]), tuple(p["loaded"])): p for p in policy.matrix()["pairs"]}
    assert len(measured["pairs"]) == 16
    for pair in measured["pairs"]:
        was = shipped[(pair["pickler"], tuple(pair["sent"]), tuple(pair["loaded"]))]
        assert (pair["outcome"], pair.get("cases")) == (was["outcome"], was.get("cases")), pair
    outcomes = {(tuple(p["sent"]), tuple(p["loaded"])): p["outcome"] for p in measured["pairs"]}
    assert outcomes[("3.11", "3.1.3"), ("3.11", "3.1.1")] == "ok"  # a patch release apart: loads and runs
    assert outcomes[("3.11", "3.1.3"), ("3.13", "3.1.3")] == "crash"  # a minor apart: the process dies
    assert not docker_client.containers.list(
        all=True, filters={"label": "envpin.test=pickle-matrix"}, ignore_removed=True
    )


@pytest.fixture
def host_and_image_a_patch_release_apart():
    here = importlib.metadata.version("cloudpickle")
    assert here != "3.1.1", "this test needs the venv's cloudpickle to differ from the image's 3.1.1"
    verdict = policy.judge(
        policy.Side.of_envelope(envelope.sender_environment()), policy.Side("CPython", "3.11", "cloudpickle", "3.1.1")
    )
    assert verdict.status == "measured-ok", verdict.evidence  # the shipped matrix measured this pair
    return here


def test_compatible_mode_runs_a_job_across_a_cloudpickle_patch_release(
    host_and_image_a_patch_release_apart, docker_client, notebook_dir
):
    ex = ContainerExecutor(OLDER_CLOUDPICKLE, max_workers=1)
    try:
        assert ex.envelope == "compatible" and ex.mode == "container"
        probe = ex.submit(
            lambda x: (
                x * 2,
                __import__("cloudpickle").__version__,
                os.path.exists("/.dockerenv"),
                os.environ["ENVPIN_IMAGE_ID"],
            ),
            21,
        ).result(timeout=120)
        assert probe == (42, "3.1.1", True, docker_client.images.get(OLDER_CLOUDPICKLE).id)
    finally:
        ex.shutdown()
    assert not containers(docker_client, role="job")


def test_strict_mode_refuses_it_before_any_job_runs(host_and_image_a_patch_release_apart, docker_client, notebook_dir):
    ex = ContainerExecutor(OLDER_CLOUDPICKLE, max_workers=1, envelope="strict")
    try:
        future = ex.submit(lambda x: x * 2, 21)
        with pytest.raises(envelope.EnvelopeMismatch) as info:
            future.result(timeout=120)
        text = str(info.value)
        assert f"cloudpickle {host_and_image_a_patch_release_apart}" in text and "cloudpickle 3.1.1" in text
        assert "measured:" in text and "strict mode" in text
        assert not containers(docker_client, role="job", running=True)  # the worker was stopped at once
    finally:
        ex.shutdown()
    assert not containers(docker_client, role="job")


def test_strict_mode_from_the_environment_reaches_the_worker(
    host_and_image_a_patch_release_apart, docker_client, notebook_dir, monkeypatch
):
    # The worker judges the jobs it loads as strictly as the executor: ENVPIN_ENVELOPE is passed into it.
    monkeypatch.setenv("ENVPIN_ENVELOPE", "strict")
    ex = ContainerExecutor(OLDER_CLOUDPICKLE, max_workers=1)
    monkeypatch.setattr(ex, "_check_pickles_cross", lambda theirs: None)  # skip the host's early judgement
    try:
        with pytest.raises(envelope.EnvelopeMismatch) as info:
            ex.submit(lambda: 1).result(timeout=120)
        assert "Refusing to unpickle a job made under" in str(info.value) and "strict mode" in str(info.value)
    finally:
        ex.shutdown()
