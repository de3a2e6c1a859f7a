"""envpin_provisioner.options: every option reads its environment variable, config wins, and a wrong
option is refused by name (with the closest known one) or with the type it wanted."""

from __future__ import annotations

import pytest


def _check(config):
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, config, None)
    return str(info.value)


def test_an_unknown_option_is_named_with_the_closest_known_one():
    message = _check({"imgae": "python:3.11"})
    assert "unknown option 'imgae' (did you mean 'image'?)" in message and "rename 'imgae' to 'image'" in message
    message = _check({"frobnicate": 1})  # nothing close: every known option is listed
    assert "Known options:" in message and "pull_policy" in message and "remove 'frobnicate'" in message


def test_impossible_values_are_refused_where_they_are_written():
    """The newcomer's values: each installed fine, then failed at the start in docker-py's words."""
    message = _check(
        {"mem_limit": "lots", "shm_size": "huge", "network_mode": "no net", "gpus": "many", "mounts": ["/data"]}
    )
    for key in ("mem_limit", "shm_size", "network_mode", "gpus", "mounts"):
        assert f"option '{key}' has the wrong type or value" in message, key
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, {"netwrok_mode": "none"}, None, where="install")
    assert info.value.fix.startswith("Fix the command: --config network_mode=") and "Nothing was installed" in str(
        info.value
    )
    check_options(
        ProvisionerOptions,
        {
            "mem_limit": "4g",
            "shm_size": "",
            "network_mode": "container:db",
            "gpus": "device=0,1",
            "mounts": ["/d:/d:ro"],
        },
        None,
    )


def test_impossible_values_from_jupyter_config_and_environment_are_refused(monkeypatch):
    from traitlets import TraitError
    from traitlets.config import Config

    from envpin_provisioner.options import ProvisionerOptions

    with pytest.raises(TraitError, match="mem_limit"):
        ProvisionerOptions(config=Config({"ProvisionerOptions": {"mem_limit": "lots"}}))
    monkeypatch.setenv("ENVPIN_SHM_SIZE", "huge")
    with pytest.raises(TraitError, match="shm_size"):
        ProvisionerOptions().shm_size  # noqa: B018


def test_a_start_error_reads_fix_first_in_short_lines():
    """JupyterLab's start dialog keeps line breaks and does not wrap: the fix must be on top, lines short."""
    from envpin.errors import DIALOG_WIDTH, dialog_text
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    class Spec:
        display_name, resource_dir = "Typo kernel", "/home/me/.local/share/jupyter/kernels/typo"

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, {"image": "x:1", "netwrok_mode": "none"}, Spec())
    assert "\n" not in str(info.value)  # a paragraph for terminals and logs
    text = dialog_text(info.value)
    lines = text.splitlines()
    assert lines[0].startswith("Fix: rename 'netwrok_mode' to 'network_mode' in")
    assert "/home/me/.local/share/jupyter/kernels/typo/kernel.json" in " ".join(lines[:2])
    assert all(len(line) <= DIALOG_WIDTH for line in lines) and len(lines) <= 8


def test_an_ill_typed_option_says_what_was_expected():
    message = _check({"launch_timeout": "soon", "pull_policy": "sometimes"})
    assert "option 'launch_timeout' has the wrong type or value 'soon'" in message
    assert "option 'pull_policy'" in message


def test_valid_options_pass_and_config_keys_of_jupyter_client_are_ignored():
    from envpin_provisioner.options import ProvisionerOptions, check_options

    check_options(ProvisionerOptions, {"image": "x:1", "kernel_id": "k", "mem_limit": "2g", "gpus": "all"}, None)


def test_every_option_reads_its_environment_variable(monkeypatch):
    from envpin_provisioner.options import ProvisionerOptions

    monkeypatch.setenv("ENVPIN_IMAGE", "from-env:1")
    monkeypatch.setenv("ENVPIN_PULL_POLICY", "never")
    monkeypatch.setenv("ENVPIN_LAUNCH_TIMEOUT", "7")
    monkeypatch.setenv("ENVPIN_ALLOWED_IMAGES", "a/*, b:1")
    options = ProvisionerOptions()
    assert (options.image, options.pull_policy, options.launch_timeout) == ("from-env:1", "never", 7.0)
    assert options.allowed_images == ["a/*", "b:1"]


def test_config_beats_the_environment(monkeypatch):
    from traitlets.config import Config

    from envpin_provisioner.options import ProvisionerOptions

    monkeypatch.setenv("ENVPIN_IMAGE", "from-env:1")
    config = Config()
    config.ProvisionerOptions.image = "from-config:1"
    assert ProvisionerOptions(config=config).image == "from-config:1"
