"""envpin.adapters.ray_adapter, offline: how a Ray task's runtime_env is stamped (or refused), and where
the preflight looks for the dashboard."""

from __future__ import annotations

import pytest

from envpin.session import stamping


def _stamp(**kw):
    return stamping.Stamp(image="reg.example/py:3.11", image_id="sha256:" + "d" * 64, **kw)


def test_ray_runtime_env_gets_image_uri_and_env_vars_and_the_users_values_win():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    env = stamp_runtime_env({"env_vars": {"ENVPIN_IMAGE": "mine"}}, _stamp(), "image_uri", "task f")
    assert env["image_uri"] == "reg.example/py:3.11"
    assert env["env_vars"]["ENVPIN_IMAGE"] == "mine" and env["env_vars"]["YT_JOB_DOCKER_IMAGE"]


def test_ray_env_vars_mode_stamps_only_env_vars():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    env = stamp_runtime_env(None, _stamp(), "env_vars", "task f")
    assert "image_uri" not in env and env["env_vars"]["ENVPIN_IMAGE"] == "reg.example/py:3.11"


def test_ray_refuses_pip_beside_the_pinned_image_and_says_what_to_do():
    from envpin.adapters.ray_adapter import RuntimeEnvConflict, stamp_runtime_env

    with pytest.raises(RuntimeEnvConflict) as info:
        stamp_runtime_env({"pip": ["requests"]}, _stamp(), "image_uri", "Ray task f")
    assert "'pip'" in str(info.value) and "--ray-mode env_vars" in str(info.value)
    assert "Nothing was submitted" in str(info.value)


def test_ray_keeps_a_task_s_own_image_uri_with_a_warning():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    with pytest.warns(stamping.ImageConflictWarning):
        env = stamp_runtime_env({"image_uri": "other:2"}, _stamp(), "image_uri", "Ray task f")
    assert env == {"image_uri": "other:2"}


def test_ray_preflight_dashboard_address_follows_the_cluster(monkeypatch):
    from envpin.adapters.ray_adapter import _dashboard_for

    monkeypatch.delenv("ENVPIN_RAY_DASHBOARD", raising=False)
    assert _dashboard_for("ray://10.1.2.3:10001") == "http://10.1.2.3:8265"
    monkeypatch.setenv("ENVPIN_RAY_DASHBOARD", "http://dash:1")
    assert _dashboard_for("ray://10.1.2.3:10001") == "http://dash:1"
