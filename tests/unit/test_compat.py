"""The pickle-compatibility policy (envpin.compat.policy) and the measured matrix it reads, without an engine.

The matrix itself is measured in containers by ``python -m tools.pickle_matrix``
(tests/test_pickle_matrix.py re-measures a subset and compares); here: that
the shipped data covers what the README promises, and that the envelope,
``compare`` and the executor apply the policy the README documents.
"""

from __future__ import annotations

import warnings

import pytest

from envpin.compat import fingerprints, policy
from envpin.compat.policy import Side
from envpin.jobs import envelope


def env(python: str, version: str, pickler: str = "cloudpickle", patch: str = "0") -> dict:
    """An envelope header's ``env`` for CPython ``python`` with ``pickler`` ``version``."""
    return {
        "python": f"{python}.{patch}",
        "python_minor": python,
        "implementation": "CPython",
        "pickler": pickler,
        "pickler_version": version,
        "image": None,
        "image_id": None,
    }


@pytest.fixture(autouse=True)
def _fresh_policy_state(monkeypatch):
    monkeypatch.delenv("ENVPIN_ENVELOPE", raising=False)
    policy.reset()
    envelope.reset()


# ---- the data ---------------------------------------------------------------------------------------


def test_the_shipped_matrix_covers_the_pythons_and_picklers_it_promises():
    data = policy.matrix()
    assert data["command"] == "python -m tools.pickle_matrix"
    cloud = {(e["python"], e["version"]) for e in data["environments"]["cloudpickle"]}
    dill = {(e["python"], e["version"]) for e in data["environments"]["dill"]}
    for python in ("3.9", "3.11", "3.13"):
        assert {(python, v) for v in ("2.2.1", "3.0.0", "3.1.0", "3.1.1", "3.1.2", "3.1.3")} <= cloud
        assert (python, "0.4.1") in dill
    pairs = data["pairs"]
    assert len(pairs) == len(cloud) ** 2 + len(dill) ** 2  # every sender x every receiver, per pickler
    assert {p["outcome"] for p in pairs} <= {"ok", "error", "wrong", "crash"}


def test_every_measured_pair_is_judged_as_it_was_measured():
    for p in policy.matrix()["pairs"]:
        sent = Side("CPython", p["sent"][0], p["pickler"], p["sent"][1])
        here = Side("CPython", p["loaded"][0], p["pickler"], p["loaded"][1])
        verdict = policy.judge(sent, here)
        if sent == here:
            assert verdict.status == "same"
        else:
            assert verdict.status == ("measured-ok" if p["outcome"] == "ok" else "measured-broken"), p


# ---- the case: a cloudpickle patch release apart -----------------------------------------------


def test_a_cloudpickle_patch_release_apart_passes_compatible_and_is_refused_strict():
    sent, here = env("3.11", "3.1.3", patch="7"), env("3.11", "3.1.1", patch="2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured to work: not even a warning
        envelope.check(sent, here, "job")
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        envelope.check(sent, here, "job", mode="strict")
    text = str(info.value)
    assert "measured: pickles made under Python 3.11 with cloudpickle 3.1.3 load and run correctly" in text
    assert "strict mode" in text and "compatible mode would allow it" in text


def test_strict_mode_comes_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv("ENVPIN_ENVELOPE", "strict")
    with pytest.raises(envelope.EnvelopeMismatch, match="strict mode"):
        envelope.check(env("3.11", "3.1.3"), env("3.11", "3.1.1"), "job")


# ---- what is known to break stays refused in both modes -----------------------------------------


@pytest.mark.parametrize("mode", ["compatible", "strict"])
@pytest.mark.parametrize(
    ("sent", "here", "said"),
    [
        (("3.9", "3.1.3"), ("3.11", "3.1.3"), "TypeError: code() argument 13 must be str, not int"),
        (("3.11", "3.1.3"), ("3.13", "3.1.3"), "the loading process crashed"),
        (("3.13", "3.1.3"), ("3.11", "3.1.3"), "measured: pickles made under Python 3.13"),
        (("3.10", "3.1.3"), ("3.11", "3.1.3"), "not measured for Python 3.10 -> 3.11, but every one of the"),
        (("3.11", "3.1.3"), ("3.11", "2.2.1"), "AttributeError: Can't get attribute"),  # a newer cloudpickle's pickle
    ],
)
def test_known_breaking_pairs_are_refused_in_both_modes_with_what_was_measured(mode, sent, here, said):
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        envelope.check(env(*sent), env(*here), "job result", mode=mode)
    text = str(info.value)
    assert said in text and "Refusing to unpickle a job result made under CPython" in text
    assert "%use_image" in text  # and the fix


def test_a_new_python_minor_with_an_unmeasured_cloudpickle_is_still_refused():
    # Neither side's cloudpickle was measured; the Python minors differ, and every measured minor pair broke.
    verdict = policy.judge(
        Side("CPython", "3.12", "cloudpickle", "9.0.0"), Side("CPython", "3.14", "cloudpickle", "9.0.0")
    )
    assert verdict.status == "inferred-broken" and verdict.refused("compatible")


def test_other_picklers_and_implementations_are_refused():
    assert policy.judge(
        Side("CPython", "3.11", "dill", "0.4.1"), Side("CPython", "3.11", "cloudpickle", "3.1.3")
    ).broken
    assert policy.judge(
        Side("PyPy", "3.11", "cloudpickle", "3.1.3"), Side("CPython", "3.11", "cloudpickle", "3.1.3")
    ).broken


def test_dill_releases_on_one_python_load_each_other():
    verdict = policy.judge(Side("CPython", "3.11", "dill", "0.3.6"), Side("CPython", "3.11", "dill", "0.4.1"))
    assert verdict.status == "measured-ok", verdict.evidence


# ---- what nobody measured ------------------------------------------------------------------------


def test_an_unmeasured_pair_warns_once_and_proceeds_in_compatible_mode():
    sent, here = env("3.11", "3.1.9"), env("3.11", "3.1.3")
    with pytest.warns(policy.UnmeasuredPairWarning) as caught:
        envelope.check(sent, here, "job")
    text = str(caught[0].message)
    assert text.startswith("envpin: not measured: pickles made under Python 3.11 with cloudpickle 3.1.9")
    assert "proceeding (compatible mode; ENVPIN_ENVELOPE=strict refuses)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        envelope.check(sent, here, "job")  # once per pair


def test_an_unmeasured_pair_is_refused_in_strict_mode():
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        envelope.check(env("3.11", "3.1.9"), env("3.11", "3.1.3"), "job", mode="strict")
    assert "not measured" in str(info.value) and "compatible mode would warn and proceed" in str(info.value)


# ---- the setting --------------------------------------------------------------------------------


def test_the_mode_precedence_is_argument_then_pin_then_environment_then_compatible(monkeypatch):
    assert policy.resolve_mode() == "compatible"
    monkeypatch.setenv("ENVPIN_ENVELOPE", "strict")
    assert policy.resolve_mode() == "strict"
    assert policy.resolve_mode(pinned="compatible") == "compatible"
    assert policy.resolve_mode("strict", pinned="compatible") == "strict"


def test_a_bad_mode_is_named_with_the_two_that_exist(monkeypatch):
    monkeypatch.setenv("ENVPIN_ENVELOPE", "lenient")
    with pytest.raises(policy.EnvelopeModeError) as info:
        policy.resolve_mode()
    assert "ENVPIN_ENVELOPE is 'lenient'" in str(info.value) and "'compatible'" in str(info.value)
    with pytest.raises(policy.EnvelopeModeError, match="envelope= is 'loose'"):
        policy.resolve_mode("loose")


def test_an_executor_with_a_bad_mode_fails_before_any_worker():
    from envpin.jobs.executor import ContainerExecutor

    with pytest.raises(policy.EnvelopeModeError, match="envelope= is 'sometimes'"):
        ContainerExecutor("some/image", mode="process", envelope="sometimes")


def test_use_image_carries_the_mode_across_a_move_and_drops_anything_else():
    from envpin.session.options import SessionOptions

    assert SessionOptions.parse({"envelope": "strict"}, strict_schema=False).as_dict() == {"envelope": "strict"}
    assert SessionOptions.parse({"envelope": "yes; rm -rf /"}, strict_schema=False).as_dict() == {}
    assert SessionOptions(envelope="strict").as_env() == {"ENVPIN_ENVELOPE": "strict"}


# ---- the same policy in envpin.compare -------------------------------------------------------------


def _fp(python: str, patch: str, cloudpickle: str) -> dict:
    return {
        "python_implementation": "CPython",
        "python_minor": python,
        "python_version": f"{python}.{patch}",
        "cloudpickle": cloudpickle,
    }


def test_compare_marks_only_what_was_measured_to_break():
    diffs = fingerprints.compare(_fp("3.11", "7", "3.1.3"), _fp("3.11", "2", "3.1.1"))
    cloud = next(d for d in diffs if d.key == "cloudpickle")
    assert not cloud.breaks_pickles and not cloud.unmeasured and "measured:" in cloud.evidence

    diffs = fingerprints.compare(_fp("3.11", "7", "3.1.3"), _fp("3.11", "2", "2.2.1"))  # the image's is older
    assert next(d for d in diffs if d.key == "cloudpickle").breaks_pickles

    diffs = fingerprints.compare(_fp("3.11", "7", "3.1.9"), _fp("3.11", "2", "3.1.3"))
    cloud = next(d for d in diffs if d.key == "cloudpickle")
    assert cloud.unmeasured and "<- not measured" in str(cloud)


# ---- the same evidence in the engines' preflight ----------------------------------------------------


def test_the_ray_preflight_cites_the_matrix_when_the_python_minors_differ():
    from envpin.adapters.ray_adapter import _pickle_evidence

    text = _pickle_evidence("3.11.2", "3.13.5")
    assert "measured: cloudpickle pickles made under Python 3.11 fail under Python 3.13" in text
    assert _pickle_evidence("3.11.2", "3.11.7") == ""  # a patch apart: Ray's own rule speaks, not the matrix
