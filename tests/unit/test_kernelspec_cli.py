"""Unit tier: `envpin kernelspec install/list/remove` where Jupyter will look (a real venv; no engine: --no-check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def venv(tmp_path):
    """A virtual environment with envpin's generic kernelspec in it, as ``pip install envpin`` leaves one.

    Its Python sees this test's packages through a .pth file (no index here to install them from).
    """
    path = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site,) = (path / "lib").glob("python3*/site-packages")
    (site / "test-packages.pth").write_text("\n".join(p for p in sys.path if p and os.path.isdir(p)) + "\n")
    shutil.copytree(ROOT / "kernelspecs" / "containerized-python", path / "share/jupyter/kernels/containerized-python")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(HOME=str(home), JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_CONFIG_DIR=str(home / "config"))

    def envpin(*args):
        return subprocess.run(
            [str(path / "bin" / "python"), "-m", "envpin_provisioner", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    return path, home / "data" / "kernels", envpin


def test_a_user_install_that_the_venvs_own_kernelspec_would_hide_is_refused(venv):
    """The README's first command in a venv printed 'Installed' and changed nothing Jupyter used."""
    path, user_kernels, envpin = venv
    shipped = path / "share/jupyter/kernels/containerized-python"
    out = envpin("kernelspec", "install", "--user", "--config", "network_mode=none", "--no-check")
    assert out.returncode == 2, out
    assert "Jupyter would not use a kernelspec 'containerized-python'" in out.stderr
    assert str(shipped) in out.stderr and "--sys-prefix" in out.stderr and "Nothing was installed" in out.stderr
    assert not (user_kernels / "containerized-python").exists()

    out = envpin("kernelspec", "install", "--sys-prefix", "--config", "network_mode=none", "--no-check")
    assert out.returncode == 0, out.stderr
    spec = json.loads((shipped / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"]["config"] == {"network_mode": "none"}
    assert {"logo-64x64.png", "logo-32x32.png", "logo-svg.svg"} <= {p.name for p in shipped.iterdir()}
    listing = envpin("kernelspec", "list").stdout
    assert (
        f'containerized-python  "Containerized Python"  image (the configured default image)\n    {shipped}' in listing
    )
    assert 'options: network_mode="none"' in listing

    # Another name is not hidden: --user works, and list shows both.
    out = envpin("kernelspec", "install", "--user", "--name", "mine", "--image", "x:1", "--no-check")
    assert out.returncode == 0, out.stderr
    assert (user_kernels / "mine" / "kernel.json").exists()

    # A --user copy of the same name (an older envpin's) is shown as unused; remove takes the one in use.
    shutil.copytree(shipped, user_kernels / "containerized-python")
    listing = envpin("kernelspec", "list").stdout
    assert "[not used: an earlier folder has a kernelspec of this name]" in listing
    out = envpin("kernelspec", "remove", "containerized-python")
    assert out.returncode == 0 and f"Removed kernelspec containerized-python from {shipped}" in out.stdout, out
    assert f"Jupyter now uses the kernelspec containerized-python in {user_kernels / 'containerized-python'}" in (
        out.stdout
    )
    out = envpin("kernelspec", "remove", "python3")
    assert out.returncode == 2 and "no envpin kernelspec 'python3'" in out.stderr


def test_bad_values_are_refused_at_install_with_the_fix_for_that_command(venv):
    path, user_kernels, envpin = venv
    out = envpin("kernelspec", "install", "--sys-prefix", "--name", "t", "--no-check", "--config", "netwrok_mode=none",
                 "--config", "mem_limit=lots", "--config", "shm_size=huge")  # fmt: skip
    assert out.returncode == 2, out
    assert "unknown option 'netwrok_mode' (did you mean 'network_mode'?)" in out.stderr
    assert "option 'mem_limit' has the wrong type or value 'lots'" in out.stderr
    assert "option 'shm_size' has the wrong type or value 'huge'" in out.stderr
    assert "Fix the command: --config network_mode=..." in out.stderr and "Nothing was installed" in out.stderr
    assert "reinstall" not in out.stderr  # it is the install: the fix names its own options
    assert not (path / "share/jupyter/kernels/t").exists()
    out = envpin("kernelspec", "install", "--sys-prefix", "--image", "MyImage:latest", "--no-check")
    assert out.returncode == 2 and "Write it in lowercase: --image myimage:latest" in out.stderr, out
