"""envpin_provisioner.kernel.launch: the options a kernel's container is made with (``gpus`` in docker run's
syntax, ``shm_size`` "auto")."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "value, expected",
    [("", []), ("all", [(-1, None)]), ("2", [(2, None)]), ("device=0,1", [(0, ["0", "1"])])],
)
def test_gpus_take_docker_run_syntax(value, expected):
    from envpin_provisioner.kernel.launch import parse_gpus

    found = [(r.get("Count", 0), r.get("DeviceIDs") or None) for r in parse_gpus(value)]
    assert found == expected


def test_gpus_in_another_syntax_are_refused_with_the_three_forms():
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.kernel.launch import parse_gpus

    with pytest.raises(ConfigError, match="use 'all', a count like '2', or 'device=0,1'"):
        parse_gpus("nvidia")


@pytest.mark.parametrize(
    "setting, mem_limit, engine_memory, expected",
    [
        ("", None, 8 * 2**30, None),  # Docker's default
        ("2g", None, None, "2g"),  # as given
        ("auto", None, 8 * 2**30, 4 * 2**30),  # half the engine's memory
        ("auto", "1g", 8 * 2**30, 2**29),  # half the container's limit
        ("auto", "64m", None, 64 * 2**20),  # never below Docker's default
        ("auto", None, None, None),  # an engine that will not say
    ],
)
def test_shm_size_auto_is_half_the_memory_the_kernel_may_use(setting, mem_limit, engine_memory, expected):
    from envpin_provisioner.kernel.launch import shm_size_for

    assert shm_size_for(setting, mem_limit, engine_memory) == expected
