"""Twenty Containerized Python kernels started at once on a 2-core machine."""

from __future__ import annotations

import asyncio

from jupyter_client.manager import AsyncKernelManager

from testutils import PY313, containers
from testutils.kernels import run_json


async def test_twenty_kernels_at_once(install_kernelspec, notebook_dir, docker_client):
    name = install_kernelspec(PY313)

    async def start(i):
        km = AsyncKernelManager(kernel_name=name)
        await km.start_kernel(cwd=str(notebook_dir))
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)
        return km, kc

    kernels = await asyncio.gather(*[start(i) for i in range(20)])
    try:
        answers = await asyncio.gather(
            *[run_json(kc, f"[{i}, __import__('socket').gethostname()]") for i, (_, kc) in enumerate(kernels)]
        )
        assert [a[0] for a in answers] == list(range(20))  # every kernel answers, and answers its own request
        assert len({a[1] for a in answers}) == 20  # in its own container
        assert len({km.connection_file for km, _ in kernels}) == 20  # no two share a channel
        assert len(containers(docker_client, role="kernel", running=True)) == 20
    finally:
        for _, kc in kernels:
            kc.stop_channels()
        await asyncio.gather(*[km.shutdown_kernel() for km, _ in kernels])
    assert not containers(docker_client)
