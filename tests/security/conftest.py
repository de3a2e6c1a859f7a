"""Fixtures of the security tests: root-only canaries, and a kernelspec whose kernels run as another uid."""

from __future__ import annotations

import os

import pytest

from testutils import PY311
from testutils.hostile import KERNEL_UID, Canaries


@pytest.fixture
def canaries(tmp_path):
    return Canaries(tmp_path)


@pytest.fixture
def hostile_setup(install_kernelspec, notebook_dir, tmp_path, docker_client):
    """A kernelspec running kernels as KERNEL_UID (on the engine), and a notebook folder that uid owns."""
    os.chown(notebook_dir, KERNEL_UID, KERNEL_UID)
    name = install_kernelspec(PY311, user=f"{KERNEL_UID}:{KERNEL_UID}")
    env = {"JPY_SESSION_NAME": str(notebook_dir / "analysis.ipynb")}
    return name, env
