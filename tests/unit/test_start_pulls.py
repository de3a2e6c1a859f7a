"""The pulls kernel starts wait for (``envpin_provisioner.images.start_pulls``): reported while they run, then their outcome."""

from __future__ import annotations

import pytest

from envpin_provisioner.images import start_pulls


def mine(serial_floor: int) -> list[dict]:
    return [p for p in start_pulls.report()["pulls"] if p["serial"] > serial_floor]


def floor() -> int:
    return max([p["serial"] for p in start_pulls.report()["pulls"]] or [0])


def test_a_start_that_pulls_is_reported_then_done():
    before = floor()
    with start_pulls.tracked("envpin-test/big:1", "k1") as progress:
        assert mine(before) == []  # nothing pulled yet: nothing to show
        progress("envpin: pulling envpin-test/big:1: 2 layers, 5/15 MiB", 1 / 3)
        (shown,) = mine(before)
        assert shown["state"] == "pulling" and shown["image"] == "envpin-test/big:1" and shown["kernel_id"] == "k1"
        assert abs(shown["fraction"] - 1 / 3) < 1e-9 and "5/15 MiB" in shown["message"]
    (ended,) = mine(before)
    assert ended["state"] == "done" and ended["fraction"] is None and ended["ended"] is not None


def test_a_failed_start_ends_its_pull_as_failed_and_a_start_without_pull_is_never_shown():
    before = floor()
    with pytest.raises(RuntimeError), start_pulls.tracked("a\x1b[2Jb", None) as progress:
        progress("\x1b]0;title\x07" + "m" * 5000, 7.0)
        raise RuntimeError("the registry went away")
    (ended,) = mine(before)
    assert ended["state"] == "failed" and "\x1b" not in ended["image"] + ended["message"]
    assert len(ended["message"]) < 600
    with start_pulls.tracked("present", None):
        pass
    assert [p["image"] for p in mine(before)] == [ended["image"]]


def test_the_report_is_bounded():
    for i in range(3 * start_pulls.KEEP_ENDED):
        with start_pulls.tracked(f"img{i}", None) as progress:
            progress("pulling", 0.5)
    assert len(start_pulls.report()["pulls"]) <= 2 * start_pulls.KEEP_ENDED
