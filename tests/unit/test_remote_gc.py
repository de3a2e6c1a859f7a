"""What ``envpin gc --engine ssh://...`` removes on the remote host besides the containers: pure parts, no engine.

The engine test is tests/remote/test_ssh_kernels.py::test_gc_collects_a_killed_servers_kernel_and_its_folder.
"""

from __future__ import annotations

import types

import pytest

from envpin_provisioner.remote import ssh_kernel

R = "/run/user/1000/envpin-Ab3dE6gH"


def _container(*mounts):
    return types.SimpleNamespace(attrs={"Mounts": list(mounts)})


def _bind(source, target=None):
    return {"Type": "bind", "Source": source, "Destination": target or source}


def test_the_kernels_folder_is_the_one_holding_its_socket_mount():
    container = _container(
        {"Type": "volume", "Name": "envpin-pkg-x", "Source": "/var/lib/docker/volumes/x", "Destination": "/opt/e"},
        _bind("/home/alice/project", "/home/alice/project"),
        _bind(f"{R}/sock"),
    )
    assert ssh_kernel.folder_of(container) == R


@pytest.mark.parametrize(
    "mount",
    [
        _bind("/home/alice/sock"),  # a folder named sock that is no kernel folder
        _bind(f"{R}/sock", "/sock"),  # not at the same path inside: not a mount start() makes
        _bind("/tmp/envpin-../sock"),
        _bind("/tmp/envpin-Ab3dE6gH/../sock"),
        _bind("/tmp//envpin-Ab3dE6gH/sock"),
        _bind("/tmp/envpin-Ab3dE6gHx/sock"),
        _bind("/tmp/envpin-Ab3d E6g/sock"),
        {"Type": "volume", "Source": f"{R}/sock", "Destination": f"{R}/sock"},
    ],
)
def test_anything_else_is_never_taken_for_a_kernels_folder(mount):
    assert ssh_kernel.folder_of(_container(mount)) is None


def test_remove_folders_removes_only_kernel_folders(monkeypatch):
    ran = []
    master = types.SimpleNamespace(run=lambda script, timeout: ran.append(script) or "")
    monkeypatch.setattr(ssh_kernel.ssh_tunnel, "master_for", lambda url: master)
    assert ssh_kernel.remove_folders("ssh://alice@box", ["/", "/home/alice", "/tmp/envpin-x/..", R]) == [R]
    assert ran == [f"rm -rf -- {R}"]
    assert ssh_kernel.remove_folders("ssh://alice@box", ["/home/alice"]) == [] and len(ran) == 1
