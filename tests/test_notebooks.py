"""The notebooks in notebooks/ run, headless, in the Containerized Python kernel, with outputs checked."""

from __future__ import annotations

import shutil

import nbformat
from nbclient import NotebookClient

from conftest import ROOT


def test_quickstart_runs_in_the_demo_image(install_kernelspec, tmp_path, docker_client):
    name = install_kernelspec(None, name="containerized-python")  # the generic kernel: default image
    work = tmp_path / "quickstart"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", work)
    nb = nbformat.read(work / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, kernel_name=name, timeout=120, resources={"metadata": {"path": str(work)}}).execute()
    text = "\n".join(
        o.get("text") or o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )
    demo_id = docker_client.images.get("ubuntu-22.04-py3").id
    assert "envpin: pinned to ubuntu-22.04-py3" in text
    assert "in a container: True" in text
    assert f"image id      : {demo_id}" in text
    assert "python        : 3.11." in text
    assert f"working dir   : {work}" in text
    assert "cloudpickle 3." in text and "pickled a function" in text
    assert (work / ".envpin.json").exists()
    assert text.count("job -> (") == 4 and f"'ubuntu-22.04-py3', '{demo_id[:19]}')" in text  # jobs ran in the image
    assert "'YT_JOB_DOCKER_IMAGE': 'ubuntu-22.04-py3'" in text


def test_environment_mismatch_notebook_shows_the_refusal(jupyter_env, tmp_path, docker_client):
    work = tmp_path / "mismatch"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "environment_mismatch.ipynb", work)
    nb = nbformat.read(work / "environment_mismatch.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(work)}}).execute()
    text = "\n".join(
        o.get("text") or o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )
    assert "differs from it in ways that break pickles" in text
    assert "python_minor: 3.11 vs 3.13  <- breaks pickles" in text
    assert "refused: Refusing to unpickle a job made under CPython 3.11" in text and "under CPython 3.13" in text
    assert not docker_client.containers.list(all=True, filters={"label": "envpin.role=job"})  # kernel gone, workers too
