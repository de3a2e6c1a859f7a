"""envpin.jobs.envelope: a job or result travels as a checked envelope (cloudpickle, buffers out of band), and
one made under another Python is refused naming both sides."""

from __future__ import annotations

import pytest

from envpin.jobs import envelope
from testutils import frames_reader


def test_an_envelope_round_trips_a_closure_and_its_numpy_array_out_of_band():
    import numpy as np

    factor = 3
    array = np.arange(50_000, dtype=np.float64)
    frames = envelope.dumps((lambda v: v * factor, array), "job")
    header, payload, buffers = envelope.read_frames(frames_reader(frames))
    assert header["kind"] == "job" and header["env"]["pickler"] == "cloudpickle"
    assert len(buffers) == 1 and len(payload) < 10_000  # the array travelled out of band, not inside the pickle
    fn, back = envelope.loads(header, payload, buffers, "job")
    assert fn(2) == 6 and np.array_equal(back, array)


def test_control_frames_are_plain_json_any_python_can_read():
    header, payload, buffers = envelope.read_frames(frames_reader(envelope.control_frames({"kind": "probe"})))
    assert header == {"kind": "probe"} and not payload and buffers == []


def test_a_payload_from_another_python_minor_is_refused_naming_both_sides():
    here = envelope.sender_environment()
    sent = {**here, "python_minor": "3.10", "python": "3.10.14"}
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        envelope.check(sent, here, "job")
    assert "made under CPython 3.10.14" in str(info.value)
    assert f"Python 3.10 -> {here['python_minor']}" in str(info.value)  # not measured; every measured minor pair broke
    assert "%use_image" in str(info.value)


def test_a_payload_from_the_same_environment_passes():
    here = envelope.sender_environment()
    envelope.check(dict(here), here, "job")
