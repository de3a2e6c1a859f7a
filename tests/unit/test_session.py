"""envpin.session.state: whether this process runs in a given image (the one answer the adapters ask)."""

from __future__ import annotations

from envpin.session import state


def test_runs_in_image_matches_any_name_the_provisioner_gave(monkeypatch):
    monkeypatch.setenv("ENVPIN_IMAGE", "reg.example/py:3.11")
    monkeypatch.setenv("ENVPIN_IMAGE_NAME", "py311")
    monkeypatch.delenv("ENVPIN_IMAGE_ID", raising=False)
    assert state.runs_in_image("py311") and state.runs_in_image("reg.example/py:3.11")
    assert not state.runs_in_image("reg.example/py:3.13")
    monkeypatch.delenv("ENVPIN_IMAGE")
    monkeypatch.delenv("ENVPIN_IMAGE_NAME")
    assert not state.runs_in_image("py311")
