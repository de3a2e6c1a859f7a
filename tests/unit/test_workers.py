"""envpin.jobs.worker_hosts: how a dead worker is described to the user."""

from __future__ import annotations

import pytest

from envpin.jobs import worker_hosts


@pytest.mark.parametrize(
    "death, says",
    [
        (worker_hosts.Death(1), "exited with code 1"),
        (worker_hosts.Death(137), "was killed (out of memory, or from outside)"),
        (worker_hosts.Death(137, oom=True), "ran out of memory"),
    ],
)
def test_a_dead_worker_is_described_in_words(death, says):
    assert says in death.describe()
