"""Where a kernel start's time goes, as the server sees it: ``kernel_start.py --breakdown``'s instrumentation.

Nothing here is in envpin: the benchmark wraps, in its own process only, the
functions a start goes through (the image choice, each Docker Engine API
request, container create and start, the readiness wait, the pooled
hand-over) and jupyter_client's own steps, and records when each began and
ended.  A server that does not run this benchmark pays nothing for it.

Background work a start sets going (the pool's refill, a kernel's standby,
the taken container's rename) is recorded too, marked ``bg``: it is not on
the start's path, but on a 2-core machine it competes with it for the CPU.
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
import time
from dataclasses import dataclass, field

#: The name of the background task a call belongs to ('' : the start itself).
_background: contextvars.ContextVar[str] = contextvars.ContextVar("envpin_bench_background", default="")


@dataclass
class Span:
    label: str
    start: float
    end: float
    background: str = ""


@dataclass
class Timeline:
    """The spans recorded since :meth:`begin` (perf_counter seconds), and the wall clock of its origin."""

    origin: float = 0.0
    wall_origin: float = 0.0
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self) -> None:
        with self.lock:
            self.spans = []
            self.origin, self.wall_origin = time.perf_counter(), time.time()

    def add(self, label: str, start: float, end: float, background: str = "") -> None:
        with self.lock:
            self.spans.append(Span(label, start - self.origin, end - self.origin, background))

    def at_wall(self, wall: float) -> float:
        """A wall-clock time (e.g. Docker's StartedAt) on this timeline's scale."""
        return wall - self.wall_origin

    def on_path(self) -> list[Span]:
        return sorted((s for s in self.spans if not s.background), key=lambda s: s.start)

    def background(self) -> list[Span]:
        return sorted((s for s in self.spans if s.background), key=lambda s: s.start)


timeline = Timeline()

_ID = re.compile(r"/(?:[0-9a-f]{12,64}|envpin-[\w.-]+|sha256:[0-9a-f]+)(?=/|$)")
_VERSION = re.compile(r"^/v[\d.]+")


def _api_label(method: str, url: str) -> str:
    path = url.split("://", 1)[-1]
    path = "/" + path.split("/", 1)[1] if "/" in path else path
    path = _VERSION.sub("", path.split("?", 1)[0])
    return f"engine {method} {_ID.sub('/ID', path)}"


def _wrap_sync(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timeline.add(label, t0, time.perf_counter(), _background.get())

    setattr(owner, name, timed)


def _wrap_async(owner, name: str, label: str, background: str = "") -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def timed(*args, **kwargs):
        if background:
            _background.set(background)  # this task's own context: what it calls is marked
        t0 = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            timeline.add(label, t0, time.perf_counter(), _background.get())

    setattr(owner, name, timed)


def instrument() -> None:
    """Wrap the steps of a start (in this process only); idempotent enough for one benchmark run."""
    import docker.api.client
    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner

    from envpin.host import dialect
    from envpin_provisioner import provisioner
    from envpin_provisioner.images import selection
    from envpin_provisioner.kernel import channels, folder, readiness
    from envpin_provisioner.kernel import container as kernel_container
    from envpin_provisioner.warm import pool, standbys

    original_request = docker.api.client.APIClient.request

    def request(self, method, url, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original_request(self, method, url, *args, **kwargs)
        finally:
            timeline.add(_api_label(method, url), t0, time.perf_counter(), _background.get())

    docker.api.client.APIClient.request = request

    _wrap_sync(selection, "choose", "image resolution (selection.choose)")
    _wrap_sync(channels, "make_channel_dir", "channel folder")
    _wrap_sync(folder, "pin_folders", "notebook folder pinned")
    _wrap_sync(kernel_container, "start", "container create + start (kernel.container.start)")
    _wrap_sync(dialect, "create", "container create (dialect.create)")
    _wrap_sync(folder, "verify_folder_mount", "folder mount check (/proc/PID/root)")
    _wrap_sync(readiness, "wait_ready", "readiness wait: first heartbeat echo")
    _wrap_sync(pool.Warm, "hand_over", "pooled hand-over (FIFO write)")
    _wrap_sync(pool, "wait_warm", "warm container waits on its FIFO")
    _wrap_async(standbys.WarmKernels, "take_pooled", "take a pooled container")
    _wrap_async(standbys.WarmKernels, "_rename", "rename taken container", background="rename")
    _wrap_async(standbys.WarmKernels, "_make_standbys", "standby made", background="standby")
    _wrap_async(pool.Pools, "_fill", "pool refill", background="refill")
    _wrap_async(provisioner.EnvpinProvisioner, "pre_launch", "pre_launch (envpin)")
    _wrap_async(provisioner.EnvpinProvisioner, "launch_kernel", "launch_kernel (envpin)")
    _wrap_async(LocalProvisioner, "pre_launch", "pre_launch (jupyter_client: ports, connection file)")
    _wrap_async(LocalProvisioner, "launch_kernel", "launch_kernel (local: Popen)")
    _wrap_async(AsyncKernelManager, "start_kernel", "start_kernel (total)")
    _wrap_async(AsyncKernelClient, "wait_for_ready", "after it: wait_for_ready (IOPub check, 0.2 s drain)")


def instrument_remote() -> None:
    """Wrap, besides :func:`instrument`'s, the steps a start on another machine's engine adds (SSH or TLS)."""
    from envpin.host import ssh_tunnel
    from envpin_provisioner.remote import package_volume, remote_pool, ssh_kernel, tls_kernel

    _wrap_sync(ssh_tunnel.Master, "_spawn", "SSH: connect (ControlMaster process)")
    _wrap_sync(ssh_tunnel.Master, "run", "SSH: remote command (mktemp, ids, folders)")
    _wrap_sync(ssh_tunnel.Master, "forward", "SSH: channel forward (ssh -O forward)")
    _wrap_sync(ssh_tunnel.Master, "forward_all", "SSH: a kernel's channel forwards (one ssh -O forward)")
    _wrap_sync(ssh_kernel, "prepare", "remote kernel folder prepared (ssh_kernel.prepare)")
    _wrap_sync(ssh_kernel, "start", "remote create + start (ssh_kernel.start)")
    _wrap_sync(tls_kernel, "start", "remote create + start (tls_kernel.start)")
    _wrap_sync(package_volume, "ensure", "package volume check (package_volume.ensure)")
    _wrap_sync(remote_pool, "_hand_over_ssh", "remote pool hand-over over SSH (put_archive + forwards)")
    _wrap_sync(remote_pool, "_hand_over_tls", "remote pool hand-over over TLS (put_archive + relay)")


def summarize(runs: list[Timeline | list[Span]]) -> list[tuple[str, float, float, int]]:
    """Per label over several runs: (label, median start, median duration summed per run, calls per run)."""
    import statistics

    per_label: dict[str, list[tuple[float, float, int]]] = {}
    order: dict[str, float] = {}
    for spans in runs:
        seen: dict[str, tuple[float, float, int]] = {}
        for s in spans:  # type: ignore[union-attr]
            first, total, n = seen.get(s.label, (s.start, 0.0, 0))
            seen[s.label] = (min(first, s.start), total + (s.end - s.start), n + 1)
        for label, value in seen.items():
            per_label.setdefault(label, []).append(value)
            order[label] = min(order.get(label, value[0]), value[0])
    out = []
    for label, values in per_label.items():
        out.append(
            (
                label,
                statistics.median(v[0] for v in values),
                statistics.median(v[1] for v in values),
                round(statistics.median(v[2] for v in values)),
            )
        )
    return sorted(out, key=lambda row: row[1])


def import_top(stderr: str, n: int = 8) -> list[tuple[int, int, str]]:
    """The ``-X importtime`` lines with the largest cumulative time at nesting depth 0: (self us, cumulative us, name)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        try:
            self_us, cumulative, name = line[len("import time:") :].split("|", 2)
        except ValueError:
            continue
        if name.startswith("  "):  # a nested import: counted in its parent's cumulative time
            continue
        rows.append((int(self_us), int(cumulative), name.strip()))
    return sorted(rows, key=lambda r: -r[1])[:n]


def import_total(stderr: str) -> int:
    """Cumulative microseconds of every top-level import in an ``-X importtime`` log."""
    return sum(r[1] for r in import_top(stderr, n=10**6))
