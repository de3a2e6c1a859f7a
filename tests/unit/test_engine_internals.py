"""Unit tier: every engine-client internal the adapters hook into still exists in the installed versions.

The adapters wrap a few non-public entry points (there is no public hook that
covers every submission path): when an upgrade of ray, ytsaurus-client or
flytekit moves one, this fails by name, instead of a job silently going out
unstamped.  No engine, no cluster: imports and attribute look-ups only.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

ENTRY_POINTS = [
    # Ray: driver-side tasks and actors, Ray Client tasks and actors, jobs, runtime_env helpers
    ("ray.remote_function", "RemoteFunction._remote"),
    ("ray.actor", "ActorClass._remote"),
    ("ray.util.client.common", "set_task_options"),
    ("ray.core.generated.ray_client_pb2", "ClientTask.FUNCTION"),
    ("ray.core.generated.ray_client_pb2", "ClientTask.ACTOR"),
    ("ray.dashboard.modules.job.sdk", "JobSubmissionClient.submit_job"),
    ("ray._private.utils", "parse_runtime_env_for_task_or_actor"),
    ("ray._private.utils", "get_runtime_env_info"),
    ("ray._private.services", "canonicalize_bootstrap_address"),
    ("ray._private.runtime_env.default_impl", "get_image_uri_plugin_cls"),
    ("ray._private.authentication.http_token_authentication", "get_auth_headers_if_auth_enabled"),
    # ytsaurus-client: every user job's spec, the client template, the global config, base layers
    ("yt.wrapper.spec_builders", "UserJobSpecBuilder.build"),
    ("yt.wrapper.default_config", "default_config"),
    ("yt.wrapper.default_config", "FORCED_SHORTCUTS"),
    ("yt.wrapper.config", "get_config"),
    # flytekit: every Python task's constructor
    ("flytekit.core.python_auto_container", "PythonAutoContainerTask.__init__"),
    # distributed: the client's connect, every graph submission, its event dispatch; the cluster managers' inits
    ("distributed.client", "Client._start"),
    ("distributed.client", "Client._graph_to_futures"),
    ("distributed.client", "Client._handle_event"),
    ("distributed.client", "Client._send_to_scheduler"),
    ("distributed.client", "Client._close"),
    ("distributed.deploy.local", "LocalCluster.__init__"),
    ("dask_kubernetes.operator.kubecluster.kubecluster", "KubeCluster.__init__"),
    ("dask_gateway.client", "Gateway._submit"),
    ("dask_gateway.client", "Gateway._cluster_options"),
    ("dask_gateway.client", "Gateway._config_cluster_options"),
    ("dask_jobqueue.core", "Job.__init__"),
    ("coiled.v2.cluster", "Cluster.__init__"),
]


@pytest.mark.parametrize("module, attribute", ENTRY_POINTS, ids=[f"{m}:{a}" for m, a in ENTRY_POINTS])
def test_hooked_entry_point_exists(module, attribute):
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    assert target is not None


def test_the_facts_the_adapters_rely_on():
    from yt.wrapper.default_config import FORCED_SHORTCUTS

    # A new YtClient in a job reads YT_BASE_LAYER (how nested operations keep the image)...
    assert FORCED_SHORTCUTS.get("YT_BASE_LAYER") == "operation_base_layer"
    # ... and the Ray Client path wraps set_task_options(task, options, field) by position and keyword.
    from ray.util.client import common

    assert list(inspect.signature(common.set_task_options).parameters)[:3] == ["task", "options", "field"]
    from ray._private.runtime_env.default_impl import get_image_uri_plugin_cls

    assert {"image_uri", "env_vars"} <= set(get_image_uri_plugin_cls().get_compatible_keys())
