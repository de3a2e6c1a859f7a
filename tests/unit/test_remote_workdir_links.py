"""``ssh_kernel._make_workdir``: the script that makes a kernel's working folder below ``remote_root``.

Run here with ``sh`` on real folders (the remote host runs the same lines):
a link anywhere below ``remote_root`` (a kernel can make one in its working
folder) ends it with exit 4 and makes nothing through the link; ``remote_root``
itself may be a link (the user chose it).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from envpin_provisioner.remote.ssh_kernel import _OUT_RE, _below, _make_workdir, _pin_mount_source


def _run(root: str, workdir: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", "set -e\numask 077\n" + _make_workdir(root, workdir)], capture_output=True)


def test_folders_are_made_below_the_root(tmp_path):
    root = tmp_path / "root"
    assert _run(str(root), f"{root}/a b/c").returncode == 0
    assert (root / "a b" / "c").is_dir()
    assert _run(str(root), str(root)).returncode == 0


def test_the_root_itself_may_be_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root")
    assert _run(f"{tmp_path}/root/", f"{tmp_path}/root/x").returncode == 0
    assert (tmp_path / "real" / "x").is_dir()


@pytest.mark.parametrize("link", ["a", "a/b"])
def test_a_link_below_the_root_is_refused_and_nothing_is_made_through_it(tmp_path, link):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    if link == "a":
        os.rmdir(root / "a")
    os.symlink(outside, root / link)
    done = _run(str(root), f"{root}/a/b/c")
    assert done.returncode == 4, done
    assert os.listdir(outside) == []


def test_a_link_to_a_folder_inside_the_root_is_refused_too(tmp_path):
    root = tmp_path / "root"
    (root / "other").mkdir(parents=True)
    os.symlink(root / "other", root / "nb")
    assert _run(str(root), f"{root}/nb").returncode == 4


def test_it_prints_the_inode_of_the_folder_it_checked(tmp_path):
    """``$I`` is what every container of the kernel must see at its mount (``ssh_kernel.check_workdir``)."""
    root = tmp_path / "root"
    done = subprocess.run(
        ["sh", "-c", "set -e\n" + _make_workdir(str(root), f"{root}/a/b") + 'printf "%s\\n" "$I"'],
        capture_output=True,
        text=True,
    )
    st = os.stat(root / "a" / "b")
    assert done.stdout == f"{st.st_dev}:{st.st_ino}\n", done
    assert _OUT_RE.match(f"/tmp/envpin-abcdefgh\n1000\n1000\n{st.st_dev}:{st.st_ino}\n")
    assert _OUT_RE.match("/tmp/envpin-abcdefgh\n1000\n1000\n\n")  # the scratch R/work: nothing pinned


def _pin(root: str, source: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", "set -e\n" + _pin_mount_source(root, source)], capture_output=True, text=True)


@pytest.mark.parametrize("link", [None, "data", "deep", "deep/data"])
def test_a_mount_source_below_the_root_is_pinned_unless_a_link_is_in_its_path(tmp_path, link):
    """A kernel working in ``remote_root`` can swap a ``mounts`` source below it for a link (review 'hostile30')."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "deep" / "data").mkdir(parents=True)
    (root / "data").mkdir()
    outside.mkdir()
    (outside / "data").mkdir()
    if link is not None:
        os.rename(root / link, root / f"{link}.real")
        os.symlink(outside if link == "deep" else outside / "data", root / link)
    source = f"{root}/deep/data" if link != "data" else f"{root}/data"
    done = _pin(str(root), source)
    if link is None:
        st = os.stat(root / "deep" / "data")
        assert (done.returncode, done.stdout) == (0, f"{st.st_dev}:{st.st_ino}\n"), done
        assert _OUT_RE.match(f"/tmp/envpin-abcdefgh\n1000\n1000\n1:2\n{st.st_dev}:{st.st_ino}\n3:4\n")
    else:
        assert done.returncode == 5 and done.stdout == "", done


def test_only_mount_sources_below_the_root_are_held_to_it():
    assert _below("/r", "/r/x") and _below("/r/", "/r") and _below("/", "/x")
    assert not _below("/r", "/rx") and not _below("/r", "/other")


def test_a_mount_source_that_is_the_root_pins_what_the_root_names(tmp_path):
    """``remote_root`` may be the user's link: the container sees its target's inode, so that one is pinned."""
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root")
    st = os.stat(tmp_path / "real")
    assert _pin(f"{tmp_path}/root", f"{tmp_path}/root").stdout == f"{st.st_dev}:{st.st_ino}\n"
    (tmp_path / "real" / "a b").mkdir()
    st = os.stat(tmp_path / "real" / "a b")
    assert _pin(f"{tmp_path}/root", f"{tmp_path}/root/a b").stdout == f"{st.st_dev}:{st.st_ino}\n"
