"""``envpin.DaskCluster``: a Dask cluster whose scheduler and workers are containers of the pinned image.

A ``distributed.SpecCluster`` (so ``Client(cluster)``, ``cluster.scale(n)``,
``cluster.adapt()``, ``cluster.close()``, ``cluster.dashboard_link`` behave
as with ``LocalCluster``) whose scheduler and each worker run in their own
container of the image, created through envpin's one container layer
(``envpin.host.dialect.create``, ``envpin.host.container_spec``): labelled
``envpin.role=dask-scheduler`` / ``dask-worker`` with the cluster's name,
owned by this process and signed, so ``envpin gc`` removes them if this
process dies without closing the cluster.

Each container runs ``python3 -m distributed.cli.dask_spec`` of the image
(``distributed``'s own launcher, as ``SSHCluster`` uses; started through
``envpin.entry.boot``, nothing imported from the working folder) as the
caller's uid:gid (``nobody`` for a root caller, as job workers), with every
capability dropped and ``no-new-privileges``; it mounts nothing of the
caller's but envpin's read-only package.  The scheduler's address is read
from its log ("Scheduler at:"); a worker is started once it logs
"Registered to:", so ``DaskCluster(n_workers=2)`` returns with two workers
ready, as ``LocalCluster`` does.

**Who may connect: the holder of the cluster's key.**  Dask ships tasks as
pickles and the scheduler unpickles submitted graphs: whoever reaches the
scheduler runs code in the workers.  Loopback alone does not close that (any
local user, any container on the host network, another kernel can reach
127.0.0.1), so every cluster gets its own TLS key and self-signed
certificate (``distributed.security.Security.temporary()``, made in this
process), required on every connection, both ways (Dask's mutual TLS):
scheduler, nannies and workers present it and accept only it, and so does
the client (``Client(cluster)`` takes ``cluster.security``).  A connection
without that certificate fails in the TLS handshake, before Dask reads a
message.  The key reaches each container as a file copied into it before it
starts (``put_archive`` to ``names.CONTAINER_DASK_TLS``, readable by the
container's user alone): never in a command line, an environment variable,
a label or a host folder.  The scheduler's dashboard (plain HTTP, read-only
pages: Dask has no TLS client authentication for it a browser could use)
listens on loopback only, without Dask's ``proxy`` route; ``dashboard=False``
turns it off.  Workers serve no dashboard.

**Network.**  By default (``network="host"``) every process listens on
127.0.0.1 only: scheduler, workers, nannies and dashboards share this
machine's loopback and nothing else, like a ``LocalCluster``; the client on
this machine reaches them there.  With ``network=NAME`` (a network you made,
ideally ``docker network create --internal NAME``) they join that network and
listen on their address in it: a client must be on the same network (a
Containerized Python kernel with ``network_mode=NAME``).  A remote engine
(``DOCKER_HOST=tcp://...``) has another machine's loopback: there, use a
named network and a client on it.

Inside a Containerized Python kernel (already in the image, and without
engine access) ``DaskCluster`` gives a ``LocalCluster`` instead: its workers
are processes of the kernel's container, hence of the image.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import threading
import time
import uuid
import warnings
from typing import Any

from distributed.deploy.local import LocalCluster
from distributed.deploy.spec import ProcessInterface, SpecCluster

from envpin import names, printable
from envpin.entry import boot
from envpin.errors import EnvpinError
from envpin.host import dialect, docker_client, images
from envpin.host.container_spec import base_options
from envpin.internals import DASK_DASHBOARD_ROUTES, DISTRIBUTED
from envpin.jobs.worker_hosts import worker_user
from envpin.session import stamping, state

ROLE_SCHEDULER = "dask-scheduler"
ROLE_WORKER = "dask-worker"
#: What the scheduler logs once it listens, and a worker once the scheduler accepted it.
SCHEDULER_READY = "Scheduler at:"
WORKER_READY = "Registered to:"
WORKER_ADDRESS = "Start worker at:"
#: Processes a container may run (the nanny, the worker, its threads): a fork bomb in a task stops there.
DEFAULT_PIDS_LIMIT = 1024


class ClusterStartFailed(EnvpinError):
    """A scheduler or worker container of an ``envpin.DaskCluster`` did not come up (its last log lines follow).

    Fix: install ``distributed`` in the image (and ``bokeh`` for the dashboard), or raise ``start_timeout``
    on a slow engine.
    """


def temporary_security() -> Any:
    """A new key and self-signed certificate for one cluster, for every role (Dask's ``Security.temporary``)."""
    try:
        return DISTRIBUTED.get("temporary_security")()
    except ImportError as exc:
        raise EnvpinError(
            "envpin.DaskCluster secures each cluster with its own TLS certificate (so that only this process can "
            "send its workers code), and making one needs the cryptography package, which is not installed here: "
            "pip install cryptography (or pip install 'envpin[dask]')."
        ) from exc


def tls_environment() -> dict[str, str]:
    """Dask's configuration, as variables, that makes a container's processes require the cluster's certificate.

    Only paths: the certificate and key are files copied into the container (:func:`tls_archive`).
    """
    folder = names.CONTAINER_DASK_TLS
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": f"{folder}/ca.pem",
        "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": repr(list(DASK_DASHBOARD_ROUTES)),
    }
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = f"{folder}/cert.pem"
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = f"{folder}/key.pem"
    return env


def tls_archive(security: Any, uid: int, gid: int) -> bytes:
    """``names.CONTAINER_DASK_TLS`` as a tar for ``put_archive``: a folder and files only ``uid`` can read."""
    files = {
        "ca.pem": security.tls_ca_file,
        "cert.pem": security.tls_worker_cert,
        "key.pem": security.tls_worker_key,
    }
    buf = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buf, mode="w") as tar:
        folder = tarfile.TarInfo(names.CONTAINER_DASK_TLS.rsplit("/", 1)[1])
        folder.type, folder.mode, folder.uid, folder.gid, folder.mtime = tarfile.DIRTYPE, 0o500, uid, gid, now
        tar.addfile(folder)
        for name, text in files.items():
            data = str(text).encode()
            info = tarfile.TarInfo(f"{folder.name}/{name}")
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o400, uid, gid, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class DaskClusterInImage(UserWarning):
    """``envpin.DaskCluster`` in a kernel already in the image gives a ``LocalCluster`` (a notice)."""


class _Plan:
    """What every container of one cluster shares: engine, image, network, user, labels."""

    def __init__(
        self,
        image: str,
        network: str,
        user: str | int | None,
        env: dict[str, str] | None,
        start_timeout: float,
        cluster_name: str,
        *,
        security: Any,
        mem_limit: str | int | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
    ) -> None:
        self.client = images.client()
        if network == "host" and not docker_client.is_local_client(self.client):
            raise EnvpinError(
                f"envpin.DaskCluster(network='host') needs an engine on this machine, and DOCKER_HOST names "
                f"{docker_client.engine_address()}: its scheduler would listen on that machine's loopback, which "
                "this client cannot reach. Create a network there (docker network create --internal NAME), pass "
                "network=NAME, and connect from a client on that network (a Containerized Python kernel with "
                "network_mode=NAME)."
            )
        self.image = images.resolve(self.client, image, source="envpin.DaskCluster")
        self.network = network
        uid, gid = worker_user(user)
        self.user = f"{uid}:{gid}"
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.cluster_name = cluster_name
        self.security = security
        self.tls = tls_archive(security, uid, gid)
        self.limits: dict[str, Any] = {}
        if mem_limit:
            self.limits.update(mem_limit=mem_limit, memswap_limit=mem_limit)
        if cpu_limit:
            self.limits["nano_cpus"] = int(float(cpu_limit) * 1e9)
        if pids_limit:
            self.limits["pids_limit"] = int(pids_limit)

    @property
    def listen_host(self) -> str | None:
        """The address processes listen on: loopback on the host network, the container's own on a named one."""
        return "127.0.0.1" if self.network == "host" else None

    def create(self, role: str, suffix: str, argv: list[str]) -> Any:
        options = base_options(
            image_id=self.image.id,
            reference=self.image.reference,
            immutable=self.image.immutable,
            role=role,
            image_env=self.image.env,
            user=self.user,
            extra_labels={names.LABEL_DASK_CLUSTER: self.cluster_name},
        )
        options["environment"][names.IMAGE_NAME] = self.image.name
        options["environment"].update(self.env)
        options["environment"].update(tls_environment())  # last: env= cannot turn TLS off
        options["working_dir"] = names.CONTAINER_HOME
        options.update(self.limits)
        container = dialect.create(
            self.client,
            name=f"{self.cluster_name}-{suffix}",
            entrypoint=boot.entrypoint("python3"),
            command=["distributed.cli.dask_spec", *argv],
            network_mode=self.network,
            cap_drop=["ALL"],
            **options,
        )
        try:
            container.put_archive(names.CONTAINER_DASK_TLS.rsplit("/", 1)[0], self.tls)
        except BaseException:
            images.remove(container)
            raise
        return container


class _Container(ProcessInterface):
    """A scheduler or worker of the cluster: one container, started and removed off the event loop."""

    role = ""
    ready = ""

    def __init__(self, plan: _Plan, name: str) -> None:
        super().__init__()
        self.plan = plan
        self.name = name
        self.container: Any = None
        self._lines: list[str] = []

    def argv(self) -> list[str]:
        raise NotImplementedError

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._start_blocking)
        await super().start()

    def _start_blocking(self) -> None:
        self.container = self.plan.create(self.role, str(self.name), self.argv())
        try:
            self.container.start()
            self._wait_until_ready()
        except BaseException:
            images.remove(self.container)
            raise

    def _wait_until_ready(self) -> None:
        """Follow the container's log until ``self.ready``; a container that exits or is too slow is an error."""
        stream = self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
        timer = threading.Timer(self.plan.start_timeout, stream.close)
        timer.start()
        buffer = b""
        try:
            for chunk in stream:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    self._lines = [*self._lines[-19:], line]
                    self.seen(line)
                    if self.ready in line:
                        return
        finally:
            timer.cancel()
            stream.close()
        self.container.reload()
        why = (
            f"exited with code {self.container.attrs['State'].get('ExitCode')}"
            if self.container.status in ("exited", "dead")
            else f"did not log '{self.ready}' within {self.plan.start_timeout:g}s"
        )
        tail = "\n".join(printable.one_line(line) for line in self._lines[-8:])
        raise ClusterStartFailed(
            f"The Dask {self.role.split('-')[1]} container of envpin.DaskCluster in '{self.plan.image.name}' {why}. "
            "The image needs distributed (pip install distributed in the image), and Python to run it. Its last "
            f"lines:\n{tail}"
        )

    def seen(self, line: str) -> None:
        """A log line before readiness (subclasses pick addresses out of it)."""

    async def close(self) -> None:
        if self.container is not None:
            container, self.container = self.container, None
            await asyncio.get_running_loop().run_in_executor(None, images.remove, container)
        await super().close()


class _Scheduler(_Container):
    role = ROLE_SCHEDULER
    ready = SCHEDULER_READY

    def __init__(self, plan: _Plan, options: dict[str, Any], dashboard: bool = True) -> None:
        super().__init__(plan, "scheduler")
        self.options = options
        self.dashboard = dashboard

    def argv(self) -> list[str]:
        host = self.plan.listen_host
        opts: dict[str, Any] = {"port": 0, "dashboard": self.dashboard, **self.options, "protocol": "tls"}
        if host:
            opts.setdefault("host", host)
            opts.setdefault("dashboard_address", f"{host}:0")
        else:
            opts.setdefault("dashboard_address", ":0")
        if not self.dashboard:
            opts["dashboard_address"] = None
        return ["--spec", json.dumps({"cls": "distributed.Scheduler", "opts": opts})]

    def seen(self, line: str) -> None:
        if SCHEDULER_READY in line:
            self.address = line.split(SCHEDULER_READY, 1)[1].strip()


class _Worker(_Container):
    role = ROLE_WORKER
    ready = WORKER_READY

    def __init__(self, scheduler: str, plan: _Plan, name: str, nanny: bool, options: dict[str, Any]) -> None:
        super().__init__(plan, name)
        self.scheduler = scheduler
        self.nanny = nanny
        self.options = options

    def argv(self) -> list[str]:
        host = self.plan.listen_host
        # The protocol (tls) follows the scheduler's address; Dask's worker dashboard stays off.
        opts: dict[str, Any] = {"name": str(self.name), **self.options}
        if host:
            opts.setdefault("host", host)
            opts.setdefault("dashboard_address", f"{host}:0")
        cls = "distributed.Nanny" if self.nanny else "distributed.Worker"
        return [self.scheduler, "--spec", json.dumps({"cls": cls, "opts": opts})]

    def seen(self, line: str) -> None:
        if WORKER_ADDRESS in line:
            self.address = line.split(WORKER_ADDRESS, 1)[1].strip()


class ContainerCluster(SpecCluster):
    """A ``SpecCluster`` whose scheduler and workers are containers of ``image`` (see the module doc).

    ``n_workers`` workers of ``nthreads`` threads each (``memory_limit`` per
    worker, as Dask reads it); ``nanny=False`` runs
    workers without a nanny process; ``network``: ``"host"`` (loopback
    only) or a network's name; ``env``: extra variables in every container;
    ``user``: who the processes run as (uid or ``uid:gid``; default the
    caller, ``nobody`` for root); ``scheduler_options`` / ``worker_options``:
    keyword arguments of ``distributed.Scheduler`` / ``Nanny``;
    ``dashboard``: the scheduler's dashboard (on loopback) or none;
    ``mem_limit`` / ``cpu_limit`` / ``pids_limit``: the engine's bounds on
    each container (scheduler and every worker; with ``memory_limit="auto"``
    Dask reads ``mem_limit`` from the container's cgroup).

    ``security`` is the cluster's TLS key and certificate (see the module
    doc): ``Client(cluster)`` uses it; a client given only the address needs
    ``Client(address, security=cluster.security)``.
    """

    def __init__(
        self,
        n_workers: int = 1,
        *,
        image: str,
        nthreads: int = 1,
        memory_limit: str | int | None = "auto",
        nanny: bool = True,
        network: str = "host",
        env: dict[str, str] | None = None,
        user: str | int | None = None,
        scheduler_options: dict[str, Any] | None = None,
        worker_options: dict[str, Any] | None = None,
        start_timeout: float = 60,
        dashboard: bool = True,
        mem_limit: str | int | None = None,
        cpu_limit: float | None = None,
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
        name: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        shutdown_on_close: bool = True,
    ) -> None:
        cluster_name = name or f"envpin-dask-{uuid.uuid4().hex[:8]}"
        security = temporary_security()
        # Not "plan": SpecCluster has a property of that name (the workers it plans).
        self.containers = _Plan(
            image,
            network,
            user,
            env,
            start_timeout,
            cluster_name,
            security=security,
            mem_limit=mem_limit,
            cpu_limit=cpu_limit,
            pids_limit=pids_limit,
        )
        options = {"nthreads": nthreads, "memory_limit": memory_limit, **(worker_options or {})}
        worker = {"cls": _Worker, "options": {"plan": self.containers, "nanny": nanny, "options": options}}
        scheduler = {
            "cls": _Scheduler,
            "options": {"plan": self.containers, "options": dict(scheduler_options or {}), "dashboard": dashboard},
        }
        super().__init__(
            workers={f"{cluster_name}-{i}": worker for i in range(n_workers)},
            scheduler=scheduler,
            worker=worker,
            asynchronous=asynchronous,
            loop=loop,
            name=cluster_name,
            shutdown_on_close=shutdown_on_close,
            security=security,
        )

    @property
    def image(self) -> images.ResolvedImage:
        """The image every container of this cluster was created from (resolved once, when the cluster started)."""
        return self.containers.image

    def _new_worker_name(self, worker_number: int) -> str:
        return f"{self.containers.cluster_name}-{worker_number}"


def _can_make_certificates() -> bool:
    """Whether a ``LocalCluster`` here can have its own TLS certificate (``security=True`` needs cryptography).

    A kernel on its own network (the default, ``bridge``) has a loopback nobody else reaches; one on the host's
    network (``network_mode="host"``) shares this machine's, where the certificate is what keeps others out.
    """
    import importlib.util

    return importlib.util.find_spec("cryptography") is not None


def DaskCluster(n_workers: int = 1, *, image: str | None = None, **options: Any) -> SpecCluster:
    """A Dask cluster that runs the pinned image (or ``image``): ``Client(envpin.DaskCluster(2))``.

    From a host kernel or a script: a :class:`ContainerCluster` (scheduler
    and workers as containers of the image on this machine's engine).  In a
    kernel that already runs in the image: a ``LocalCluster`` (its worker
    processes are in the image), with a notice; the container-only options
    (``network``, ``user``, ``start_timeout``, the limits: the kernel's
    container bounds it already) do not apply there, and it has its own TLS
    certificate when the image has ``cryptography``.
    """
    stamp = stamping.current_stamp()
    wanted = image or (stamp.job_image if stamp is not None else None)
    if wanted is None:
        raise EnvpinError(
            "envpin.DaskCluster() runs the image this session is pinned to, and nothing is pinned yet: run "
            "%use_image IMAGE (or envpin.use_image in a script) first, or pass image='IMAGE'."
        )
    if state.runs_in_image(wanted, *((stamp.image, stamp.job_image) if stamp and image is None else ())):
        warnings.warn(
            f"envpin: this kernel already runs in '{wanted}', so envpin.DaskCluster() is a LocalCluster: its "
            "scheduler and worker processes run in this container, hence in the image.",
            DaskClusterInImage,
            stacklevel=2,
        )
        for only in ("network", "user", "start_timeout", "mem_limit", "cpu_limit", "pids_limit"):
            options.pop(only, None)
        dashboard = options.pop("dashboard", True)
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=options.pop("nthreads", 1),
            processes=options.pop("nanny", True),
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0" if dashboard else None,
            security=options.pop("security", True if _can_make_certificates() else None),
            **options,
        )
    return ContainerCluster(n_workers, image=wanted, **options)
