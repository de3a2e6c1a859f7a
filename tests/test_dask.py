"""Dask on the real engine: envpin.DaskCluster's containers, the check at Client connect, late joiners, cleanup.

Everything here is real: ``distributed`` in the test process (the client) and in the test images (scheduler and
workers, each in its own container of the image, created by envpin), a Containerized Python kernel as a client,
dask-jobqueue's own local job runner starting workers with ``docker run`` as a batch node would with podman.
Tasks report where they ran from inside: the interpreter, ``ENVPIN_IMAGE_ID`` and /opt/envpin-dask-marker, a file
only the Dask test images have, holding the image's own word.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import docker.errors
import pytest

from envpin import names
from envpin.adapters import dask_adapter
from envpin.errors import ClusterMismatch
from envpin.session import stamping, state
from testutils import ROOT, wait_for
from testutils.kernels import kernel, run, run_json
from tools.images import DASK_MARKER

DASK = "envpin-test/dask:latest"
DASK313 = "envpin-test/dask313:latest"
DASK_CLOUDPICKLE2 = "envpin-test/dask-cloudpickle2:latest"

pytestmark = pytest.mark.usefixtures("docker_client")


#: A task that says what runs it.  Kept as source and executed into a module nobody can import, so that
#: Dask ships it by value (a function of this test module would travel by reference, and no worker or scheduler
#: can import the tests); the kernel test runs the same source in the kernel.
WHERE = """
def where():
    import os, platform, sys
    with open("/opt/envpin-dask-marker") as fh:
        marker = fh.read().strip()
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "image_id": os.environ.get("ENVPIN_IMAGE_ID"),
        "marker": marker,
        "in_container": os.path.exists("/.dockerenv"),
    }
"""
_tasks: dict = {"__name__": "envpin_dask_test_tasks"}
exec(WHERE, _tasks)
where = _tasks["where"]


def _facts(image: str) -> dict:
    from envpin.compat import fingerprints

    return fingerprints.fingerprint(image=image)


@pytest.fixture
def pinned(docker_client, monkeypatch):
    """This (host) process pinned to envpin-test/dask, with the Dask adapter armed, as %use_image on a host does."""
    monkeypatch.setattr(stamping, "_registry", {})
    monkeypatch.setattr(stamping, "_active", {})
    adapter = dask_adapter.DaskAdapter()
    stamping.register(adapter)
    facts = _facts(DASK)
    stamping.pin_session(
        state.Pin(
            name=DASK,
            reference=DASK,
            image_id=facts["image_id"],
            python=facts["python_version"],
            cloudpickle=facts["cloudpickle"],
            mode="host",
        )
    )
    yield adapter
    stamping.unpin_session()


def _cluster_containers(docker_client, cluster) -> list:
    label = f"{names.LABEL_DASK_CLUSTER}={cluster.name}"
    return docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True)


def _listening(pids: set[int]) -> list[str]:
    """Local addresses the processes ``pids`` listen on (TCP), from ``ss`` on the host (they share its network)."""
    out = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found


def _pids(container) -> set[int]:
    return {int(row[1]) for row in container.top(ps_args="-eo user,pid")["Processes"]}


def test_cluster_runs_scheduler_and_workers_in_the_image_on_loopback_scales_and_leaves_nothing(pinned, docker_client):
    from distributed import Client

    import envpin

    image_id = docker_client.images.get(DASK).id
    started = time.monotonic()
    cluster = envpin.DaskCluster(n_workers=1)
    try:
        client = Client(cluster)
        startup = time.monotonic() - started
        first = client.submit(where, pure=False).result(timeout=60)
        assert first == {
            "python": "3.11.2",
            "executable": "/opt/python/bin/python3",
            "image_id": image_id,
            "marker": "dask-py311",
            "in_container": True,
        }, first
        roles = sorted(c.labels[names.LABEL_ROLE] for c in _cluster_containers(docker_client, cluster))
        assert roles == ["dask-scheduler", "dask-worker"]
        assert all(c.attrs["HostConfig"]["NetworkMode"] == "host" for c in _cluster_containers(docker_client, cluster))

        cluster.scale(3)
        client.wait_for_workers(3, timeout=120)
        workers = list(client.scheduler_info()["workers"])
        assert len(workers) == 3
        per_worker = [client.submit(where, workers=[w], pure=False, allow_other_workers=False) for w in workers]
        assert {r["marker"] for r in client.gather(per_worker)} == {"dask-py311"}
        assert {r["image_id"] for r in client.gather(per_worker)} == {image_id}
        assert len([c for c in _cluster_containers(docker_client, cluster) if c.status == "running"]) == 4

        # Nothing of the cluster listens anywhere but on loopback.
        pids = set().union(*(_pids(c) for c in _cluster_containers(docker_client, cluster)))
        addresses = _listening(pids)
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")  # its own certificate: tests/security
        link = cluster.dashboard_link
        assert link.startswith("http://127.0.0.1:"), link
        with urllib.request.urlopen(link, timeout=10) as page:
            assert page.status == 200 and b"Dask" in page.read()
        client.close()
    finally:
        cluster.close()
    assert _cluster_containers(docker_client, cluster) == []
    assert startup < 60


def test_a_cluster_of_another_python_is_refused_at_connect_before_any_task(pinned, docker_client):
    from distributed import Client

    import envpin

    cluster = envpin.DaskCluster(n_workers=1, image=DASK313)
    try:
        started = time.monotonic()
        with pytest.raises(ClusterMismatch) as refused:
            try:
                Client(cluster)
            except OSError as exc:  # CommClosedError is one: say what the containers said
                logs = {c.name: c.logs().decode()[-3000:] for c in _cluster_containers(docker_client, cluster)}
                pytest.fail(f"{exc!r}; the cluster's logs: {json.dumps(logs, indent=1)}")
        took = time.monotonic() - started
        text = str(refused.value)
        assert took < 10, took
        assert "the scheduler and worker tls://127.0.0.1:" in text and "run Python 3.13.5 with cloudpickle" in text
        assert f"pinned to '{DASK}' (Python 3.11.2 with cloudpickle" in text and "measured:" in text
        assert "nothing was submitted" in text
        # No task reached a worker: the worker process never restarted (a task of a 3.11 client kills a 3.13 one).
        (worker,) = [
            c for c in _cluster_containers(docker_client, cluster) if c.labels[names.LABEL_ROLE] == "dask-worker"
        ]
        log = worker.logs().decode()
        assert log.count("Start worker at") == 1 and "was killed" not in log, log
    finally:
        cluster.close()


def test_workers_whose_cloudpickle_cannot_load_ours_are_refused(pinned, docker_client):
    from distributed import Client

    import envpin

    cluster = envpin.DaskCluster(n_workers=1, image=DASK_CLOUDPICKLE2)
    try:
        with pytest.raises(ClusterMismatch) as refused:
            Client(cluster)
        assert "run Python 3.11.2 with cloudpickle 2.2.1" in str(refused.value)
        assert "Can't get attribute" in str(refused.value)  # what the matrix measured: cloudpickle 2 loading 3
    finally:
        cluster.close()


def test_a_mismatched_worker_that_joins_later_gets_no_work_from_this_client(pinned, docker_client):
    from distributed import Client

    import envpin
    from envpin.adapters import dask_cluster

    cluster = envpin.DaskCluster(n_workers=1)
    try:
        client = Client(cluster)
        assert client.submit(where, pure=False).result(timeout=60)["marker"] == "dask-py311"
        other = dask_cluster._Plan(
            DASK313, "host", None, None, 60, cluster.containers.cluster_name, security=cluster.security
        )
        cluster.worker_spec["late-313"] = {
            "cls": dask_cluster._Worker,
            "options": {"plan": other, "nanny": True, "options": {"nthreads": 1}},
        }
        cluster.sync(cluster._correct_state)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=30)
        (late,) = [a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "late-313"]
        with pytest.raises(ClusterMismatch) as refused:
            client.submit(where, pure=False)
        text = str(refused.value)
        assert "joined after Client(...) connected; nothing of this submission was sent" in text
        assert f"worker {late} runs Python 3.13.5" in text, text
        assert not client.futures  # the graph was never sent

        # Once it is gone, work goes on, in the image.
        del cluster.worker_spec["late-313"]
        cluster.sync(cluster._correct_state)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=30)
        assert client.submit(where, pure=False).result(timeout=60)["marker"] == "dask-py311"
        client.close()
    finally:
        cluster.close()


KILLED_CLIENT = textwrap.dedent(
    """
    import os, signal, sys
    from envpin.adapters.dask_cluster import ContainerCluster
    from distributed import Client
    cluster = ContainerCluster(2, image=sys.argv[1])
    client = Client(cluster)
    print(cluster.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_containers_of_a_killed_client_are_collected_by_envpin_gc(docker_client, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "ipython_ext"), str(ROOT / "kernel_provisioner")])}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CLIENT, DASK], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    name = proc.stdout.strip().splitlines()[-1]
    label = f"{names.LABEL_DASK_CLUSTER}={name}"
    left = docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
    assert len(left) == 3  # the scheduler and two workers outlive their owner ...
    gc = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=120, env=env
    )
    assert gc.returncode == 0, gc.stderr
    assert (
        docker_client.containers.list(all=True, filters={"label": label}, ignore_removed=True) == []
    )  # ... until envpin gc


def test_jobqueue_workers_run_in_the_image_through_the_nodes_engine(pinned, docker_client):
    """dask-jobqueue's LocalCluster runs each job script as a local process, as a batch node would run it: the
    worker command envpin wrote (``docker run ... IMAGE python3 -m distributed.cli.dask_worker``) starts the
    worker in a container of the image, which joins this process's scheduler on 127.0.0.1."""
    from dask_jobqueue.local import LocalCluster as JobQueueLocalCluster
    from distributed import Client

    pinned.node_engine = "docker"
    before = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": DASK}, ignore_removed=True)}
    try:
        with JobQueueLocalCluster(
            cores=1,
            memory="1GB",
            processes=1,
            scheduler_options={"host": "127.0.0.1", "dashboard": False},
            worker_extra_args=["--host", "127.0.0.1", "--no-dashboard"],
        ) as cluster:
            assert f"docker run --rm --init --network host -e ENVPIN_IMAGE={DASK}" in cluster.job_script()
            cluster.scale(1)
            with Client(cluster) as client:
                client.wait_for_workers(1, timeout=120)
                result = client.submit(where, pure=False).result(timeout=60)
        assert result["marker"] == "dask-py311" and result["in_container"], result
        assert result["image_id"] == _facts(DASK)["image_id"]
    finally:

        def left():
            # ignore_removed: `docker run --rm` removes a worker's container between the listing and its inspection
            return [
                c
                for c in docker_client.containers.list(all=True, filters={"ancestor": DASK}, ignore_removed=True)
                if c.id not in before
            ]

        try:
            wait_for(lambda: not left(), timeout=30, what="the workers' containers to go")
        finally:
            for c in left():  # not envpin's containers (the node's engine made them): never left for the next test
                try:
                    c.remove(force=True)
                except docker.errors.NotFound:
                    pass


async def test_a_containerized_kernel_client_connects_to_its_image_and_is_refused_another(
    install_kernelspec, notebook_dir, docker_client
):
    """The client in a Containerized Python kernel of envpin-test/dask (network_mode=host: it reaches the clusters'
    loopback); the clusters started by this test on the host, one per image."""
    from envpin.adapters.dask_cluster import ContainerCluster

    name = install_kernelspec(DASK, network_mode="host")
    good = ContainerCluster(1, image=DASK)
    bad = ContainerCluster(1, image=DASK313)

    def certificate(cluster, tag: str) -> str:
        """The cluster's certificate as files in the notebook folder, and the kernel's Security of them: each
        cluster accepts only clients that present its own (tests/security/test_dask_hostile.py)."""
        paths = {}
        for field in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            path = notebook_dir / f".{tag}-{field}.pem"
            path.write_text(getattr(cluster.security, field))
            path.chmod(0o600)
            paths[field] = str(path)
        return f"Security(require_encryption=True, **{paths!r})"

    try:
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            status = await run(kc, f"%load_ext envpin\n%use_image {DASK}")
            assert status["status"] == "ok", status
            assert "dask: LocalCluster runs in this kernel's image" in status["stdout"]
            code = (
                "from distributed import Client\n"
                + "from distributed.security import Security\n"
                + WHERE
                + f"client = Client({good.scheduler_address!r}, security={certificate(good, 'good')})\n"
                + "result = client.submit(where, pure=False).result(timeout=60)\n"
                + "client.close()\n"
            )
            ok = await run(kc, code, timeout=120)
            assert ok["status"] == "ok", ok
            result = await run_json(kc, "result")
            refused = await run(
                kc, f"Client({bad.scheduler_address!r}, security={certificate(bad, 'bad')})", timeout=60
            )
            local = await run(
                kc,
                "import envpin, warnings\n"
                "with warnings.catch_warnings(record=True) as seen:\n"
                "    warnings.simplefilter('always')\n"
                "    cluster = envpin.DaskCluster(n_workers=1)\n"
                "with Client(cluster) as c:\n"
                "    local = c.submit(where, pure=False).result(timeout=60)\n"
                "cluster.close()\n"
                "print([type(w.message).__name__ for w in seen])",
                timeout=120,
            )
            assert local["status"] == "ok", local
            in_kernel = await run_json(kc, "local")
    finally:
        good.close()
        bad.close()
    assert result["marker"] == "dask-py311" and result["image_id"] == docker_client.images.get(DASK).id
    assert refused["status"] == "error" and refused["ename"] == "ClusterMismatch", refused
    assert "Python 3.13.5" in refused["evalue"] and "nothing was submitted" in refused["evalue"]
    assert "DaskClusterInImage" in local["stdout"] and in_kernel["marker"] == "dask-py311"


def test_marker_constant_matches_the_images():
    assert DASK_MARKER == "/opt/envpin-dask-marker"
