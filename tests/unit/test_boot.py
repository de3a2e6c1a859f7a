"""envpin.entry.boot: a process envpin starts imports nothing from its working folder (issue 22 finding 2, 31 finding 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from envpin.entry import boot
from envpin.host.container_spec import base_options


@pytest.fixture
def planted(tmp_path):
    """A working folder with a planted `json` package and start-up hooks that leave markers if run."""
    marker = tmp_path / "markers"
    marker.mkdir()
    work = tmp_path / "work"
    (work / "json").mkdir(parents=True)
    hook = "import os; open(os.path.join({!r}, {!r}), 'w').close()\n"
    (work / "json" / "__init__.py").write_text(hook.format(str(marker), "json"))
    (work / "sitecustomize.py").write_text(hook.format(str(marker), "sitecustomize"))
    (work / "evil.pth").write_text("import os; os.makedirs(%r)\n" % str(marker / "pth"))
    return work, marker


@pytest.mark.parametrize("pythonpath", [None, "/nonexistent"])
def test_nothing_is_imported_from_the_working_folder(planted, pythonpath):
    work, marker = planted
    out = _run_json_tool(work, pythonpath)
    assert out.returncode == 0, out.stderr
    assert '"a": 1' in out.stdout
    assert not os.listdir(marker), "planted code ran"


@pytest.mark.parametrize("pythonpath", [":/nonexistent", "/nonexistent::", "."])
def test_a_pythonpath_naming_the_working_folder_does_not_bring_it_back(planted, pythonpath):
    """An empty or relative PYTHONPATH entry means the working folder: the module envpin runs still comes from
    the real path.  (``site`` reads such an entry before any code of ours runs, so a planted
    ``sitecustomize`` would: that is why no container envpin starts has one, see the last test.)"""
    work, marker = planted
    out = _run_json_tool(work, pythonpath)
    assert out.returncode == 0, out.stderr
    assert "json" not in os.listdir(marker)


def _run_json_tool(work, pythonpath):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        boot.argv(sys.executable, "json.tool"), cwd=work, input='{"a": 1}', capture_output=True, text=True, env=env
    )


def test_plain_python_m_would_have_run_it(planted):
    """The test above can fail: the same folder under ``python -m`` runs the planted package."""
    work, marker = planted
    subprocess.run([sys.executable, "-m", "json.tool"], cwd=work, input="{}", capture_output=True, text=True)
    assert os.listdir(marker) == ["json"]


def test_a_missing_module_is_one_line_as_python_m_says_it(tmp_path):
    out = subprocess.run(boot.argv(sys.executable, "no_such_module_here"), cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{sys.executable}: No module named no_such_module_here"


def test_the_images_pythonpath_keeps_only_absolute_entries():
    options = base_options(
        image_id="sha256:1", reference="img", immutable="sha256:1", role="kernel", image_env=["PYTHONPATH=:/app:rel:"]
    )
    assert options["environment"]["PYTHONPATH"] == "/opt/envpin/python:/app"
