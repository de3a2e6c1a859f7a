"""Dask without an engine: the judgement of a cluster's versions, and the image each cluster manager is given.

Each cluster manager is driven through its real client library (dask-kubernetes, dask-gateway, dask-jobqueue,
coiled).  No Kubernetes, gateway, batch queue or Coiled account can run here, so what is checked is what the real
library would send: the DaskCluster resource kr8s POSTs to a fake Kubernetes API on 127.0.0.1 (which answers 404,
as an API without Dask's resource definitions would), the cluster request dask-gateway POSTs to a fake gateway on
127.0.0.1, the job script dask-jobqueue writes, and the container and environment coiled.Cluster holds before it
talks to Coiled's service.  The job script is also run for real, in containers, by tests/test_dask.py.
"""

from __future__ import annotations

import http.server
import json
import platform
import threading
import warnings
from importlib.metadata import version

import pytest

from envpin.adapters import dask_adapter, dask_check
from envpin.compat import policy
from envpin.errors import ClusterMismatch
from envpin.session import stamping, state

IMAGE = "registry.example/team/dask:1"
IMAGE_ID = "registry.example/team/dask@sha256:" + "d" * 64


def _versions(python: str, cloudpickle: str, dask: str = "2026.8.0", distributed: str = "2026.8.0") -> dict:
    """One entry of Dask's version RPC, as ``distributed.versions.get_versions`` writes it."""
    return {
        "host": {"python": f"{python}.final.0", "OS": "Linux"},
        "packages": {
            "python": f"{python}.final.0",
            "cloudpickle": cloudpickle,
            "dask": dask,
            "distributed": distributed,
        },
    }


# ---- the judgement ----------------------------------------------------------------------------------


def test_a_cluster_of_another_python_minor_is_refused_naming_each_process_and_both_sides():
    pinned = dask_check.Environment("3.11.2", "3.1.3")
    processes = {
        "the scheduler": dask_check.Environment.of_versions(_versions("3.13.5", "3.1.3")),
        "worker tcp://127.0.0.1:4001": dask_check.Environment.of_versions(_versions("3.13.5", "3.1.3")),
    }
    findings = dask_check.judge(pinned, processes, "compatible")
    assert [f.refused for f in findings] == [True]
    error = dask_check.refusal("tcp://127.0.0.1:8786", IMAGE, pinned, findings, "Nothing was submitted.")
    text = str(error)
    assert isinstance(error, ClusterMismatch)
    assert "the scheduler and worker tcp://127.0.0.1:4001 run Python 3.13.5 with cloudpickle 3.1.3" in text
    assert f"pinned to '{IMAGE}' (Python 3.11.2 with cloudpickle 3.1.3)" in text and "measured:" in text
    assert text.endswith("Nothing was submitted.") and "\n" not in text


def test_workers_whose_cloudpickle_cannot_load_cloudpickle_3_are_refused_as_measured():
    pinned = dask_check.Environment("3.11.2", "3.1.3")
    workers = {"worker a": dask_check.Environment.of_versions(_versions("3.11.2", "2.2.1"))}
    (finding,) = dask_check.judge(pinned, workers, "compatible")
    assert finding.refused and "_function_setstate" in finding.evidence or "_class_setstate" in finding.evidence


def test_the_same_environment_passes_and_an_unmeasured_release_warns_once():
    pinned = dask_check.Environment("3.11.2", "3.1.3")
    assert dask_check.judge(pinned, {"w": dask_check.Environment("3.11.7", "3.1.3")}, "compatible") == []
    unknown = {"worker b": dask_check.Environment("3.11.2", "3.9.9")}
    findings = dask_check.judge(pinned, unknown, "compatible")
    assert [(f.refused, f.unmeasured) for f in findings] == [(False, True)]
    dask_check._warned.clear()
    with pytest.warns(policy.UnmeasuredPairWarning, match="worker b .* not measured"):
        dask_check.warn_unmeasured("tcp://x:1", IMAGE, pinned, findings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dask_check.warn_unmeasured("tcp://x:1", IMAGE, pinned, findings)  # once per pair
    assert [f.refused for f in dask_check.judge(pinned, unknown, "strict")] == [True]  # strict refuses it


def test_another_dask_release_warns_once_and_is_not_refused():
    pinned = dask_check.Environment("3.11.2", "3.1.3", "2026.8.0", "2026.8.0")
    other = {"worker c": dask_check.Environment("3.11.2", "3.1.3", "2025.1.0", "2025.1.0")}
    dask_check._warned.clear()
    assert dask_check.judge(pinned, other, "compatible") == []
    with pytest.warns(dask_check.DaskVersionWarning, match="dask 2025.1.0 / distributed 2025.1.0"):
        dask_check.warn_dask_versions("tcp://x:1", IMAGE, pinned, other)


def test_what_a_cluster_reports_is_data():
    env = dask_check.Environment.of_versions({"packages": {"python": "3.11.2\x1b[2J\n", "cloudpickle": ["x"] * 50}})
    assert env is not None and env.python == "3.11.2[2J" and "\n" not in str(env.cloudpickle)
    assert dask_check.Environment.of_versions("not a dict") is None


# ---- the image for each cluster manager ---------------------------------------------------------------


@pytest.fixture
def pinned(monkeypatch):
    """The session pinned to IMAGE, with only the Dask adapter registered (the others are not under test)."""
    monkeypatch.setattr(stamping, "_registry", {})
    monkeypatch.setattr(stamping, "_active", {})
    adapter = dask_adapter.DaskAdapter()
    stamping.register(adapter)
    pin = state.Pin(
        name=IMAGE,
        reference=IMAGE,
        image_id=IMAGE_ID,
        python=platform.python_version(),
        cloudpickle=version("cloudpickle"),
        mode="host",
    )
    stamping.pin_session(pin)
    yield adapter
    stamping.unpin_session()


class _Recorder(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that records every request and answers with ``answer(method, path)``."""

    def __init__(self, answer):
        recorder = self
        self.requests: list[tuple[str, str, object]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.requests.append((self.command, self.path, json.loads(body) if body else None))
                code, data = answer(self.command, self.path)
                out = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                try:
                    self.wfile.write(out)
                except BrokenPipeError:
                    pass

            do_GET = do_POST = do_DELETE = do_PATCH = _serve

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def posted(self, path_part: str) -> list:
        return [body for method, path, body in self.requests if method == "POST" and path_part in path]


@pytest.fixture
def fake_kubernetes(tmp_path, monkeypatch):
    """A Kubernetes API without Dask's resource definitions: /version answers, everything else is 404."""

    def answer(method, path):
        if path.startswith("/version"):
            return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
        return 404, {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound",
            "code": 404,
        }

    server = _Recorder(answer)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "fake", "user": "u", "namespace": "default"}}],
        "current-context": "c",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    yield server
    server.shutdown()


def _kube_cluster_posted(fake_kubernetes, **kwargs) -> dict:
    from dask_kubernetes.operator import KubeCluster

    with pytest.raises(Exception, match="could not find the requested resource"):  # no Dask CRDs on the fake API
        KubeCluster(name="demo", n_workers=1, quiet=True, **kwargs)
    (resource,) = fake_kubernetes.posted("/daskclusters")
    return resource


def test_kubecluster_resource_names_the_pinned_image_and_its_variables(pinned, fake_kubernetes):
    resource = _kube_cluster_posted(fake_kubernetes, env={"MINE": "1"})
    for role in ("scheduler", "worker"):
        (container,) = resource["spec"][role]["spec"]["containers"]
        assert container["image"] == IMAGE, container
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"MINE": "1", "ENVPIN_IMAGE": IMAGE, "ENVPIN_IMAGE_ID": IMAGE_ID, "YT_JOB_DOCKER_IMAGE": IMAGE}


def test_kubecluster_with_its_own_image_keeps_it_with_the_warning(pinned, fake_kubernetes):
    with pytest.warns(stamping.ImageConflictWarning, match="KubeCluster names image 'ghcr.io/me/other:2'"):
        resource = _kube_cluster_posted(fake_kubernetes, image="ghcr.io/me/other:2")
    assert resource["spec"]["worker"]["spec"]["containers"][0]["image"] == "ghcr.io/me/other:2"
    assert resource["spec"]["worker"]["spec"]["containers"][0]["env"] == []


def test_kubecluster_unpinned_is_the_library_default(fake_kubernetes):
    stamping.unpin_session()
    resource = _kube_cluster_posted(fake_kubernetes)
    assert resource["spec"]["worker"]["spec"]["containers"][0]["image"] == "ghcr.io/dask/dask:latest"


@pytest.fixture
def fake_gateway():
    """A Dask Gateway whose deployment offers 'image' and 'environment' cluster options."""
    options = [
        {
            "field": "image",
            "default": "ghcr.io/dask/dask-gateway:2026.3.0",
            "label": "Image",
            "spec": {"type": "string"},
        },
        {"field": "environment", "default": {}, "label": "Environment", "spec": {"type": "mapping"}},
        {"field": "worker_cores", "default": 1, "label": "Cores", "spec": {"type": "int", "min": 1, "max": 4}},
    ]

    def answer(method, path):
        if path.startswith("/api/v1/options"):
            return 200, {"cluster_options": options}
        if method == "POST" and path.startswith("/api/v1/clusters"):
            return 201, {"name": "cluster-1"}
        return 404, {"error": "no such thing"}

    server = _Recorder(answer)
    yield server
    server.shutdown()


def test_gateway_cluster_request_names_the_pinned_image_and_merges_the_environment(pinned, fake_gateway):
    from dask_gateway import Gateway

    gateway = Gateway(fake_gateway.url, auth="basic")
    assert gateway.submit(environment={"MINE": "1"}, worker_cores=2) == "cluster-1"
    options = gateway.cluster_options()
    options.worker_cores = 3
    gateway.submit(cluster_options=options)
    first, second = fake_gateway.posted("/api/v1/clusters")
    assert first["cluster_options"]["image"] == IMAGE and first["cluster_options"]["worker_cores"] == 2
    assert first["cluster_options"]["environment"] == {"MINE": "1", **pinned.stamp.env}
    assert second["cluster_options"]["image"] == IMAGE and second["cluster_options"]["worker_cores"] == 3
    assert second["cluster_options"]["environment"] == pinned.stamp.env
    gateway.close()


def test_gateway_option_the_user_chose_is_kept_with_the_warning(pinned, fake_gateway):
    from dask_gateway import Gateway

    gateway = Gateway(fake_gateway.url, auth="basic")
    options = gateway.cluster_options()
    options.image = "ghcr.io/me/other:2"
    with pytest.warns(stamping.ImageConflictWarning, match="Dask Gateway cluster names image 'ghcr.io/me/other:2'"):
        gateway.submit(cluster_options=options)
    (sent,) = fake_gateway.posted("/api/v1/clusters")
    assert sent["cluster_options"]["image"] == "ghcr.io/me/other:2" and sent["cluster_options"]["environment"] == {}
    gateway.close()


def test_jobqueue_job_script_runs_the_worker_in_the_image(pinned, monkeypatch):
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(cores=1, memory="1GB", scheduler_options={"host": "127.0.0.1", "dashboard": False}) as cluster:
        script = cluster.job_script()
    line = next(x for x in script.splitlines() if "distributed.cli.dask_worker" in x)
    assert line.startswith(
        f"podman run --rm --network host -e ENVPIN_IMAGE={IMAGE} -e ENVPIN_IMAGE_ID={IMAGE_ID} "
        f"-e YT_JOB_DOCKER_IMAGE={IMAGE} {IMAGE} python3 -m distributed.cli.dask_worker tcp://127.0.0.1:"
    ), script

    pinned.node_engine = "apptainer"
    with SLURMCluster(cores=1, memory="1GB", scheduler_options={"host": "127.0.0.1", "dashboard": False}) as cluster:
        script = cluster.job_script()
    assert f"apptainer exec --cleanenv --env ENVPIN_IMAGE={IMAGE} " in script
    assert f"docker://{IMAGE} python3 -m distributed.cli.dask_worker" in script

    with pytest.warns(stamping.ImageConflictWarning, match="workers run '/opt/conda/bin/python' on the nodes"):
        cluster = SLURMCluster(
            cores=1, memory="1GB", python="/opt/conda/bin/python", scheduler_options={"host": "127.0.0.1"}
        )
    with cluster:
        assert "/opt/conda/bin/python -m distributed.cli.dask_worker" in cluster.job_script()


def test_a_bad_node_engine_is_reported_by_the_pin(monkeypatch):
    monkeypatch.setenv("ENVPIN_DASK_NODE_ENGINE", "kubectl")
    with pytest.raises(Exception, match="ENVPIN_DASK_NODE_ENGINE is 'kubectl'"):
        dask_adapter.default_node_engine()


def test_coiled_cluster_gets_the_image_as_its_container(pinned):
    """coiled.Cluster(asynchronous=True) holds what it would send to Coiled's service and sends nothing yet."""
    import asyncio

    import coiled

    async def unstarted(**options):
        return coiled.Cluster(name="demo", n_workers=1, asynchronous=True, show_widget=False, **options)

    cluster = asyncio.run(unstarted(environ={"MINE": "1"}))
    assert cluster.software_container == IMAGE and not cluster.package_sync
    assert cluster.environ["MINE"] == "1" and cluster.environ["ENVPIN_IMAGE_ID"] == IMAGE_ID, cluster.environ

    with pytest.warns(stamping.ImageConflictWarning, match="coiled.Cluster runs the software environment 'mine'"):
        own = asyncio.run(unstarted(software="mine"))
    assert own.software_container is None and own.software_environment == "mine"


def test_status_says_which_cluster_runs_in_the_image(pinned):
    text = pinned.describe()
    assert "envpin.DaskCluster() runs scheduler and workers in containers of the image" in text
    assert "KubeCluster, Dask Gateway, dask-jobqueue (podman), coiled" in text


def test_the_cluster_key_travels_as_files_only_its_user_reads_and_the_environment_names_only_paths():
    """envpin.DaskCluster's certificate: a tar for put_archive (folder 0500, files 0400, the container's user),
    and Dask variables that require TLS and point at the files; the key itself is in no variable."""
    import io
    import tarfile

    from envpin import names
    from envpin.adapters import dask_cluster

    security = dask_cluster.temporary_security()
    archive = tarfile.open(fileobj=io.BytesIO(dask_cluster.tls_archive(security, 1234, 5678)))
    members = {m.name: (m.mode, m.uid, m.gid, m.isdir()) for m in archive.getmembers()}
    folder = names.CONTAINER_DASK_TLS.rsplit("/", 1)[1]
    assert members == {
        folder: (0o500, 1234, 5678, True),
        **{f"{folder}/{f}": (0o400, 1234, 5678, False) for f in ("ca.pem", "cert.pem", "key.pem")},
    }
    key = archive.extractfile(f"{folder}/key.pem").read().decode()
    assert key == security.tls_worker_key and "PRIVATE KEY" in key
    env = dask_cluster.tls_environment()
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY"] == f"{names.CONTAINER_DASK_TLS}/key.pem"
    assert all(v.startswith(names.CONTAINER_DASK_TLS) for k, v in env.items() if k.endswith(("CERT", "KEY", "FILE")))
    assert not any("BEGIN" in v for v in env.values())
    assert "distributed.http.proxy" not in env["DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"]
    # Dask reads the variables as its configuration (the names are Dask's own keys: envpin.internals checks them).
    import dask.config

    config = dask.config.collect_env(env)
    assert config["distributed"]["comm"]["require_encryption"] is True
    assert config["distributed"]["scheduler"]["http"]["routes"] == list(dask_cluster.DASK_DASHBOARD_ROUTES)
    # Each cluster its own key.
    assert dask_cluster.temporary_security().tls_worker_key != key


def test_a_connect_the_scheduler_dropped_is_explained_by_the_clusters_versions(pinned, monkeypatch):
    """A scheduler of another Python may drop the client's stream while registering it (tests/test_dask.py saw a
    3.13 scheduler do so to a 3.11 client, one start in three): envpin then asks that address its versions and
    refuses as the check at connect would; a cluster that matches, or answers nothing, leaves the error as it was.
    A real scheduler in this process, without workers (no engine in this tier)."""
    import asyncio
    import types

    from distributed import Scheduler
    from distributed.comm.core import CommClosedError

    dropped = CommClosedError("in <TLS Client->Scheduler>: Stream is closed")

    async def go():
        async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
            client = types.SimpleNamespace(cluster=None, _start_arg=scheduler.address, connection_args={})
            pinned._pinned[IMAGE_ID] = dask_check.Environment("3.13.5", version("cloudpickle"))
            with pytest.raises(ClusterMismatch) as refused:
                await pinned.explain_failed_connect(client, dropped)
            text = str(refused.value)
            assert f"the scheduler runs Python {platform.python_version()}" in text, text
            assert "did not connect (CommClosedError: in <TLS Client->Scheduler>: Stream is closed)" in text, text
            pinned._pinned[IMAGE_ID] = dask_check.Environment(platform.python_version(), version("cloudpickle"))
            assert await pinned.explain_failed_connect(client, dropped) is None
        address = scheduler.address  # closed now: nothing answers there
        pinned._pinned[IMAGE_ID] = dask_check.Environment("3.13.5", version("cloudpickle"))
        monkeypatch.setattr(dask_adapter, "VERSIONS_TIMEOUT", 1)
        gone = types.SimpleNamespace(cluster=None, _start_arg=address, connection_args={})
        assert await asyncio.wait_for(pinned.explain_failed_connect(gone, dropped), 30) is None

    asyncio.run(go())
