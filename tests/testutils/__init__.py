"""Shared test helpers: the one place for image names, container look-ups and waiting for events.

Test modules import from here (``from testutils import PY311, containers,
wait_for``), never from ``conftest`` or from each other; fixtures live in
``conftest.py`` (built on ``testutils.server`` and ``testutils.kernels``).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO = ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the dev tools (tools.docker_engine, tools.images) live at the repo root
    sys.path.insert(0, str(ROOT))

from envpin import names  # noqa: E402

#: Set by scripts/test, which prepares everything first (engine, images, Ray releases): a missing piece is then
#: a failure, where a test run on its own skips with what to run.
FROM_SCRIPTS_TEST = "ENVPIN_FROM_SCRIPTS_TEST"

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


# ---- programs that run inside kernels (tests/kernel_programs/NAME.py) ------------------------------

#: Where the programs live: real files, so ruff checks them like any other code.
PROGRAMS = ROOT / "tests" / "kernel_programs"
#: A parameter: ``NAME = ...`` on a line of its own (a literal Ellipsis keeps the file valid Python).
_PARAMETER = re.compile(r"^([A-Z][A-Z0-9_]*) = \.\.\.(?:[ \t]*#.*)?$", re.M)
#: A cell of a program run in steps: ``# %% NAME`` up to the next marker (VS Code's and Jupytext's spelling).
_CELL = re.compile(r"^# %% ([\w-]+).*\n", re.M)


def program(name: str, cell: str | None = None, **params: Any) -> str:
    """The text of ``tests/kernel_programs/NAME.py`` (or of its cell ``# %% CELL``), its parameters set.

    Each parameter the text declares (``NAME = ...``) becomes ``NAME = repr(value)``;
    one missing or one too many is an error, so a program never runs with a
    placeholder.  A file of cells is one program run in steps (the cells share
    its names, and ruff sees them together); ``program`` returns one step.
    """
    text = (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")
    where = f"{name}.py"
    if cell is not None:
        parts = _CELL.split(text)  # [before the first marker, name, body, name, body, ...]
        cells = dict(zip(parts[1::2], parts[2::2], strict=True))
        if cell not in cells:
            raise KeyError(f"{where} has no cell {cell!r}; its cells: {sorted(cells)}")
        text, where = cells[cell], f"{where}, cell {cell!r},"
    declared = set(_PARAMETER.findall(text))
    if declared != set(params):
        raise TypeError(f"{where} takes the parameters {sorted(declared)}, not {sorted(params)}")
    return _PARAMETER.sub(lambda m: f"{m.group(1)} = {params[m.group(1)]!r}", text)


# ---- no engine, for the tests that did not ask for one ------------------------------------------

#: A Docker address where nothing answers (the discard port): a client made for it fails at its first call.
NO_ENGINE = "tcp://127.0.0.1:9"


@contextmanager
def no_engine(monkeypatch: Any) -> Iterator[None]:
    """``DOCKER_HOST`` pointed at nothing while the block runs, and envpin's cached clients forgotten around it.

    For the tests that did not ask for the engine (the unit tier, and any other
    test without the ``docker_client`` fixture): one that reaches for an engine
    anyway fails at once instead of quietly using the machine's.
    """
    from envpin.host import docker_client

    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    docker_client.reset()
    try:
        yield
    finally:
        docker_client.reset()


# ---- waiting for an event instead of sleeping ----------------------------------------------------


class _Deadline:
    """``timeout`` seconds from now; :meth:`check` fails naming ``what`` once they have passed."""

    def __init__(self, timeout: float, what: str):
        self.timeout, self.what = timeout, what
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(f"timed out after {self.timeout:.0f}s waiting for {self.what}")


def wait_for(predicate: Callable[[], T], timeout: float = 30, what: str = "the condition", interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail naming ``what`` at ``timeout``."""
    deadline = _Deadline(timeout, what)
    while True:
        value = predicate()
        if value:
            return value
        deadline.check()
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 30, what: str = "the condition", interval: float = 0.05
) -> T:
    """:func:`wait_for` for async tests: the event loop keeps running between polls.

    ``predicate`` may be a coroutine function (``km.is_alive``): each poll awaits it.
    """
    import asyncio
    import inspect

    deadline = _Deadline(timeout, what)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await asyncio.sleep(interval)
