"""Unit tier: ``envpin launch`` builds its kernel's container from the provisioner's options, with its builders.

No engine: the options, the launch and its ``containers.create`` arguments are pure.
"""

from __future__ import annotations

import pytest

from envpin import names, safe_files
from envpin.host.images import ResolvedImage
from envpin_provisioner.cli import launch as cli_launch
from envpin_provisioner.cli.main import build_parser
from envpin_provisioner.errors import ConfigError
from envpin_provisioner.images.selection import ImageChoice
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.options import ProvisionerOptions

IMAGE = ResolvedImage(reference="reg.example/py:3.11", id="sha256:" + "a" * 64, digest=None)


def _launch_args(*extra: str):
    return build_parser().parse_args(["launch", "-f", "k.json", *extra])


def _options(args) -> ProvisionerOptions:
    from envpin_provisioner.cli.main import parse_config

    return cli_launch.options_for(
        parse_config(args.config),
        image=args.image,
        pull_policy=args.pull_policy,
        network_mode=args.network_mode,
        python=args.python,
        launch_timeout=args.launch_timeout,
    )


def test_an_option_not_given_is_the_provisioners(monkeypatch):
    """No default is copied into the CLI: what it leaves out is ENVPIN_*, then ProvisionerOptions' default."""
    for name in ("IMAGE", "PULL_POLICY", "NETWORK_MODE", "PYTHON", "LAUNCH_TIMEOUT", "SHM_SIZE"):
        monkeypatch.delenv(f"ENVPIN_{name}", raising=False)
    args = _launch_args()
    assert (args.image, args.pull_policy, args.network_mode, args.python, args.launch_timeout) == (None,) * 5
    got, provisioner = _options(args), ProvisionerOptions()
    for name in ("image", "pull_policy", "network_mode", "python", "launch_timeout", "shm_size", "env_passthrough"):
        assert getattr(got, name) == getattr(provisioner, name), name

    monkeypatch.setenv("ENVPIN_IMAGE", "from-env:1")
    monkeypatch.setenv("ENVPIN_PULL_POLICY", "never")
    monkeypatch.setenv("ENVPIN_NETWORK_MODE", "none")
    monkeypatch.setenv("ENVPIN_LAUNCH_TIMEOUT", "7")
    got = _options(_launch_args())
    assert (got.image, got.pull_policy, got.network_mode, got.launch_timeout) == ("from-env:1", "never", "none", 7.0)
    flagged = _options(_launch_args("--image", "flag:2", "--network", "host", "--config", "mem_limit=4g"))
    assert (flagged.image, flagged.network_mode, flagged.mem_limit) == ("flag:2", "host", "4g")  # argv wins


def test_a_bad_option_is_refused_in_one_paragraph(monkeypatch):
    with pytest.raises(ConfigError, match=r"the argv of envpin launch.*unknown option 'mem_limt' \(did you mean"):
        _options(_launch_args("--config", "mem_limt=4g"))
    monkeypatch.setenv("ENVPIN_LAUNCH_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="ENVPIN_LAUNCH_TIMEOUT is 'soon'"):
        _options(_launch_args()).launch_timeout  # noqa: B018  # reading it is the check


def test_the_launch_passes_what_the_provisioner_passes_and_starts_pinned(tmp_path, monkeypatch):
    """Passthrough (LC_*, ENVPIN_ENVELOPE), never the rest; a pinned notebook starts with envpin loaded."""
    monkeypatch.delenv("ENVPIN_SHM_SIZE", raising=False)
    options = _options(_launch_args("--config", 'environment={"FIXED": "1"}', "--config", "mem_limit=2g"))
    env = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        names.ENVELOPE: "strict",
        names.SESSION_NAME: str(tmp_path / "a.ipynb"),
        "SECRET_TOKEN": "x",
        "PYTHONPATH": "/host",
    }
    folder = safe_files.PinnedDir(str(tmp_path))
    try:
        choice = ImageChoice("py311", IMAGE, pinned=True, options={"strict": True})
        launch = kernel_launch.build(
            options,
            choice,
            kernel_id="launch-1",
            connection_info={
                "transport": "tcp",
                "ip": "127.0.0.1",
                **{f"{c}_port": 1 for c in channels.CHANNELS},
            },
            connection_file=str(tmp_path / "k.json"),
            folder=folder,
            env=env,
        )
        created = kernel_launch.container_options(launch)
    finally:
        folder.close()
    environment = created["environment"]
    assert {k: environment.get(k) for k in ("LANG", "LC_ALL", names.ENVELOPE, "FIXED")} == {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        names.ENVELOPE: "strict",
        "FIXED": "1",
    }
    assert "SECRET_TOKEN" not in environment and environment["PYTHONPATH"] != "/host"
    assert environment[names.PINNED] == "1" and environment[names.IMAGE_NAME] == "py311"
    assert created["command"][-2:] == ["--ext", "envpin"]
    assert created["mem_limit"] == "2g" and created["shm_size"] == 2**30  # 'auto': half of mem_limit
    assert created["working_dir"] == str(tmp_path) and created["user"] == options.user


def test_tcp_without_a_network_is_refused_before_any_container():
    with pytest.raises(ConfigError, match="transport='tcp' cannot work with network_mode='none'"):
        kernel_launch.check_transport("tcp", "none", "py311")
    kernel_launch.check_transport("ipc", "none", "py311")
