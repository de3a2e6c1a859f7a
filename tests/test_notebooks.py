"""The notebooks in notebooks/ run, headless, in the Containerized Python kernel, with outputs checked."""

from __future__ import annotations

import shutil

import nbformat
from nbclient import NotebookClient

from testutils import ROOT, containers
from testutils.notebooks import run_copy


def test_quickstart_runs_in_the_demo_image(install_kernelspec, tmp_path, docker_client):
    name = install_kernelspec(None, name="containerized-python")  # the generic kernel: default image
    text = run_copy("quickstart.ipynb", tmp_path, name, timeout=120)
    work = tmp_path / "quickstart"
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
    assert not containers(docker_client, role="job")  # kernel gone, workers too


def _run_host_notebook(name: str, tmp_path, monkeypatch) -> str:
    """Execute notebooks/NAME in the host's python3 kernel (where the engine clients are); its outputs as text."""
    monkeypatch.setenv("ENVPIN_TESTS", str(ROOT / "tests"))  # where the YTsaurus notebook finds the fake proxy
    monkeypatch.delenv("YT_PROXY", raising=False)
    return run_copy(name, tmp_path, "python3", timeout=240)


def test_ytsaurus_notebook_shows_jobs_that_ran_in_the_image(install_kernelspec, tmp_path, docker_client):
    """In a Containerized kernel of the YTsaurus image, against the fake cluster whose exec node runs the jobs."""
    from testutils.fake_yt import FakeYtProxy

    work = tmp_path / "ytsaurus_jobs"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "ytsaurus_jobs.ipynb", work)
    with FakeYtProxy(exec_node=docker_client) as cluster:
        name = install_kernelspec("envpin-test/yt", network_mode="host", environment={"YT_PROXY": cluster.url})
        nb = nbformat.read(work / "ytsaurus_jobs.ipynb", as_version=4)
        NotebookClient(nb, kernel_name=name, timeout=240, resources={"metadata": {"path": str(work)}}).execute()
        ran = list(cluster.exec_node.jobs_run)
    text = "\n".join(
        o.get("text") or o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )
    assert "pickler: cloudpickle" in text and "docker_image: envpin-test/yt" in text
    rows = [line for line in text.splitlines() if line.startswith("row from the job:")]
    assert len(rows) == 3 and all("'image': 'envpin-test/yt'" in r and "'in_container': True" in r for r in rows), text
    assert "this kernel     : python 3.11.2 in envpin-test/yt" in text and all("'python': '3.11.2'" in r for r in rows)
    assert "ImageConflictWarning: YTsaurus mapper job names image 'registry.example/team/other:2'" in text
    assert ran[0]["image"] == "envpin-test/yt"


def test_ray_notebook_runs_a_task_and_shows_the_refusal(jupyter_env, tmp_path, monkeypatch, docker_client):
    text = _run_host_notebook("ray_jobs.ipynb", tmp_path, monkeypatch)
    demo_id = docker_client.images.get("ubuntu-22.04-py3").id
    assert f"task ran with ('ubuntu-22.04-py3', '{demo_id[:19]}')" in text
    assert "refused: Ray task" in text and "'pip'" in text and "--ray-mode env_vars" in text


def test_flyte_notebook_runs_its_workflow_in_the_image(jupyter_env, tmp_path, monkeypatch, docker_client):
    text = _run_host_notebook("flyte_tasks.ipynb", tmp_path, monkeypatch)
    assert "pipeline(x=21) -> 42, computed by Python 3.11.2 in envpin-test/flyte" in text, text
    lines = {
        line.split("image:")[0].strip(): line.split("image:")[1].strip()
        for line in text.splitlines()
        if "image:" in line
    }
    assert lines.get("double") == lines.get("where") == "envpin-test/flyte:latest", text
    assert lines.get("train") == "registry.example/team/gpu:7", text


def test_dask_notebook_runs_a_cluster_in_the_image_and_refuses_another(
    jupyter_env, tmp_path, monkeypatch, docker_client
):
    """In a host kernel: envpin.DaskCluster's containers run the tasks, scale adds workers, a 3.13 cluster is refused."""
    text = _run_host_notebook("dask_cluster.ipynb", tmp_path, monkeypatch)
    image_id = docker_client.images.get("envpin-test/dask:latest").id
    assert f"task ran in Python 3.11.2, image {image_id}, marker dask-py311" in text, text
    assert "workers after scale(3): 3, all in the image: True" in text, text
    assert "dashboard: http://127.0.0.1:" in text
    assert "refused: The Dask cluster at tls://127.0.0.1:" in text and "Python 3.13.5" in text
    assert not containers(docker_client, role="dask-worker") and not containers(docker_client, role="dask-scheduler")
