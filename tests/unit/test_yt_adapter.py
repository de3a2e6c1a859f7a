"""envpin.adapters.yt_adapter, offline: what a YTsaurus job carries (the image, a chain of config patches)."""

from __future__ import annotations

from envpin.session import stamping


def _stamp(**kw):
    return stamping.Stamp(image="reg.example/py:3.11", image_id="sha256:" + "d" * 64, **kw)


def test_yt_jobs_carry_the_image_and_a_chain_of_config_patches():
    import yt.yson as yson

    from envpin.adapters.yt_adapter import NESTING_DEPTH, job_environment

    env = job_environment(_stamp(), "reg.example/py:3.11", {"framework": "cloudpickle"})
    assert env["YT_BASE_LAYER"] == "reg.example/py:3.11" and env["ENVPIN_IMAGE"] == "reg.example/py:3.11"
    depth, patch = 0, env["YT_CONFIG_PATCHES"]
    while patch:
        level = yson.loads(patch.encode())
        assert level["user_job_spec_defaults"]["docker_image"] == "reg.example/py:3.11"
        assert level["pickling"]["framework"] == "cloudpickle"
        patch, depth = level["user_job_spec_defaults"]["environment"].get("YT_CONFIG_PATCHES"), depth + 1
    assert depth == NESTING_DEPTH


def test_yt_base_layer_is_left_out_for_an_uppercase_reference_the_client_would_lowercase():
    from envpin.adapters.yt_adapter import job_environment

    env = job_environment(_stamp(), "Reg.example/Py:3.11", {})
    assert "YT_BASE_LAYER" not in env
