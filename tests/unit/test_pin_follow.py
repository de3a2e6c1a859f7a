"""Unit tier: a pin belongs to its notebook file (renames, copies, deletes, stale names, folder pins per kernelspec)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from envpin.errors import PinFileError
from envpin.session import pin_file
from envpin_provisioner.pins.follow import PinFollower

LOG = logging.getLogger("test")


def notebook(path, *sources):
    cells = [
        {"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None} for s in sources
    ]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def pins(folder):
    return json.loads((folder / ".envpin.json").read_text())["notebooks"]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    return r


def test_an_entry_records_its_file_and_applies_to_it(root):
    notebook(root / "Untitled.ipynb")
    pin_file.record(root, "Untitled.ipynb", {"image": "py313", "kernelspec": "k"})
    st = os.stat(root / "Untitled.ipynb")
    assert pins(root)["Untitled.ipynb"]["file_id"].startswith(f"{st.st_dev}:{st.st_ino}")
    found = pin_file.find(root, str(root / "Untitled.ipynb"), "k").found
    assert found is not None and found.entry["image"] == "py313" and "'Untitled.ipynb'" in found.describe()


def test_a_notebook_that_takes_a_gone_notebooks_name_is_not_pinned_by_its_entry(root):
    """The newcomer's case: pinned Untitled.ipynb renamed behind Jupyter's back, a new Untitled.ipynb made."""
    notebook(root / "Untitled.ipynb", "%load_ext envpin\n%use_image py313")
    pin_file.record(root, "Untitled.ipynb", {"image": "py313"})
    os.rename(root / "Untitled.ipynb", root / "analysis.ipynb")
    notebook(root / "Untitled.ipynb", "import tabulate")
    lookup = pin_file.find(root, str(root / "Untitled.ipynb"), "k")
    assert lookup.found is None
    assert "made for another file of that name" in lookup.skipped[0] and "%use_image IMAGE" in lookup.skipped[0]


def test_the_same_notebook_rewritten_or_cloned_keeps_its_pin(root):
    """A new file (git checkout, a clone, an editor) that still has the entry's %use_image line is that notebook."""
    notebook(root / "a.ipynb", "%load_ext envpin\n%use_image  py313 --restart\n")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    data = (root / "a.ipynb").read_text()
    (root / "a.ipynb").unlink()
    (root / "a.ipynb").write_text(data)  # another inode
    assert pin_file.lookup(root, str(root / "a.ipynb")) is not None
    notebook(root / "a.ipynb", "%use_image py311")  # another image named: not the pinned notebook
    assert pin_file.lookup(root, str(root / "a.ipynb")) is None


def test_an_entry_without_a_file_id_applies_by_name(root):
    (root / ".envpin.json").write_text(json.dumps({"notebooks": {"a.ipynb": {"image": "x"}}}))
    assert pin_file.lookup(root, str(root / "a.ipynb"))["image"] == "x"


def test_a_folder_pin_applies_only_to_its_own_kernelspec(root):
    pin_file.record(root, None, {"image": "ubuntu-22.04-py3", "kernelspec": "containerized-python"})
    assert pin_file.lookup(root, str(root / "b.ipynb"), "containerized-python")["image"] == "ubuntu-22.04-py3"
    lookup = pin_file.find(root, str(root / "b.ipynb"), "py313")
    assert lookup.found is None and "kernelspec 'containerized-python'" in lookup.skipped[0]
    assert "folder pin '*'" in pin_file.find(root, None, "containerized-python").found.describe()
    # written by hand or by an older envpin: no kernelspec, applies to all (as before)
    (root / ".envpin.json").write_text(json.dumps({"notebooks": {"*": {"image": "x"}}}))
    assert pin_file.lookup(root, str(root / "b.ipynb"), "py313")["image"] == "x"


def test_transfer_rename_copy_and_drop(root):
    notebook(root / "a.ipynb")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    os.rename(root / "a.ipynb", root / "b.ipynb")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    sub = os.open(root / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert pin_file.transfer(fd, "a.ipynb", fd, "b.ipynb", keep_source=False)
        assert set(pins(root)) == {"b.ipynb"}
        os.rename(root / "b.ipynb", root / "sub" / "b.ipynb")
        assert pin_file.transfer(fd, "b.ipynb", sub, "b.ipynb", keep_source=False)
        assert pins(root) == {} and set(pins(root / "sub")) == {"b.ipynb"}
        (root / "sub" / "c.ipynb").write_bytes((root / "sub" / "b.ipynb").read_bytes())
        assert pin_file.transfer(sub, "b.ipynb", sub, "c.ipynb", keep_source=True)
        copied = pins(root / "sub")
        assert copied["c.ipynb"]["image"] == "py313" and copied["c.ipynb"]["file_id"] != copied["b.ipynb"]["file_id"]
        assert pin_file.lookup(root / "sub", str(root / "sub" / "c.ipynb"))["image"] == "py313"
        assert pin_file.drop(sub, "b.ipynb") and set(pins(root / "sub")) == {"c.ipynb"}
        assert not pin_file.drop(sub, "b.ipynb")
    finally:
        os.close(fd)
        os.close(sub)


def test_a_stale_entry_follows_no_other_file(root):
    notebook(root / "a.ipynb")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    os.unlink(root / "a.ipynb")  # gone behind Jupyter's back
    notebook(root / "a.ipynb")  # a new one, then renamed through Jupyter
    os.rename(root / "a.ipynb", root / "b.ipynb")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert not pin_file.transfer(fd, "a.ipynb", fd, "b.ipynb", keep_source=False)
    finally:
        os.close(fd)
    assert "b.ipynb" not in pins(root)


def test_the_follower_carries_pins_for_contents_events(root):
    follower = PinFollower(str(root), LOG)
    notebook(root / "Untitled.ipynb")
    pin_file.record(root, "Untitled.ipynb", {"image": "py313"})
    os.rename(root / "Untitled.ipynb", root / "sub" / "analysis.ipynb")
    follower.apply("rename", "sub/analysis.ipynb", "Untitled.ipynb")
    assert pins(root) == {} and pins(root / "sub")["analysis.ipynb"]["image"] == "py313"
    (root / "sub" / "analysis-Copy1.ipynb").write_bytes((root / "sub" / "analysis.ipynb").read_bytes())
    follower.apply("copy", "sub/analysis-Copy1.ipynb", "sub/analysis.ipynb")
    os.unlink(root / "sub" / "analysis.ipynb")
    follower.apply("delete", "sub/analysis.ipynb", None)
    assert set(pins(root / "sub")) == {"analysis-Copy1.ipynb"}
    follower.apply("save", "sub/analysis-Copy1.ipynb", None)  # not a change of name: nothing to do
    assert set(pins(root / "sub")) == {"analysis-Copy1.ipynb"}


def test_the_follower_never_follows_a_link_nor_leaves_the_root(root, tmp_path, caplog):
    """A kernel that relinked a folder (or a path with ..) moves no pin outside the contents root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    notebook(root / "a.ipynb")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    (root / "evil").symlink_to(outside)
    follower = PinFollower(str(root), LOG)
    with caplog.at_level(logging.INFO):
        follower.apply("rename", "evil/a.ipynb", "a.ipynb")
        follower.apply("rename", "../outside/a.ipynb", "a.ipynb")
        follower.apply("delete", "evil/../a.ipynb", None)
    assert not (outside / ".envpin.json").exists() and set(pins(root)) == {"a.ipynb"}
    assert "did not follow" in caplog.text


def test_a_damaged_destination_pin_file_keeps_the_pin_where_it_was(root, caplog):
    notebook(root / "a.ipynb")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    (root / "sub" / ".envpin.json").write_text("{ not json")
    os.rename(root / "a.ipynb", root / "sub" / "a.ipynb")
    with caplog.at_level(logging.WARNING):
        PinFollower(str(root), LOG).apply("rename", "sub/a.ipynb", "a.ipynb")
    assert set(pins(root)) == {"a.ipynb"} and (root / "sub" / ".envpin.json").read_text() == "{ not json"
    assert "damaged" in caplog.text
    with pytest.raises(PinFileError):
        pin_file.read(root / "sub")


def test_a_notebook_link_or_hard_link_is_never_read_for_its_pin(root, tmp_path):
    secret = tmp_path / "secret.ipynb"
    notebook(secret, "%use_image py313")
    notebook(root / "a.ipynb")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    (root / "a.ipynb").unlink()
    (root / "a.ipynb").symlink_to(secret)  # names the image, but is a link: not read
    assert pin_file.lookup(root, str(root / "a.ipynb")) is None
    (root / "a.ipynb").unlink()
    os.link(secret, root / "a.ipynb")
    assert pin_file.lookup(root, str(root / "a.ipynb")) is None


def test_a_restart_after_the_session_changed_file_carries_the_pin(root):
    """JupyterLab's "Save As" (a plain save for the event bus) copies the pin; a rename the listener did not see
    moves it; a new name with a pin of its own keeps that one."""
    from envpin import safe_files
    from envpin_provisioner.pins.follow import follow_session

    folder = safe_files.PinnedDir(root)
    notebook(root / "a.ipynb", "x = 1")
    pin_file.record(root, "a.ipynb", {"image": "py313"})
    (root / "sub" / "saved-as.ipynb").write_bytes((root / "a.ipynb").read_bytes())  # Save As into sub/
    now = follow_session(str(root / "a.ipynb"), str(root / "sub" / "saved-as.ipynb"), folder, folder, LOG)
    assert (
        now.path == str(root / "sub") and pin_file.lookup(now, str(root / "sub" / "saved-as.ipynb"))["image"] == "py313"
    )
    assert "a.ipynb" in pins(root)  # the original keeps its pin

    os.rename(root / "a.ipynb", root / "b.ipynb")  # renamed where no listener saw it
    assert follow_session(str(root / "a.ipynb"), str(root / "b.ipynb"), folder, folder, LOG) is folder
    assert set(pins(root)) == {"b.ipynb"}

    notebook(root / "c.ipynb")
    pin_file.record(root, "c.ipynb", {"image": "py311"})
    follow_session(str(root / "b.ipynb"), str(root / "c.ipynb"), folder, folder, LOG)
    assert pins(root)["c.ipynb"]["image"] == "py311" and pins(root)["b.ipynb"]["image"] == "py313"
    now.close()
    folder.close()
