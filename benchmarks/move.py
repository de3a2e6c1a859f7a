"""``%use_image`` move time: a kernel moving between a 3.13 and a 3.11 image, cold and pooled, vs a local start.

Measures the cell time of ``%use_image IMAGE --restart`` until the notebook
can go on: from sending the cell to the reply of the *next* cell (``1 + 1``),
which the kernel in the new image answers.  Moves alternate between the two
images; ``pooled`` kernels (``pool_size=1``) keep a standby for the image
they moved from, and the benchmark waits (untimed) for it between moves, as
a person reading the output would.  The baseline is a local ``python3``
ipykernel's cold start (start request to ``kernel_info`` reply), measured in
the same run, alternating.  Prints p50/p90 and ratios; asserts nothing.

    python benchmarks/move.py [--runs 8]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time

from _setup import parse_and_prepare
from kernel_start import one_start, pct

IMAGES = ("envpin-test/py313:latest", "envpin-test/py311:latest")


async def execute(kc, code: str, timeout: float = 120) -> None:
    reply = await kc.execute_interactive(code, timeout=timeout, allow_stdin=False, output_hook=lambda msg: None)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {reply['content'].get('evalue')}")


async def one_move(kc, image: str) -> float:
    """The ``%use_image`` cell's time, as a person sees it: until the next cell has run in the new image."""
    started = time.perf_counter()
    await execute(kc, f"%use_image {image} --restart")
    await execute(kc, "1 + 1")
    return time.perf_counter() - started


async def wait_standbys(km, n: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while len(km.provisioner._warm.standbys) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def main() -> None:
    args = parse_and_prepare({"runs": 8})
    from tools.images import build

    for image in IMAGES:
        build(image)
    from jupyter_client.manager import AsyncKernelManager

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["JUPYTER_DATA_DIR"] = tmp
        os.environ["JUPYTER_PATH"] = tmp
        from envpin_provisioner.cli import kernelspec

        kernelspec.install(IMAGES[0], name="bench-move-cold", user=True)
        kernelspec.install(IMAGES[0], name="bench-move-pooled", user=True, config={"pool_size": 1})
        await one_start("python3", tmp)  # warm the local path, untimed
        times: dict[str, list[float]] = {"local": [], "cold move": [], "pooled move": []}
        kernels = {}
        for kind, spec in (("cold move", "bench-move-cold"), ("pooled move", "bench-move-pooled")):
            km = AsyncKernelManager(kernel_name=spec)
            await km.start_kernel(cwd=tmp)
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            await execute(kc, "%load_ext envpin")
            await one_move(kc, IMAGES[1])  # untimed: the first move of each kernel (3.13 -> 3.11)
            kernels[kind] = (km, kc)
        try:
            for i in range(args.runs):
                target = IMAGES[i % 2]
                times["local"].append(await one_start("python3", tmp))
                for kind, (km, kc) in kernels.items():
                    if kind == "pooled move":
                        await wait_standbys(km, 2)
                    times[kind].append(await one_move(kc, target))
        finally:
            for km, kc in kernels.values():
                kc.stop_channels()
                await km.shutdown_kernel(now=True)
    print(f"moves between {IMAGES[0]} and {IMAGES[1]}; local ipykernel: Python {sys.version.split()[0]}")
    for kind, values in times.items():
        print(
            f"{kind:12s} p50 {pct(values, 0.5) * 1000:7.0f} ms   p90 {pct(values, 0.9) * 1000:7.0f} ms   (n={len(values)})"
        )
    for kind in ("cold move", "pooled move"):
        r50 = pct(times[kind], 0.5) / pct(times["local"], 0.5)
        r90 = pct(times[kind], 0.9) / pct(times["local"], 0.9)
        target = " (target p50 <= 0.6x)" if kind == "pooled move" else " (target p50 <= 1.3x)"
        print(f"ratio {kind}/local start: p50 {r50:.2f}x   p90 {r90:.2f}x{target}")


if __name__ == "__main__":
    asyncio.run(main())
