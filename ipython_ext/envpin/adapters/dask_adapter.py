"""Dask: clusters whose scheduler and workers run the pinned image, and a check before any task.

Dask ships every task as a cloudpickle made in the notebook; its own guard
only warns (see ``dask_check``).  After ``%use_image`` this adapter does
three things:

**Names the image where a cluster manager takes one** and the user named
none (a cluster manager's own image stays, with the ``ImageConflictWarning``,
or is refused with ``--strict``), with the pin's variables
(``ENVPIN_IMAGE``, ``ENVPIN_IMAGE_ID``, ``YT_JOB_DOCKER_IMAGE``; the user's
values win):

* ``dask_kubernetes.operator.KubeCluster``: ``image=`` and ``env=`` of the
  ``DaskCluster`` resource (a ``kubernetes.image`` in Dask's configuration
  other than the package's default counts as the user's; a
  ``custom_cluster_spec`` is the user's whole resource and only checked);
* Dask Gateway (``Gateway.new_cluster``/``submit``, ``GatewayCluster``): the
  ``image`` cluster option (and ``environment``, when the gateway offers
  them: options are the deployment's, read from the gateway first);
* ``dask_jobqueue`` (SLURM, PBS, SGE, LSF, HTCondor, ...): the worker
  command, through ``python=``: the job script runs ``podman run ... IMAGE
  python3 -m distributed.cli.dask_worker ...`` (or ``apptainer exec
  docker://IMAGE python3``, ``docker run``: the engine the nodes have,
  ``envpin.adapters.get("dask").node_engine`` or ``$ENVPIN_DASK_NODE_ENGINE``);
* ``coiled.Cluster``: ``container=`` and ``environ=`` (not when the user
  chose ``software=``, a container, or package sync).

**Checks the cluster when a ``distributed.Client`` connects**, over Dask's
own version RPC (msgpack, no pickle): the scheduler's and every worker's
Python and cloudpickle against the pinned image, judged by the measured
matrix (``envpin.compat.policy``).  A pair measured (or inferred) to break is
refused in ``Client(...)`` itself, in seconds, before anything is
submitted (:class:`envpin.errors.ClusterMismatch`; the client is closed); a
pair nobody measured, or another ``dask``/``distributed`` release, warns
once.  **Workers that join later** are announced by the scheduler (its
``add-worker`` event, to which the client subscribes) and checked as they
come; a submission (``submit``, ``map``, ``compute``, ``persist``) first
waits for any check still running and is refused while a mismatched worker
is in the cluster, before its graph is sent.

**Says which cluster runs in the image** (the ``%use_image`` status): in a
Containerized Python kernel a ``LocalCluster`` already runs there; from a
host kernel or a script, ``envpin.DaskCluster()`` starts the scheduler and
workers as containers of the image (``envpin.adapters.dask_cluster``), and
a ``LocalCluster`` on the host says once that its workers do not run in it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shlex
import threading
import warnings
from typing import Any

from envpin import names
from envpin.adapters import _imports, dask_check
from envpin.adapters.base import LibraryAdapter
from envpin.errors import ClusterMismatch, EnvpinError
from envpin.internals import DASK_GATEWAY, DISTRIBUTED
from envpin.session import stamping, state
from envpin.session.stamping import ImageConflict, ImageConflictWarning, Stamp

#: The engines a batch queue's nodes may run containers with, and how each runs one (``python=`` of dask-jobqueue).
NODE_ENGINES = ("podman", "apptainer", "singularity", "docker")
#: Seconds envpin waits for the cluster to tell its versions (at connect, and for a worker that joined).
VERSIONS_TIMEOUT = 10

#: Cluster managers envpin names the image for: the module defining each, and the adapter's installer.
_MANAGERS = (
    ("dask_kubernetes.operator.kubecluster.kubecluster", "_install_kubernetes"),
    ("dask_gateway.client", "_install_gateway"),
    ("dask_jobqueue.core", "_install_jobqueue"),
    ("coiled.v2.cluster", "_install_coiled"),
)


class LocalClusterOnHost(UserWarning):
    """A ``LocalCluster`` of a pinned host kernel runs its workers on this host, not in the image (a notice)."""


def default_node_engine() -> str:
    engine = os.environ.get(names.DASK_NODE_ENGINE, "").strip() or "podman"
    if engine not in NODE_ENGINES:
        raise EnvpinError(
            f"{names.DASK_NODE_ENGINE} is '{engine}', which envpin does not know. Set it to the container engine your "
            f"batch queue's nodes have ({', '.join(NODE_ENGINES)}), or unset it (podman)."
        )
    return engine


def node_command(stamp: Stamp, engine: str) -> str:
    """The interpreter dask-jobqueue writes into job scripts: the image's ``python3``, run by ``engine`` on the node.

    The worker must be reachable by the scheduler and the other workers at
    the node's address, hence the host network; ``--rm`` so a finished job
    leaves no container on the node.
    """
    env = [f"{k}={v}" for k, v in sorted(stamp.env.items())]
    image = stamp.job_image
    if engine in ("apptainer", "singularity"):
        source = image if image.startswith("/") or image.endswith(".sif") else f"docker://{image}"
        words = [engine, "exec", "--cleanenv", *[a for e in env for a in ("--env", e)], source, "python3"]
    else:
        init = ["--init"] if engine == "docker" else []
        words = [
            engine,
            "run",
            "--rm",
            *init,
            "--network",
            "host",
            *[a for e in env for a in ("-e", e)],
            image,
            "python3",
        ]
    return " ".join(shlex.quote(w) for w in words)


class DaskAdapter(LibraryAdapter):
    name = "dask"
    module = "distributed"

    def __init__(self, node_engine: str | None = None) -> None:
        super().__init__()
        self.node_engine = node_engine  #: None: $ENVPIN_DASK_NODE_ENGINE, else podman
        self._pinned: dict[str, dask_check.Environment] = {}  # image id -> its environment
        self._notified: set[str] = set()

    # -- the status table -----------------------------------------------------------------

    def summary(self) -> str:
        stamp = self.stamp
        if stamp is not None and state.runs_in_image(stamp.image, stamp.job_image):
            where = "LocalCluster runs in this kernel's image"
        else:
            where = "envpin.DaskCluster() runs scheduler and workers in containers of the image"
        return (
            f"dask: {where}; Client(...) checks the cluster's Python and cloudpickle; image named for KubeCluster, "
            f"Dask Gateway, dask-jobqueue ({self.effective_node_engine}), coiled"
        )

    def describe(self) -> str:
        return self.summary() if self.installed else f"{self.summary()} (on import distributed)"

    @property
    def effective_node_engine(self) -> str:
        return self.node_engine or default_node_engine()

    # -- arming -----------------------------------------------------------------------------

    def activate(self, stamp: Stamp) -> None:
        default_node_engine()  # a bad ENVPIN_DASK_NODE_ENGINE is reported by %use_image, not by the first job
        super().activate(stamp)
        for module, installer in _MANAGERS:
            _imports.when_imported(module, getattr(self, installer))

    def deactivate(self) -> None:
        for module, installer in _MANAGERS:
            _imports.cancel(module, getattr(self, installer))
        super().deactivate()
        self.patches.restore()  # the cluster managers' patches, installed whether or not distributed was

    # -- distributed: the check at connect, the gate before submissions ----------------------

    def install(self, distributed, stamp: Stamp) -> None:
        from distributed.comm.core import CommClosedError

        adapter = self

        def make_start(original):
            async def _start(client, *args, **kwargs):
                try:
                    result = await original(client, *args, **kwargs)
                except CommClosedError as exc:  # dropped by the scheduler (not: unreachable, asked no more)
                    if adapter.stamp is not None:
                        await adapter.explain_failed_connect(client, exc)
                    raise
                if adapter.stamp is not None and getattr(client, "status", None) == "running":
                    try:
                        await adapter.check_at_connect(client)
                    except ClusterMismatch:
                        await DISTRIBUTED.attr(client, "client_close")()
                        raise
                return result

            return _start

        def make_graph_to_futures(original):
            def _graph_to_futures(client, *args, **kwargs):
                watch = getattr(client, "_envpin_watch", None)
                if watch is not None and adapter.stamp is not None:
                    watch.before_submit()
                return original(client, *args, **kwargs)

            return _graph_to_futures

        def make_handle_event(original):
            async def _handle_event(client, topic, event):
                watch = getattr(client, "_envpin_watch", None)
                if watch is not None and topic == "all":
                    watch.on_event(event)
                    if topic not in DISTRIBUTED.attr(client, "client_event_handlers"):
                        return  # envpin's own subscription: distributed would unsubscribe a topic without a handler
                return await original(client, topic, event)

            return _handle_event

        def make_close(original):
            async def _close(client, *args, **kwargs):
                if getattr(client, "_envpin_subscribed", False) and client.status in (
                    "running",
                    "connecting",
                    "closing",
                ):
                    # envpin's subscription first: the scheduler would announce this client's leaving to it,
                    # over the stream that is closing ("Closed comm ... while trying to write", a CRITICAL log).
                    client._envpin_subscribed = False
                    if "all" not in DISTRIBUTED.attr(client, "client_event_handlers"):
                        DISTRIBUTED.attr(client, "client_send_to_scheduler")(
                            {"op": "unsubscribe-topic", "topic": "all", "client": client.id}
                        )
                return await original(client, *args, **kwargs)

            return _close

        def make_local_init(original):
            def __init__(cluster, *args, **kwargs):
                adapter._notice_local_cluster()
                original(cluster, *args, **kwargs)

            return __init__

        self.patches.wrap(*DISTRIBUTED.site("client_start"), make_start)
        self.patches.wrap(*DISTRIBUTED.site("client_graph_to_futures"), make_graph_to_futures)
        self.patches.wrap(*DISTRIBUTED.site("client_handle_event"), make_handle_event)
        self.patches.wrap(*DISTRIBUTED.site("client_close"), make_close)
        self.patches.wrap(*DISTRIBUTED.site("local_cluster_init"), make_local_init)

    def _notice_local_cluster(self) -> None:
        stamp = self.stamp
        if stamp is None or state.runs_in_image(stamp.image, stamp.job_image) or stamp.image in self._notified:
            return
        self._notified.add(stamp.image)
        warnings.warn(
            f"envpin: this LocalCluster runs its workers on this host (Python {platform.python_version()}), not in "
            f"'{stamp.image}', the image this session is pinned to. For workers in the image, use "
            "envpin.DaskCluster() (scheduler and workers as containers of the image), or run the notebook in the "
            "image (the Containerized Python kernel), where a LocalCluster runs there.",
            LocalClusterOnHost,
            stacklevel=stamping._caller_stacklevel(),
        )

    async def pinned_environment(self, stamp: Stamp) -> dask_check.Environment:
        """The pinned image's Python, cloudpickle, dask and distributed: this process's, or the image's fingerprint."""
        key = stamp.image_id or stamp.image
        if key in self._pinned:
            return self._pinned[key]
        from envpin.compat.fingerprints import version_of

        if state.runs_in_image(stamp.image, stamp.job_image):
            env = dask_check.Environment(
                platform.python_version(), version_of("cloudpickle"), version_of("dask"), version_of("distributed")
            )
        else:
            facts = await asyncio.get_running_loop().run_in_executor(None, _image_facts, stamp.image)
            env = dask_check.Environment(
                facts.get("python_version") or stamp.fingerprint.get("python"),
                facts.get("cloudpickle") or stamp.fingerprint.get("cloudpickle"),
                facts.get("dask"),
                facts.get("distributed"),
            )
        self._pinned[key] = env
        return env

    async def check_at_connect(self, client: Any) -> None:
        """Refuse (raise) a cluster whose scheduler or workers cannot load this session's pickles; watch for joiners."""
        stamp = self.stamp
        if stamp is None:
            return
        where = str(getattr(client.scheduler, "address", "?"))
        pinned = await self.pinned_environment(stamp)
        watch = _Watch(client, stamp, pinned, where)
        # Subscribe to arrivals before asking who is there: a worker joining in between is announced.
        DISTRIBUTED.attr(client, "client_send_to_scheduler")(
            {"op": "subscribe-topic", "topic": "all", "client": client.id}
        )
        client._envpin_subscribed = True
        try:
            scheduler = await asyncio.wait_for(client.scheduler.versions(packages=[]), VERSIONS_TIMEOUT)
            workers = await asyncio.wait_for(
                client.scheduler.broadcast(msg={"op": "versions", "packages": []}, on_error="ignore"),
                VERSIONS_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            warnings.warn(
                f"envpin: the Dask scheduler at {where} did not tell its versions within {VERSIONS_TIMEOUT}s "
                f"({type(exc).__name__}), so envpin could not check that it loads this session's pickles.",
                dask_check.DaskVersionWarning,
                stacklevel=2,
            )
            return
        processes = {"the scheduler": scheduler, **{f"worker {a}": v for a, v in (workers or {}).items()}}
        watch.judge(processes, "Client(...) was closed; nothing was submitted.", connect=True)
        watch.mark_checked(list((workers or {}).keys()))
        client._envpin_watch = watch

    async def explain_failed_connect(self, client: Any, exc: BaseException) -> None:
        """Raise ClusterMismatch when a connect that failed was to a cluster that cannot load our pickles anyway.

        A scheduler of another Python may drop the client's stream during the
        handshake: a 3.13 scheduler, registering a 3.11 client, was seen to
        close it at once about one start in three (distributed 2026.8), so
        ``Client(...)`` raised CommClosedError before envpin's check could run.
        What the user needs to read then is why that cluster is no good for
        this session, so envpin asks the scheduler its versions over a fresh
        connection (bounded) and refuses as the check at connect would.  When
        the cluster answers nothing, or matches, the original error stands.
        """
        stamp = self.stamp
        cluster = getattr(client, "cluster", None)  # the client's rpc to the scheduler is gone by now
        address = getattr(cluster, "scheduler_address", None) or DISTRIBUTED.attr(client, "client_start_arg", None)
        if stamp is None or not isinstance(address, str) or not address:
            return
        from distributed.core import rpc

        where = str(address)
        try:
            pinned = await self.pinned_environment(stamp)
            connection_args = getattr(client, "connection_args", None) or {}
            async with rpc(address, timeout=VERSIONS_TIMEOUT, connection_args=connection_args) as scheduler:
                versions = await asyncio.wait_for(scheduler.versions(packages=[]), VERSIONS_TIMEOUT)
                workers = await asyncio.wait_for(
                    scheduler.broadcast(msg={"op": "versions", "packages": []}, on_error="ignore"),
                    VERSIONS_TIMEOUT,
                )
        except (OSError, asyncio.TimeoutError, EnvpinError):
            return
        processes = {"the scheduler": versions, **{f"worker {a}": v for a, v in (workers or {}).items()}}
        doing = f"Client(...) did not connect ({type(exc).__name__}: {exc}); nothing was submitted."
        _Watch(client, stamp, pinned, where).judge(processes, doing, connect=True)

    # -- cluster managers: the image where the user named none -------------------------------

    def _install_kubernetes(self, module) -> None:
        import dask

        default = _kubernetes_default_image(module)
        adapter = self

        def make_init(original):
            def __init__(cluster, *args, **kwargs):
                stamp = adapter.stamp
                if stamp is not None:
                    custom = kwargs.get("custom_cluster_spec") or dask.config.get("kubernetes.custom-cluster-spec")
                    if custom:
                        for image in sorted(_spec_images(custom)):
                            stamp.check_explicit(image, "KubeCluster(custom_cluster_spec=...)")
                    else:
                        configured = dask.config.get("kubernetes.image", None)
                        named = kwargs.get("image") or (configured if configured != default else None)
                        if named and named not in (stamp.image, stamp.job_image):
                            stamp.check_explicit(named, "KubeCluster")
                        else:
                            kwargs["image"] = stamp.job_image
                            given = (
                                kwargs.get("env")
                                if kwargs.get("env") is not None
                                else dask.config.get("kubernetes.env")
                            )
                            kwargs["env"] = _merged_k8s_env(stamp.env, given)
                original(cluster, *args, **kwargs)

            return __init__

        self.patches.wrap(module.KubeCluster, "__init__", make_init)

    def _install_gateway(self, module) -> None:
        adapter = self

        def make_submit(original):
            async def _submit(gateway, cluster_options=None, **kwargs):
                stamp = adapter.stamp
                if stamp is not None:
                    kwargs = await adapter._gateway_options(gateway, stamp, cluster_options, kwargs)
                return await original(gateway, cluster_options, **kwargs)

            return _submit

        self.patches.wrap(*DASK_GATEWAY.site("gateway_submit"), make_submit)

    async def _gateway_options(self, gateway: Any, stamp: Stamp, chosen: Any, kwargs: dict) -> dict:
        """The option overrides that put the gateway's workers in the pinned image (the user's choices kept)."""
        # the deployment's fields and defaults
        offered = await DASK_GATEWAY.attr(gateway, "gateway_cluster_options")(use_local_defaults=False)
        configured = DASK_GATEWAY.attr(gateway, "gateway_config_cluster_options")()
        fields = set(offered)

        def value(key: str) -> Any:
            if key in kwargs:
                return kwargs[key]
            if chosen is not None and key in chosen and chosen[key] != offered[key]:
                return chosen[key]
            return configured.get(key)

        if "image" not in fields:
            self._warn_once(
                f"gateway:{gateway.address}",
                f"envpin: the Dask Gateway at {gateway.address} offers no 'image' cluster option (it offers "
                f"{', '.join(sorted(fields)) or 'none'}), so its workers run the image its administrators chose, "
                f"not necessarily '{stamp.image}'. Client(...) checks them when it connects.",
            )
            return kwargs
        named = value("image")
        if named and named not in (stamp.image, stamp.job_image):
            stamp.check_explicit(named, "Dask Gateway cluster")
            return kwargs
        out = dict(kwargs, image=stamp.job_image)
        if "environment" in fields:
            given = value("environment")
            if given is None and chosen is not None and "environment" in chosen:
                given = chosen["environment"]
            out["environment"] = {**stamp.env, **dict(given or {})}
        return out

    def _install_jobqueue(self, module) -> None:
        import dask

        adapter = self

        def make_init(original):
            def __init__(job, *args, **kwargs):
                stamp = adapter.stamp
                if stamp is not None:
                    config_name = kwargs.get("config_name") or getattr(type(job), "config_name", None)
                    configured = dask.config.get(f"jobqueue.{config_name}.python", None) if config_name else None
                    named = kwargs.get("python") or configured
                    if not named:
                        kwargs["python"] = node_command(stamp, adapter.effective_node_engine)
                    elif stamp.job_image not in str(named):
                        adapter._conflict(
                            stamp,
                            f"dask-jobqueue's workers run {named!r} on the nodes (python=), not the image this "
                            f"session is pinned to, '{stamp.image}'; envpin leaves it. Pickles made here may not "
                            "load there. Drop python= (envpin then runs the workers in the image) or pin the image "
                            "the nodes run.",
                        )
                original(job, *args, **kwargs)

            return __init__

        self.patches.wrap(module.Job, "__init__", make_init)

    def _install_coiled(self, module) -> None:
        import dask

        adapter = self

        def make_init(original):
            def __init__(cluster, *args, **kwargs):
                stamp = adapter.stamp
                if stamp is not None:
                    container = kwargs.get("container") or dask.config.get("coiled.container", None)
                    software = kwargs.get("software") or dask.config.get("coiled.software", None)
                    if container and container not in (stamp.image, stamp.job_image):
                        stamp.check_explicit(container, "coiled.Cluster")
                    elif software:
                        adapter._conflict(
                            stamp,
                            f"coiled.Cluster runs the software environment {software!r}, not the image this session "
                            f"is pinned to, '{stamp.image}'; envpin leaves it. Pickles made here may not load there. "
                            "Drop software= (envpin then names the image as container=) or pin the image it uses.",
                        )
                    elif not kwargs.get("package_sync"):
                        kwargs["container"] = stamp.job_image
                        kwargs["environ"] = {**stamp.env, **dict(kwargs.get("environ") or {})}
                original(cluster, *args, **kwargs)

            return __init__

        self.patches.wrap(module.Cluster, "__init__", make_init)

    # -- helpers ------------------------------------------------------------------------

    def _conflict(self, stamp: Stamp, text: str) -> None:
        if stamp.strict:
            raise ImageConflict(text)
        warnings.warn(text, ImageConflictWarning, stacklevel=stamping._caller_stacklevel())

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._notified:
            self._notified.add(key)
            warnings.warn(text, ImageConflictWarning, stacklevel=stamping._caller_stacklevel())


class _Watch:
    """One client's view of its cluster: which workers were checked, and which cannot load its pickles.

    Events arrive on the client's event loop; submissions come from the
    user's thread; the sets are shared under a lock.
    """

    def __init__(self, client: Any, stamp: Stamp, pinned: dask_check.Environment, where: str) -> None:
        from envpin.compat import policy

        self.client = client
        self.stamp = stamp
        self.pinned = pinned
        self.where = where
        self.mode = policy.resolve_mode(pinned=stamp.envelope)
        self.lock = threading.Lock()
        self.checked: set[str] = set()
        self.pending: set[str] = set()
        self.bad: dict[str, dask_check.Finding] = {}
        self._identity: Any = None
        self._notices: list[dict[str, dask_check.Environment]] = []

    def judge(self, versions: dict[str, Any], doing: str, connect: bool = False) -> list[dask_check.Finding]:
        """Judge ``{process: versions}``; raise at connect, else record the refused workers and return them."""
        processes = {}
        for name, v in versions.items():
            env = dask_check.Environment.of_versions(v)
            if env is not None:
                processes[name] = env
        findings = dask_check.judge(self.pinned, processes, self.mode)
        if connect and any(f.refused for f in findings):
            raise dask_check.refusal(self.where, self.stamp.image, self.pinned, findings, doing)
        dask_check.warn_unmeasured(self.where, self.stamp.image, self.pinned, findings)
        dask_check.warn_dask_versions(self.where, self.stamp.image, self.pinned, processes)
        return [f for f in findings if f.refused]

    def mark_checked(self, addresses: list[str]) -> None:
        with self.lock:
            self.checked.update(addresses)
            self.pending.difference_update(addresses)

    def on_event(self, event: Any) -> None:
        """A scheduler event on topic "all" (the client's loop): note workers that come and go."""
        try:
            msg = event[1]
            action, worker = msg.get("action"), msg.get("worker")
        except (TypeError, IndexError, KeyError, AttributeError):
            return
        if not isinstance(worker, str):
            return
        if action == "add-worker":
            with self.lock:
                if worker in self.checked or worker in self.bad:
                    return
                self.pending.add(worker)
            asyncio.ensure_future(self.check([worker]))  # usually done before the next submission
        elif action == "remove-worker":
            with self.lock:
                self.pending.discard(worker)
                self.checked.discard(worker)
                self.bad.pop(worker, None)

    async def check(self, addresses: list[str]) -> None:
        """Ask ``addresses`` for their versions (Dask's RPC) and record the verdicts."""
        try:
            answers = await asyncio.wait_for(
                self.client.scheduler.broadcast(
                    msg={"op": "versions", "packages": []}, workers=list(addresses), on_error="ignore"
                ),
                VERSIONS_TIMEOUT,
            )
        except (OSError, asyncio.TimeoutError):
            answers = {}
        with self.lock:
            for address in addresses:
                self.pending.discard(address)
            for address, versions in (answers or {}).items():
                processes = {f"worker {address}": versions}
                refused = self._judge_quietly(processes)
                if refused:
                    self.bad[address] = refused[0]
                else:
                    self.checked.add(address)
            # A worker that did not answer (gone, or too slow) is asked again at the next submission.

    def _judge_quietly(self, versions: dict[str, Any]) -> list[dask_check.Finding]:
        """The refused findings of a late joiner; its notices wait for the next submission (the user's thread)."""
        processes = {n: e for n, v in versions.items() if (e := dask_check.Environment.of_versions(v)) is not None}
        if processes:
            self._notices.append(processes)
        return [f for f in dask_check.judge(self.pinned, processes, self.mode) if f.refused]

    def before_submit(self) -> None:
        """Before a graph is sent: check the workers not checked yet (waiting for them), refuse if one is bad."""
        client = self.client
        info = DISTRIBUTED.attr(client, "client_scheduler_identity", None)
        with self.lock:
            known = set()
            if info is not None and info is not self._identity:
                self._identity = info
                known = set((info.get("workers") or {}) if hasattr(info, "get") else ())
            todo = sorted((known - self.checked - set(self.bad)) | self.pending)
        if todo and not getattr(client, "asynchronous", False):
            client.sync(self.check, todo)
        with self.lock:
            notices, self._notices = self._notices, []
            bad = dict(self.bad)
        for processes in notices:
            findings = dask_check.judge(self.pinned, processes, self.mode)
            dask_check.warn_unmeasured(self.where, self.stamp.image, self.pinned, findings)
            dask_check.warn_dask_versions(self.where, self.stamp.image, self.pinned, processes)
        if bad:
            findings = [dask_check.Finding((f"worker {a}",), f.there, True, f.evidence) for a, f in sorted(bad.items())]
            raise dask_check.refusal(
                self.where,
                self.stamp.image,
                self.pinned,
                findings,
                "They joined after Client(...) connected; nothing of this submission was sent. Remove them from the "
                "cluster (or close it) and submit again.",
            )


def _image_facts(image: str) -> dict[str, Any]:
    """The image's fingerprint (cached by image id); empty when no engine can tell (the pin's own facts remain)."""
    from envpin.compat import fingerprints

    try:
        return fingerprints.fingerprint(image=image)
    except EnvpinError:
        return {}
    except OSError:
        return {}


def _kubernetes_default_image(module) -> str | None:
    """dask-kubernetes' own default image (its ``kubernetes.yaml``): a configured image other than this is the user's."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(module.__file__))), "kubernetes.yaml")
    try:
        with open(path) as fh:
            return (yaml.safe_load(fh).get("kubernetes") or {}).get("image")
    except (OSError, ValueError, AttributeError):
        return None


def _spec_images(spec: Any) -> set[str]:
    """Every container image named in a ``DaskCluster`` resource (a dict, or a YAML file's path)."""
    if isinstance(spec, str):
        import yaml

        try:
            with open(spec) as fh:
                spec = yaml.safe_load(fh)
        except (OSError, ValueError):
            return set()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.update(c["image"] for c in node["containers"] if isinstance(c, dict) and c.get("image"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def _merged_k8s_env(stamped: dict[str, str], given: Any) -> Any:
    """KubeCluster's ``env`` (a dict, or a list of ``{"name", "value"}``) with the pin's variables under the user's."""
    if given is None:
        return dict(stamped)
    if isinstance(given, dict):
        return {**stamped, **given}
    entries = list(given)
    named = {e.get("name") for e in entries if isinstance(e, dict)}
    return [{"name": k, "value": v} for k, v in stamped.items() if k not in named] + entries
