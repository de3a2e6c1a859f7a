"""Kernel start time: Containerized Python, cold and pooled, vs a local ipykernel, same run.

Measures, for each kernel, the time from the start request
(``AsyncKernelManager.start_kernel``) to the first ``kernel_info`` reply
(``wait_for_ready``), alternating the kinds so machine noise hits all alike:

* ``local``: the local ``python3`` ipykernel (the baseline);
* ``container``: a cold Containerized Python start (``pool_size`` 0);
* ``pooled``: the same kernel with ``pool_size=1``, once the pool has refilled
  (the benchmark waits for that between starts, untimed: what it measures is
  a start that finds a warm container, as one does that is not the first of
  a burst).

Prints p50/p90 of each and their ratios to local; asserts nothing (these
machines are noisy).

    python benchmarks/kernel_start.py [--runs 15] [--image envpin-test/py311:latest]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time

from _setup import parse_and_prepare


async def one_start(kernel_name: str, cwd: str) -> float:
    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=kernel_name)
    started = time.perf_counter()
    await km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        return time.perf_counter() - started
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


async def wait_for_pool(pools, timeout: float = 60) -> None:
    """Until the shared pool holds a waiting container again (untimed: refills happen between starts)."""
    deadline = time.monotonic() + timeout
    while not any(pools.count(key) for key in list(pools._ready)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def main() -> None:
    args = parse_and_prepare({"runs": 15})
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_DATA_DIR"] = tmp
        os.environ["JUPYTER_PATH"] = tmp
        from envpin_provisioner.cli import kernelspec

        kernelspec.install(args.image, name="bench-container", user=True)
        kernelspec.install(args.image, name="bench-pooled", user=True, config={"pool_size": 1})
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
        times: dict[str, list[float]] = {"local": [], "container": [], "pooled": []}
        for _ in range(args.runs):
            times["local"].append(await one_start("python3", cwd))
            times["container"].append(await one_start("bench-container", cwd))
            await wait_for_pool(pools)
            times["pooled"].append(await one_start("bench-pooled", cwd))
        for warm in pools.drain():
            warm.discard()

    for kind, values in times.items():
        print(
            f"{kind:10s} p50 {pct(values, 0.5) * 1000:7.0f} ms   p90 {pct(values, 0.9) * 1000:7.0f} ms   (n={len(values)})"
        )
    for kind, target in (("container", 1.15), ("pooled", 0.5)):
        r50 = pct(times[kind], 0.5) / pct(times["local"], 0.5)
        r90 = pct(times[kind], 0.9) / pct(times["local"], 0.9)
        print(f"ratio {kind}/local: p50 {r50:.2f}x   p90 {r90:.2f}x   (target p50 <= {target}x)")
    print(
        f"mean container overhead: {(statistics.mean(times['container']) - statistics.mean(times['local'])) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
