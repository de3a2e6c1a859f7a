"""envpin.adapters.ray_compat against the Ray installed here (the lowest supported Ray is tests/test_ray_compat.py's,
which has that name: pytest needs distinct file names across the tiers' folders)."""

from __future__ import annotations


def test_ray_compat_resolves_every_entry_point_of_the_installed_ray():
    from envpin.adapters import ray_compat

    assert ray_compat.missing() == [] and ray_compat.unsupported() is None
