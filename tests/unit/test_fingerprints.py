"""envpin.compat.fingerprints: comparing two environments, the pickle-breaking differences first."""

from __future__ import annotations

from envpin.compat import fingerprints


def test_compare_puts_pickle_breaking_differences_first_and_skips_absent_engine_clients():
    a = {"python_minor": "3.11", "python_version": "3.11.2", "cloudpickle": "3.1.1", "ray": "2.60.0", "platform": "x"}
    b = {"python_minor": "3.13", "python_version": "3.13.5", "cloudpickle": "3.1.1", "platform": "y"}
    diffs = fingerprints.compare(a, b)
    assert [d.key for d in diffs] == ["python_minor", "platform"]  # python_version already said; ray absent there
    assert diffs[0].breaks_pickles and "<- breaks pickles (measured: " in str(diffs[0])


def test_identical_fingerprints_have_no_difference():
    here = fingerprints.local_fingerprint()
    assert fingerprints.compare(here, dict(here)) == []
