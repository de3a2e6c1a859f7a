"""Shared test helpers: the one place for image names, container look-ups and waiting for events.

Test modules import from here (``from testutils import PY311, containers,
wait_for``), never from ``conftest`` or from each other; fixtures live in
``conftest.py`` (built on ``testutils.server`` and ``testutils.kernels``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

REPO = ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the dev tools (tools.docker_engine, tools.images) live at the repo root
    sys.path.insert(0, str(ROOT))

from envpin import names  # noqa: E402

# ---- the offline-built test images (tools/images.py builds them) --------------------------------

PY311 = "envpin-test/py311:latest"
PY313 = "envpin-test/py313:latest"
NO_IPYKERNEL = "envpin-test/no-ipykernel:latest"
NO_PYTHON = "envpin-test/no-python:latest"
BROKEN_IPYKERNEL = "envpin-test/broken-ipykernel:latest"
DEMO = "ubuntu-22.04-py3"

T = TypeVar("T")


# ---- containers, by envpin's labels (envpin.host.labels names them) -----------------------------------


def containers(client: Any, *, role: str | None = None, kernel: str | None = None, running: bool = False) -> list:
    """envpin's containers on ``client``'s engine: all of them, or those of one ``role`` or one ``kernel`` id.

    Stopped ones too unless ``running``: a test asserting "gone" must see a
    container that merely stopped.  A kernel's containers are those labelled
    with its id and the warm container it took (named ``envpin-<kernel id>-...``).
    """
    wanted = [f"{names.LABEL_ROLE}={role}" if role else names.LABEL_ROLE]
    # ignore_removed: a container removed between the listing and its inspection is simply not there.
    found = client.containers.list(
        all=not running,
        filters={"label": [*wanted, f"{names.LABEL_KERNEL_ID}={kernel}"] if kernel else wanted},
        ignore_removed=True,
    )
    if kernel:  # a kernel that took a warm container (pool_size): labels cannot change, its name says whose it is
        seen = {c.id for c in found}
        named = client.containers.list(
            all=not running, filters={"label": wanted, "name": f"envpin-{kernel}-"}, ignore_removed=True
        )
        found += [c for c in named if c.id not in seen]
    return found


def image_absent(client: Any, reference: str) -> bool:
    """True when the engine has no image called ``reference`` (nothing was pulled or tagged under it)."""
    import docker.errors

    try:
        client.images.get(reference)
    except docker.errors.ImageNotFound:
        return True
    return False


def envpin_containers(client: Any) -> list:
    """Every container envpin made on this engine, stopped ones included."""
    return containers(client)


def flat(error: BaseException | str) -> str:
    """An error's message with its line breaks undone: what a kernel start raises is wrapped in short lines for
    JupyterLab's dialog (``envpin.errors.for_dialog``), so a phrase a test looks for may span two of them."""
    return " ".join(str(error).split())


# ---- waiting for an event instead of sleeping ----------------------------------------------------


def _polls(predicate: Callable[[], T], timeout: float, what: str) -> Iterator[T | None]:
    """Look at ``predicate`` once per step: yields its value (true: the last step), fails naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            yield value
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        yield None


def wait_for(predicate: Callable[[], T], timeout: float = 30, what: str = "the condition", interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail naming ``what`` at ``timeout``."""
    for value in _polls(predicate, timeout, what):
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("unreachable")


async def async_wait_for(
    predicate: Callable[[], T], timeout: float = 30, what: str = "the condition", interval: float = 0.05
) -> T:
    """:func:`wait_for` for async tests: the event loop keeps running between polls."""
    import asyncio

    for value in _polls(predicate, timeout, what):
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("unreachable")
