"""Kernel start time: Containerized Python, cold and pooled, vs a local ipykernel, same run.

Measures, for each kernel, the time from the start request
(``AsyncKernelManager.start_kernel``) to the first ``kernel_info`` reply
(:func:`first_reply`), alternating the kinds so machine noise hits all alike:

* ``local``: the local ``python3`` ipykernel (the baseline);
* ``container``: a cold Containerized Python start (``pool_size`` 0);
* ``pooled``: the same kernel with ``pool_size=1``, once the pool has refilled
  (the benchmark waits for that between starts, untimed: what it measures is
  a start that finds a warm container, as one does that is not the first of
  a burst).

Prints p50/p90 of each and their ratios to local; asserts nothing (these
machines are noisy).  jupyter_client's ``wait_for_ready`` returns later than
the reply: it then waits for an IOPub message and drains IOPub until 0.2 s
pass without one, a fixed cost of the client's (JupyterLab's start never
pays it: jupyter_server does not call it); it is awaited after the
measurement, and ``--breakdown`` shows it apart.

    python benchmarks/kernel_start.py [--runs 15] [--image envpin-test/py311:latest]

``--breakdown`` (keep ``--runs`` small, 3 to 5) prints instead where each
kind's time goes, as the server sees it (``_timeline``): every step's median
start and duration on the start's path (image resolution, each Engine API
request, container create and start, the kernel process from Docker's
``StartedAt`` to its first heartbeat echo, the pooled hand-over, the
``kernel_info`` round trip), the background work the start set going, the
kernel's costliest imports (``-X importtime``, one extra start of each
kind), and the floors: ``python -c pass`` in a container of the image for
each network mode, and locally.

``--engine`` compares instead a cold start on another machine's engine with
a cold start on the local engine, same image, same run, interleaved with the
local ipykernel (issue 28's target: remote cold <= 1.5x local-engine cold
over SSH).  ``remote-ssh`` / ``remote-tls`` make that machine here
(``tools.remote_host.RemoteHost``: its own dockerd and sshd in a network
namespace, the image copied into it), reached over SSH / TCP+TLS, and stop
it at the end, leaving nothing (checked: a leftover fails the run);
``ssh://USER@HOST`` or ``tcp://HOST:2376`` name a real one (it must have
the image; TLS takes ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH`` from the
environment).  Over SSH each measured remote start is the host's only
kernel, so it opens the SSH connection too (``remote``); ``remote-held``
is the same start while the connection is already open (a second kernel on
that host).  ``remote-pooled`` is a start that takes a warm container of
that engine's pool (``pool_size=1``, ``remote.remote_pool``; issue 28's
target: <= 0.5x a local ipykernel start), measured in a second phase against
the local ipykernel again (``local-2``): a waiting remote pool container holds
that host's SSH connection, so a cold ``remote`` start beside it would not be
the host's first.  As locally, the benchmark waits, untimed, for the pool to
refill before every start of that phase.  With ``--breakdown``
it prints each kind's steps too (the SSH connection, forwards and remote
commands, the package volume check, each Engine API request).

    python benchmarks/kernel_start.py --engine remote-ssh --runs 3
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

from _setup import parse_and_prepare


async def first_reply(kc, timeout: float = 60) -> None:
    """Until the kernel's first ``kernel_info`` reply (asked again each second, as ``wait_for_ready`` does)."""
    from queue import Empty

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = kc.kernel_info()
        try:
            while True:
                msg = await kc.get_shell_msg(timeout=1)
                if msg["msg_type"] == "kernel_info_reply" and msg["parent_header"].get("msg_id") == msg_id:
                    return
        except Empty:
            continue
    raise RuntimeError(f"no kernel_info reply within {timeout:.0f} s")


async def one_start(kernel_name: str, cwd: str, seen: dict | None = None, **start_kwargs) -> float:
    """Seconds from the start request to the first kernel_info reply; ``seen`` gets the container's facts."""
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    await km.start_kernel(cwd=cwd, **start_kwargs)
    kc = km.client()
    kc.start_channels()
    try:
        await first_reply(kc)
        took = time.perf_counter() - started
        await kc.wait_for_ready(timeout=60)  # the rest of what a jupyter_client caller waits for
        if seen is not None:
            seen["wait_for_ready"] = time.perf_counter() - started
        container = getattr(km.provisioner, "_container", None)
        if seen is not None and container is not None:  # after the measurement: the look costs nothing timed
            container.reload()
            seen["started_at"] = container.attrs["State"]["StartedAt"]
            seen["logs"] = container.logs(stdout=False, stderr=True).decode(errors="replace")
        return took
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def wait_for_pool(pools, timeout: float = 60) -> None:
    """Until the shared pool holds a waiting container again and no fill runs (untimed, before every start).

    Before *every* start, not only the pooled ones: a refill set going by
    the last pooled start would otherwise create a container and import
    ipykernel during the next start, whichever kind that is (it used to
    overlap the next local start, and made the baseline slower).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        filling = any(not task.done() for task in list(pools._filling.values()))
        if not filling and any(pools.count(key) for key in list(pools._ready)):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the engine's own work after a fill (the container's start settles)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _wall(docker_time: str) -> float:
    """Docker's RFC 3339 time (nanoseconds) as a time.time() value."""
    from datetime import datetime

    head, _, frac = docker_time.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


async def breakdown(args, cwd: str, pools) -> None:
    """Where each kind of start spends its time (see the module docstring); ratios are not the point here."""
    import subprocess

    import _timeline
    from _timeline import timeline

    _timeline.instrument()
    _timeline._wrap_async(sys.modules[__name__], "first_reply", "kernel_info: sent until its first reply")
    kinds = {"local": "python3", "container": "bench-container", "pooled": "bench-pooled"}
    runs: dict[str, list] = {kind: [] for kind in kinds}
    totals: dict[str, list[float]] = {kind: [] for kind in kinds}
    process_start: list[float] = []
    for _ in range(args.runs):
        for kind, spec in kinds.items():
            await wait_for_pool(pools)
            seen: dict = {}
            timeline.begin()
            totals[kind].append(await one_start(spec, cwd, seen))
            runs[kind].append(list(timeline.spans))
            if kind == "container" and "started_at" in seen:
                process_start.append(timeline.at_wall(_wall(seen["started_at"])))
    for kind in kinds:
        print(
            f"\n== {kind}: request -> first kernel_info reply, p50 {pct(totals[kind], 0.5) * 1000:.0f} ms "
            f"(n={len(totals[kind])}); median start and total time of each step, ms"
        )
        path = [[s for s in spans if not s.background] for spans in runs[kind]]
        background = [[s for s in spans if s.background] for spans in runs[kind]]
        for label, start, duration, calls in _timeline.summarize(path):
            print(f"  {start * 1000:7.1f} +{duration * 1000:7.1f}  {label}" + (f"  (x{calls})" if calls > 1 else ""))
        if kind == "container" and process_start:
            print(
                f"  {statistics.median(process_start) * 1000:7.1f}           kernel process starts (Docker StartedAt)"
            )
        rows = _timeline.summarize(background)
        if rows:
            print("  background work set going by the start (competes for the CPU):")
            for label, start, duration, calls in rows:
                print(
                    f"  {start * 1000:7.1f} +{duration * 1000:7.1f}  bg: {label}"
                    + (f"  (x{calls})" if calls > 1 else "")
                )

    # The kernel process's imports: one more start of each, with -X importtime (slower: not timed).
    print("\n== imports before the kernel answers (-X importtime, top level, cumulative ms)")
    seen = {}
    await one_start("bench-importtime", cwd, seen)
    with tempfile.TemporaryFile() as err:
        await one_start("python3", cwd, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}, stderr=err)
        err.seek(0)
        local_log = err.read().decode(errors="replace")
    for kind, log in (("container", seen.get("logs", "")), ("local", local_log)):
        print(f"  {kind}: all top-level imports {_timeline.import_total(log) / 1000:.0f} ms; costliest:")
        for _self, cumulative, name in _timeline.import_top(log, 8):
            print(f"    {cumulative / 1000:7.1f} ms  {name}")

    # The floors: what a container that does nothing costs here, per network mode, through the SDK.
    import docker

    client = docker.from_env()
    print("\n== floors (median of 3, ms)")
    for mode in ("bridge", "none", "host"):
        values = []
        for _ in range(3):
            t = time.perf_counter()
            client.containers.run(args.image, ["python3", "-c", "pass"], remove=True, network_mode=mode, init=True)
            values.append(time.perf_counter() - t)
        print(
            f"  docker run --rm --init --network {mode:6s} IMAGE python3 -c pass : {statistics.median(values) * 1000:6.0f}"
        )
    for label, code in (("pass", "pass"), ("import ipykernel.kernelapp", "import ipykernel.kernelapp")):
        values = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            values.append(time.perf_counter() - t)
        print(f"  local python -c '{label}' : {statistics.median(values) * 1000:6.0f}")
    values = []
    for _ in range(3):
        t = time.perf_counter()
        client.containers.run(
            args.image, ["python3", "-c", "import ipykernel.kernelapp"], remove=True, network_mode="none", init=True
        )
        values.append(time.perf_counter() - t)
    print(
        f"  docker run --network none IMAGE python3 -c 'import ipykernel.kernelapp' : {statistics.median(values) * 1000:6.0f}"
    )


ENGINES = "local (default), remote-ssh, remote-tls (a remote host made here), ssh://USER@HOST, tcp://HOST:2376"
#: The remote host --engine remote-ssh / remote-tls makes (tools.remote_host names its netns, veth, folders after it).
BENCH_HOST = "rhbench"


async def main() -> None:
    args = parse_and_prepare(
        {"runs": 15},
        {"breakdown": "where each start's time goes, step by step"},
        {"engine": ("local", f"the engine to compare with the local one: {ENGINES}")},
    )
    if args.engine != "local":
        await other_engine(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_DATA_DIR"] = tmp
        os.environ["JUPYTER_PATH"] = tmp
        from envpin_provisioner.cli import kernelspec

        kernelspec.install(args.image, name="bench-container", user=True)
        kernelspec.install(args.image, name="bench-pooled", user=True, config={"pool_size": 1})
        kernelspec.install(
            args.image, name="bench-importtime", user=True, config={"environment": {"PYTHONPROFILEIMPORTTIME": "1"}}
        )
        from jupyter_client.kernelspec import KernelSpecManager

        local = KernelSpecManager().get_kernel_spec("python3")
        print(f"local ipykernel: {local.argv[0]} (Python {sys.version.split()[0]})")
        print(f"containerized  : image {args.image}")
        cwd = tmp
        from envpin_provisioner.warm.pool import pools

        # Warm every path once (imports, page cache, gc, the pool's first fill), untimed.
        await one_start("python3", cwd)
        await one_start("bench-container", cwd)
        await one_start("bench-pooled", cwd)
        if args.breakdown:
            try:
                await breakdown(args, cwd, pools)
            finally:
                for warm in pools.drain():
                    warm.discard()
            return
        times: dict[str, list[float]] = {"local": [], "container": [], "pooled": []}
        ready: dict[str, list[float]] = {kind: [] for kind in times}  # until wait_for_ready returned
        for _ in range(args.runs):
            for kind, spec in (("local", "python3"), ("container", "bench-container"), ("pooled", "bench-pooled")):
                await wait_for_pool(pools)
                seen: dict = {}
                times[kind].append(await one_start(spec, cwd, seen))
                ready[kind].append(seen["wait_for_ready"])
        for warm in pools.drain():
            warm.discard()

    for title, table in (
        ("request -> first kernel_info reply", times),
        ("request -> wait_for_ready returned (+ its IOPub check and 0.2 s drain)", ready),
    ):
        print(f"-- {title}")
        for kind, values in table.items():
            print(
                f"{kind:10s} p50 {pct(values, 0.5) * 1000:7.0f} ms   p90 {pct(values, 0.9) * 1000:7.0f} ms   (n={len(values)})"
            )
        for kind, target in (("container", 1.15), ("pooled", 0.35)):
            r50 = pct(table[kind], 0.5) / pct(table["local"], 0.5)
            r90 = pct(table[kind], 0.9) / pct(table["local"], 0.9)
            print(f"ratio {kind}/local: p50 {r50:.2f}x   p90 {r90:.2f}x   (target p50 <= {target}x)")
        print(
            f"mean container overhead: {(statistics.mean(table['container']) - statistics.mean(table['local'])) * 1000:.0f} ms"
        )


@contextlib.contextmanager
def engine_url(engine: str, image: str) -> Iterator[str]:
    """The ``engine`` kernelspec option for ``--engine``; for ``remote-ssh`` / ``remote-tls`` a remote host made here.

    That host is started with ``image`` copied into it and stopped on the way
    out whatever happened, its environment variables undone; what it left on
    this machine (``RemoteHost.leftovers``) fails the run.
    """
    if engine not in ("remote-ssh", "remote-tls"):
        if not engine.startswith(("ssh://", "tcp://")):
            sys.exit(f"--engine {engine}: use one of {ENGINES}")
        yield engine
        return
    from tools.remote_host import RemoteHost

    if os.geteuid() != 0:
        sys.exit(f"--engine {engine} makes a remote host here, which needs root (namespaces, a second dockerd)")
    host = RemoteHost(BENCH_HOST, images=[image])
    saved = dict(os.environ)
    try:
        host.start()
        if engine == "remote-ssh":
            # OpenSSH reads the host's client config through its bin/ssh, first on PATH (as the tests do)
            os.environ["PATH"] = f"{host.ssh_bin.parent}:{os.environ['PATH']}"
            yield host.ssh_url
        else:
            os.environ.update({"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(host.cert_path)})
            yield host.tcp_url
    finally:
        import envpin_provisioner

        envpin_provisioner.reset_caches()  # this process's engine clients and SSH masters, before their host goes
        host.stop()
        os.environ.clear()
        os.environ.update(saved)
        left = host.leftovers()
        if left:
            raise RuntimeError(f"remote host {BENCH_HOST} left behind: {'; '.join(left)}")
        print(f"remote host {BENCH_HOST} stopped; nothing of it is left")


@contextlib.asynccontextmanager
async def connection_held(url: str, held: bool):
    """While ``held``: this process holds the SSH connection to ``url``'s host (opened untimed, before the start).

    A start inside then finds the connection open, as a second kernel on that host does.
    """
    if not held:
        yield
        return
    from envpin.host import ssh_tunnel

    await asyncio.to_thread(ssh_tunnel.hold, url)
    try:
        yield
    finally:
        await asyncio.to_thread(ssh_tunnel.release, url)


async def other_engine(args) -> None:
    """Cold starts on another machine's engine against the local engine's and a local ipykernel, interleaved."""
    with tempfile.TemporaryDirectory() as tmp, engine_url(args.engine, args.image) as url:
        os.environ["JUPYTER_DATA_DIR"] = tmp
        os.environ["JUPYTER_PATH"] = tmp
        from envpin_provisioner.cli import kernelspec

        kernelspec.install(args.image, name="bench-container", user=True)
        kernelspec.install(args.image, name="bench-remote", user=True, config={"engine": url})
        kernelspec.install(args.image, name="bench-remote-pooled", user=True, config={"engine": url, "pool_size": 1})
        print(f"image {args.image}: local engine against {url}")
        kinds = {"local": "python3", "container": "bench-container", "remote": "bench-remote"}
        over_ssh = url.startswith("ssh://")
        if over_ssh:
            kinds["remote-held"] = "bench-remote"
        from envpin_provisioner.warm.pool import pools

        cwd = tmp
        # Warm every path once (imports, page cache, the remote package volume's first fill), untimed.
        for spec in dict.fromkeys(kinds.values()):
            await one_start(spec, cwd)
        if args.breakdown:
            import _timeline

            _timeline.instrument()
            _timeline.instrument_remote()
            _timeline._wrap_async(sys.modules[__name__], "first_reply", "kernel_info: sent until its first reply")
        times: dict[str, list[float]] = {kind: [] for kind in [*kinds, "local-2", "remote-pooled"]}
        steps: dict[str, list] = {kind: [] for kind in times}
        # Two phases: a remote pool holds that host's SSH connection, so with one waiting a "remote" start
        # would not be a host's first any more. Cold kinds first, with no pool; then pooled against local again.
        phases = [kinds, {"local-2": "python3", "remote-pooled": "bench-remote-pooled"}]
        for phase in phases:
            if "remote-pooled" in phase:
                await one_start("bench-remote-pooled", cwd)  # cold itself (untimed): it fills the pool
            for _ in range(args.runs):
                for kind, spec in phase.items():
                    if "remote-pooled" in phase:  # no refill overlaps a measured start (untimed)
                        await wait_for_pool(pools)
                    async with connection_held(url, kind == "remote-held"):
                        if args.breakdown:
                            _timeline.timeline.begin()
                        times[kind].append(await one_start(spec, cwd))
                    if args.breakdown:
                        steps[kind].append([s for s in _timeline.timeline.spans if not s.background])
        for warm in pools.drain():  # the remote pool's containers and folders, before that host goes
            warm.discard()

    for kind in times if args.breakdown else ():
        print(f"\n== {kind}: p50 {pct(times[kind], 0.5) * 1000:.0f} ms; median start and total time of each step, ms")
        for label, start, duration, calls in _timeline.summarize(steps[kind]):
            print(f"  {start * 1000:7.1f} +{duration * 1000:7.1f}  {label}" + (f"  (x{calls})" if calls > 1 else ""))

    print("-- request -> first kernel_info reply")
    for kind, values in times.items():
        print(
            f"{kind:11s} p50 {pct(values, 0.5) * 1000:7.0f} ms   p90 {pct(values, 0.9) * 1000:7.0f} ms   (n={len(values)})"
        )
    for kind in [k for k in ("remote", "remote-held") if k in times]:
        r50 = pct(times[kind], 0.5) / pct(times["container"], 0.5)
        r90 = pct(times[kind], 0.9) / pct(times["container"], 0.9)
        target = "   (target p50 <= 1.5x over SSH)" if kind == "remote" and over_ssh else ""
        print(f"ratio {kind}/container: p50 {r50:.2f}x   p90 {r90:.2f}x{target}")
    for kind in ("container", "remote"):
        print(f"ratio {kind}/local: p50 {pct(times[kind], 0.5) / pct(times['local'], 0.5):.2f}x")
    pooled = pct(times["remote-pooled"], 0.5) / pct(times["local-2"], 0.5)
    print(
        f"ratio remote-pooled/local-2: p50 {pooled:.2f}x   (target p50 <= 0.5x; local-2: the same run's second phase)"
    )


if __name__ == "__main__":
    asyncio.run(main())
