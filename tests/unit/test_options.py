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
    assert "unknown option 'imgae' (did you mean 'image'?)" in message
    assert "Known options:" in message and "pull_policy" in message


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
