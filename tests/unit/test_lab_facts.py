"""A report never waits long on its image's Python (``report.ImageFacts``): the probe runs apart, once.

No engine here: the probe (``host_images.run_python``, a container on a real
engine elsewhere: tests/test_jupyterlab_extension.py) is replaced by a slow
stand-in, which is the point: an image whose Python takes its time (or never
answers) must hold up no request, and many requests must start one probe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import SimpleNamespace

from envpin.host.images import ResolvedImage
from envpin_provisioner import engine
from envpin_provisioner.lab import report

#: The kernel's engine (its kernelspec's ``engine``): the probe must ask the image there, not the default engine.
KERNELS_ENGINE = "ssh://alice@gpu-box"


def provisioner(image_id: str) -> SimpleNamespace:
    image = ResolvedImage(reference="envpin-test/slow:1", id=image_id, digest=None)
    return SimpleNamespace(
        choice=SimpleNamespace(resolved=image), python="python3", log=logging.getLogger("t"), engine=KERNELS_ENGINE
    )


def test_a_slow_probe_holds_up_no_report_and_runs_once(monkeypatch):
    release = threading.Event()
    probes = []

    def slow_probe(client, image, code, timeout, python, tail):
        probes.append((image.id, tail, client.address))
        release.wait(10)
        return "noise\n" * 3 + '{"python": "3.12.1", "cloudpickle": "3.1.1", "dill": "<b>x</b>"}\n'

    monkeypatch.setattr(engine, "shared", lambda address=None: SimpleNamespace(client=SimpleNamespace(address=address)))
    monkeypatch.setattr(report.host_images, "run_python", slow_probe)

    async def scenario():
        facts = report.ImageFacts()
        p = provisioner("sha256:" + "1" * 64)
        t0 = time.monotonic()
        answers = await asyncio.gather(*(facts.of(p, wait=0.3) for _ in range(20)), facts.of(p))
        took = time.monotonic() - t0
        assert answers == [None] * 21 and took < 2, took  # each waited 0.3 s at most, none for the probe
        assert facts.probing(p.choice.resolved.id) and probes == [
            (p.choice.resolved.id, 2, KERNELS_ENGINE)
        ]  # one, its tail
        release.set()
        for _ in range(100):
            if not facts.probing(p.choice.resolved.id):
                break
            await asyncio.sleep(0.05)
        # What the image printed is its word: only version-shaped values are kept.
        assert await facts.of(p) == {"python": "3.12.1", "cloudpickle": "3.1.1", "dill": None}
        assert len(probes) == 1

    asyncio.run(scenario())


def test_a_failed_probe_is_not_retried_at_once(monkeypatch):
    calls = []

    def broken(client, image, code, timeout, python, tail):
        calls.append(1)
        return "x" * 100_000  # no JSON line

    monkeypatch.setattr(engine, "shared", lambda address=None: SimpleNamespace(client=object()))
    monkeypatch.setattr(report.host_images, "run_python", broken)

    async def scenario():
        facts = report.ImageFacts()
        p = provisioner("sha256:" + "2" * 64)
        assert await facts.of(p, wait=5) is None
        for _ in range(5):
            assert await facts.of(p, wait=1) is None
        assert len(calls) == 1 and not facts.probing(p.choice.resolved.id)

    asyncio.run(scenario())
