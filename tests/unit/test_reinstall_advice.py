"""A kernel start refused for a kernelspec's bad settings names the reinstall command that fixes *that* kernelspec.

Seen in issue 30's hand check (JupyterLab's "Error Starting Kernel" for a hand-edited
``netwrok_mode``): the dialog ended "(or reinstall the kernelspec: envpin kernelspec
install)", which, run as shown, installs the default kernelspec and leaves the broken
one as it was.  Here the advised command is run through the real CLI, and the
kernelspec Jupyter then finds must start (its settings pass the same check).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest


def _start_check(name: str):
    """The check a kernel start makes on kernelspec ``name`` (the provisioner's kwargs: its config and image)."""
    from jupyter_client.kernelspec import KernelSpecManager

    from envpin_provisioner.options import ProvisionerOptions, check_options

    spec = KernelSpecManager().get_kernel_spec(name)
    check_options(ProvisionerOptions, dict(spec.metadata["kernel_provisioner"]["config"]), spec)
    return spec


@pytest.mark.parametrize(
    ("bad", "fixed"),
    [
        ({"netwrok_mode": "none"}, {"network_mode": "none"}),  # the hand check's typo
        ({"netwrok_mode": "none", "launch_timeout": 90, "shm_size": "1g"}, {"network_mode": "none"}),
        ({"network_mode": "none", "no_such_option": 1}, {"network_mode": "none"}),  # no close name: dropped
    ],
)
def test_the_advised_reinstall_fixes_the_refused_kernelspec(jupyter_env, bad, fixed):
    from envpin_provisioner.cli import kernelspec
    from envpin_provisioner.cli.main import main
    from envpin_provisioner.errors import ConfigError

    folder = kernelspec.install("envpin-test/py311:latest", name="typo", display_name="Typo kernel", user=True)
    path = Path(folder) / "kernel.json"
    spec = json.loads(path.read_text())
    spec["metadata"]["kernel_provisioner"]["config"].update(bad)  # edited by hand, past the CLI's checks
    path.write_text(json.dumps(spec))

    with pytest.raises(ConfigError) as refused:
        _start_check("typo")
    fix = refused.value.fix
    assert fix.startswith("Fix: ") and f"{folder}/kernel.json" in fix
    advised = fix.split(", or reinstall it: ", 1)[1]
    argv = shlex.split(advised)  # all of it, as copied: no full stop glued to the last value
    assert argv[:3] == ["envpin", "kernelspec", "install"], advised
    assert "--user" in argv and "--name" in argv, advised  # where it is and what it is called: the same kernelspec

    assert main(argv[1:] + ["--no-check"]) == 0  # the real CLI, as the person would run it (no engine here)
    spec = _start_check("typo")  # starts now: nothing refused
    assert Path(spec.resource_dir).resolve() == Path(folder).resolve()
    assert spec.display_name == "Typo kernel"
    config = spec.metadata["kernel_provisioner"]["config"]
    assert config["image"] == "envpin-test/py311:latest"
    for key, value in fixed.items():
        assert config[key] == value
    kept = {k: v for k, v in bad.items() if k not in ("netwrok_mode", "no_such_option")}
    assert {k: config[k] for k in kept} == kept  # the options that were right are kept, with their types


def test_a_wrong_value_is_left_for_the_person_to_choose(jupyter_env):
    from envpin_provisioner.cli import kernelspec
    from envpin_provisioner.errors import ConfigError

    folder = kernelspec.install("envpin-test/py311:latest", name="badvalue", user=True)
    path = Path(folder) / "kernel.json"
    spec = json.loads(path.read_text())
    spec["metadata"]["kernel_provisioner"]["config"]["launch_timeout"] = "soon"
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError) as refused:
        _start_check("badvalue")
    advised = refused.value.fix.split(", or reinstall it: ", 1)[1]
    assert "--config launch_timeout=VALUE" in advised and "soon" not in advised
    assert "--display-name" not in advised  # the default display name is not repeated


def test_the_dialog_shows_the_command_on_lines_a_shell_reads_as_one_command(jupyter_env):
    """The dialog wraps its text at DIALOG_WIDTH: a command wrapped like prose, copied into a terminal, runs its
    first line alone (here ``envpin kernelspec install``, the default kernelspec).  Its lines end with `` \\``."""
    import subprocess

    from envpin.errors import DIALOG_WIDTH, dialog_text
    from envpin_provisioner.cli import kernelspec
    from envpin_provisioner.errors import ConfigError

    folder = kernelspec.install("envpin-test/py311:latest", name="typo", display_name="Typo kernel", user=True)
    path = Path(folder) / "kernel.json"
    spec = json.loads(path.read_text())
    spec["metadata"]["kernel_provisioner"]["config"].update(netwrok_mode="none", launch_timeout=90, shm_size="1g")
    path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError) as refused:
        _start_check("typo")
    advised = refused.value.fix.split(", or reinstall it: ", 1)[1]
    lines = dialog_text(refused.value).splitlines()
    assert lines[0].startswith("Fix: rename 'netwrok_mode' to 'network_mode' in")
    short = lambda line: len(line) <= DIALOG_WIDTH or " " not in line.strip(" \\")  # noqa: E731  (a long path: alone)
    assert all(short(line) for line in lines), lines
    start = next(i for i, line in enumerate(lines) if line.startswith("envpin kernelspec install"))
    end = lines.index("", start)
    assert end - start > 1, lines  # long enough to need a second line: the case that broke
    pasted = "\n".join(lines[start:end])  # what a person selects in the dialog
    words = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + pasted[len("envpin ") :]], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert ["envpin", *words] == shlex.split(advised)  # one command, every word as advised ('Typo kernel' one word)
