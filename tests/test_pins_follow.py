"""A pin follows its notebook through jupyter_server's real contents API, and never pins a notebook that took a
gone one's name (issue 30, item 1).

The server is a real jupyter_server (``testutils.server``) with envpin's
server extension enabled as its shipped config file enables it; renames are
made as JupyterLab makes them (``PATCH /api/contents`` then the session's
path), kernels are restarted over REST, and every image claim is checked
from inside the kernel (its Python version and ``ENVPIN_IMAGE``).
"""

from __future__ import annotations

import json
import os

import requests

from testutils import PY311, PY313, wait_for

WHERE = "import sys, os; print('where', sys.version_info[:2], os.environ['ENVPIN_IMAGE'])"
#: What the shipped jupyter_server_config.d/envpin.json sets (a checkout's venv may predate it).
EXTENSION = "--ServerApp.jpserver_extensions={'envpin_provisioner': True}"


def pins(folder) -> dict:
    path = folder / ".envpin.json"
    return json.loads(path.read_text())["notebooks"] if path.exists() else {}


def new_notebook(srv, folder="") -> str:
    """A new untitled notebook made by the contents API (what JupyterLab's launcher does); its path."""
    r = requests.post(srv.api(f"contents/{folder}"), json={"type": "notebook"}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["path"]


def test_a_pin_follows_renames_moves_copies_and_deletes(server, install_kernelspec, docker_client):
    name = install_kernelspec(PY313, name="py313k")
    srv = server(EXTENSION)
    root = srv.root
    (root / "sub").mkdir()
    untitled = new_notebook(srv)
    assert untitled == "Untitled.ipynb"
    session = srv.start_session(name, untitled)
    kid = session["kernel"]["id"]
    status, out = srv.execute(kid, f"%load_ext envpin\n%use_image {PY311}")
    assert status == "ok" and f"moving this kernel into {PY311}" in out, out
    assert set(pins(root)) == {"Untitled.ipynb"}

    # JupyterLab's first save asks for a name: a rename through the contents API, then the session's path.
    srv.rename("Untitled.ipynb", "analysis.ipynb", session["id"])
    wait_for(lambda: set(pins(root)) == {"analysis.ipynb"}, 10, "the pin to follow the rename")
    srv.restart(kid)
    status, out = srv.execute(kid, WHERE)
    assert f"where (3, 11) {PY311}" in out, out
    assert "pinned by the entry 'analysis.ipynb'" in out and str(root / ".envpin.json") in out  # the first output

    # The next new notebook is called Untitled.ipynb again: it starts in its own kernelspec's image.
    assert new_notebook(srv) == "Untitled.ipynb"
    other = srv.start_kernel(name, "Untitled.ipynb")
    assert "where (3, 13)" in srv.execute(other, WHERE)[1]

    # Dragged into a folder in the file browser while its kernel runs: the pin goes along, a restart finds it.
    srv.rename("analysis.ipynb", "sub/analysis.ipynb", session["id"])
    # pin_file.transfer writes the destination first and the source after (a failure between leaves the pin
    # in both, never in neither): wait for both writes, then check each (a plain assert raced the second).
    wait_for(lambda: set(pins(root / "sub")) == {"analysis.ipynb"} and not pins(root), 10, "the pin to follow the move")
    assert set(pins(root / "sub")) == {"analysis.ipynb"} and pins(root) == {}
    srv.restart(kid)
    assert f"where (3, 11) {PY311}" in srv.execute(kid, WHERE)[1]

    # Duplicate: the copy runs where its original runs; delete: the pin goes with the notebook.
    r = requests.post(srv.api("contents/sub"), json={"copy_from": "sub/analysis.ipynb"}, timeout=30)
    assert r.status_code == 201 and r.json()["path"] == "sub/analysis-Copy1.ipynb", r.text
    wait_for(lambda: "analysis-Copy1.ipynb" in pins(root / "sub"), 10, "the pin to follow the copy")
    copy = srv.start_kernel(name, "sub/analysis-Copy1.ipynb")
    assert f"where (3, 11) {PY311}" in srv.execute(copy, WHERE)[1]
    assert requests.delete(srv.api("contents/sub/analysis-Copy1.ipynb"), timeout=30).status_code == 204
    wait_for(lambda: set(pins(root / "sub")) == {"analysis.ipynb"}, 10, "the pin to go with the deleted copy")
    for k in (kid, other, copy):
        requests.delete(srv.api(f"kernels/{k}"), timeout=60)


def test_a_notebook_renamed_behind_jupyters_back_leaves_no_pin_for_the_next_of_its_name(
    server, install_kernelspec, docker_client
):
    """The newcomer's report: a pinned Untitled.ipynb renamed outside Jupyter (a terminal, git), then a new
    Untitled.ipynb from the launcher started in the old one's image, and its own packages were missing."""
    name = install_kernelspec(PY313, name="py313k")
    srv = server(EXTENSION)
    root = srv.root
    new_notebook(srv)
    kid = srv.start_kernel(name, "Untitled.ipynb")
    assert srv.execute(kid, f"%load_ext envpin\n%use_image {PY311}")[0] == "ok"
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
    os.rename(root / "Untitled.ipynb", root / "renamed-in-a-terminal.ipynb")  # the server sees nothing
    assert "Untitled.ipynb" in pins(root)  # the entry is still there, under the old name

    assert new_notebook(srv) == "Untitled.ipynb"
    fresh = srv.start_kernel(name, "Untitled.ipynb")
    assert "where (3, 13)" in srv.execute(fresh, WHERE)[1]
    assert "was made for another file of that name" in srv.log_text()
    requests.delete(srv.api(f"kernels/{fresh}"), timeout=60)
    # ... while the same notebook, rewritten by git (a new file with its %use_image line), keeps its pin.
    data = (root / "renamed-in-a-terminal.ipynb").read_text()
    nb = json.loads(data)
    nb["cells"] = [{"cell_type": "code", "source": f"%load_ext envpin\n%use_image {PY311}", "metadata": {},
                    "outputs": [], "execution_count": None}]  # fmt: skip
    os.unlink(root / "Untitled.ipynb")
    (root / "Untitled.ipynb").write_text(json.dumps(nb))
    again = srv.start_kernel(name, "Untitled.ipynb")
    assert f"where (3, 11) {PY311}" in srv.execute(again, WHERE)[1]
    requests.delete(srv.api(f"kernels/{again}"), timeout=60)


def test_save_as_gives_the_new_file_the_pin_of_its_kernel(server, install_kernelspec, docker_client):
    """JupyterLab's "Save As" saves the notebook under a new path and points the session there (for the event
    bus a plain save, not a copy): the kernel's next restart carries the pin to the new file."""
    name = install_kernelspec(PY313, name="py313k")
    srv = server(EXTENSION)
    root = srv.root
    new_notebook(srv)
    session = srv.start_session(name, "Untitled.ipynb")
    kid = session["kernel"]["id"]
    assert srv.execute(kid, f"%load_ext envpin\n%use_image {PY311}")[0] == "ok"
    model = requests.get(srv.api("contents/Untitled.ipynb"), timeout=30).json()
    r = requests.put(srv.api("contents/copy-of-it.ipynb"), json={"type": "notebook", "format": "json",
                     "content": model["content"]}, timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    r = requests.patch(srv.api(f"sessions/{session['id']}"), json={"path": "copy-of-it.ipynb",
                       "name": "copy-of-it.ipynb"}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    srv.restart(kid)
    out = srv.execute(kid, WHERE)[1]
    assert f"where (3, 11) {PY311}" in out and "pinned by the entry 'copy-of-it.ipynb'" in out, out
    assert set(pins(root)) == {"Untitled.ipynb", "copy-of-it.ipynb"}  # the original keeps its own
    requests.delete(srv.api(f"kernels/{kid}"), timeout=60)
