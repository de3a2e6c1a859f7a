"""envpin.session.stamping: pinning the session activates every adapter with the stamp, and jobs are stamped (or
refused) by it."""

from __future__ import annotations

import pytest

from envpin.errors import EnvpinError
from envpin.session import stamping, state


class _RecordingAdapter:
    name = "recording"

    def __init__(self):
        self.stamps = []

    def available(self):
        return True

    def activate(self, stamp):
        self.stamps.append(stamp)

    def deactivate(self):
        self.stamps.append(None)


@pytest.fixture
def recording_adapter():
    stamping.reset()
    adapter = _RecordingAdapter()
    stamping.register(adapter)
    yield adapter
    stamping.unpin_session()
    stamping.reset()


def _pin(**kw):
    base = dict(name="py311", reference="reg.example/py:3.11", image_id="reg.example/py@sha256:" + "b" * 64)
    base.update(python="3.11.2", cloudpickle="3.1.1", mode="host")
    base.update(kw)
    return state.Pin(**base)


def test_pinning_activates_every_adapter_with_the_stamp(recording_adapter):
    assert stamping.pin_session(_pin()) == ["recording"]
    stamp = recording_adapter.stamps[-1]
    assert stamp.image == "reg.example/py:3.11" and stamp.env["YT_JOB_DOCKER_IMAGE"] == "reg.example/py:3.11"
    assert state.current_pin().name == "py311"
    stamping.unpin_session()
    assert recording_adapter.stamps[-1] is None and state.current_pin() is None


def test_by_digest_needs_a_registry_digest_and_changes_nothing_when_refused(recording_adapter):
    with pytest.raises(EnvpinError, match="has no registry digest"):
        stamping.pin_session(_pin(image_id="sha256:" + "c" * 64, by_digest=True))
    assert state.current_pin() is None and recording_adapter.stamps == []


def test_by_digest_writes_the_digest_into_jobs(recording_adapter):
    stamping.pin_session(_pin(by_digest=True))
    assert stamping.stamp({"image": None})["image"] == "reg.example/py@sha256:" + "b" * 64


def test_a_job_naming_its_own_image_keeps_it_with_a_warning_or_is_refused_when_strict(recording_adapter):
    stamping.pin_session(_pin())
    with pytest.warns(stamping.ImageConflictWarning, match="names image 'other:1'"):
        job = stamping.stamp({"image": "other:1", "env": {"MINE": "1"}})
    assert job["image"] == "other:1" and job["env"]["MINE"] == "1" and job["env"]["ENVPIN_IMAGE"]
    with pytest.raises(stamping.ImageConflict):
        stamping.stamp({"image": "other:1"}, strict=True)


def test_stamp_before_a_pin_says_what_to_do():
    with pytest.raises(EnvpinError, match="pin the session first with %use_image"):
        stamping.stamp()
