"""The Docker engine: one shared client per server process, calls off the event loop, failures in plain words.

One client per engine address serves every kernel of a server (as
dockerspawner shares one): a client owns a connection pool, and a client per
kernel was never closed.  What envpin learns about an engine once (its
memory, whether this server already collected garbage on it) lives beside
that client in :class:`Engine`, not in module globals of its users.

Every Docker call of the provisioner goes through :func:`call`, which runs it
in a worker thread: the Jupyter server's event loop keeps serving other
notebooks while an image is pulled or a container starts.

The address, the client itself and the one explanation of an engine that
cannot be reached are ``envpin.host.docker_client``'s, shared with the kernel
side's host entry points.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from envpin.host import docker_client
from envpin_provisioner.errors import EngineUnavailable

T = TypeVar("T")

#: What a Docker call raises when the engine fails or cannot be reached (not a bug of ours).
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, EngineUnavailable)

# The address, the client and the explanation of an unreachable engine are the kernel side's (one layer for
# both sides); the server's additions are below: per-engine facts, and calls off the event loop.


class Engine:
    """The shared client of one engine, and the facts about it envpin asks for only once per process."""

    def __init__(self, address: str, client: docker.DockerClient) -> None:
        self.address = address
        self.client = client
        self._lock = threading.Lock()
        self._memory: int | None = None
        self._memory_known = False
        self._collected = False

    def memory_total(self) -> int | None:
        """The engine's memory in bytes (for ``shm_size='auto'``), None when it will not say.  Blocking."""
        with self._lock:
            if not self._memory_known:
                try:
                    self._memory = int(self.client.info().get("MemTotal") or 0) or None
                except ENGINE_ERRORS:  # an engine that will not say: Docker's default /dev/shm then
                    self._memory = None
                self._memory_known = True
            return self._memory

    def collect_garbage_once(self, log: logging.Logger | logging.LoggerAdapter) -> None:
        """Remove containers orphaned by earlier servers, at this server's first kernel start.  Blocking."""
        from envpin_provisioner.kernel import ownership

        with self._lock:
            if self._collected:
                return
            self._collected = True
        removed = ownership.collect_garbage(self.client)
        if removed:
            log.info("envpin: removed %d orphaned container(s): %s", len(removed), ", ".join(removed))


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def shared(address: str | None = None) -> Engine:
    """This process's :class:`Engine` for ``address`` (a kernelspec's ``engine``; default: the environment's).

    Connected and pinged once.  Blocking the first time: call it through :func:`call` in async code.
    """
    address = docker_client.engine_address(address)
    with _engines_lock:
        engine = _engines.get(address)
        if engine is None:
            engine = _engines[address] = Engine(address, docker_client.shared(address))
        return engine


def reset() -> None:
    """Forget every engine's facts (``envpin_provisioner.reset_caches``); their clients are the kernel side's."""
    with _engines_lock:
        _engines.clear()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the blocking Docker call ``fn(*args, **kwargs)`` in a worker thread, off the event loop.

    The shared client outlives the engine's restarts: a call that finds no
    engine at all (refused, socket gone), or one that accepts but never
    answers (a frozen engine: the read times out), raises :class:`EngineUnavailable`
    with the plain-words explanation, not the HTTP library's error.
    """
    return await _in_thread(functools.partial(fn, *args, **kwargs), fn, args)


async def _in_thread(run: Callable[[], T], fn: Callable[..., Any], args: tuple[Any, ...]) -> T:
    """``run()`` in a worker thread; an engine that cannot be reached is explained with the address ``fn`` used."""
    try:
        return await asyncio.to_thread(run)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:  # Timeout: an engine frozen
        raise docker_client.explain_engine_failure(exc, _address_in(fn, args)) from exc


def _address_in(fn: Callable[..., Any], args: tuple[Any, ...]) -> str | None:
    """The engine a call talked to, from its client or container (a kernelspec's engine, not the environment's)."""
    import docker.models.resource

    for obj in (getattr(fn, "__self__", None), *args):
        if isinstance(obj, docker.models.resource.Model):
            obj = obj.client
        if isinstance(obj, docker.DockerClient):
            return docker_client.address_of(obj)
    return None


_log = logging.getLogger("envpin")


def _consume(task: asyncio.Future) -> None:
    """Retrieve a detached call's outcome, so a failure is logged once, not as 'never retrieved'."""
    if not task.cancelled() and task.exception() is not None:
        _log.warning("envpin: a background engine call failed: %s", task.exception())


async def call_through(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:func:`call` that runs to its end even when the awaiting task is cancelled.

    For what must happen whatever becomes of the caller: removing a
    container that would otherwise be left behind.  The caller still sees
    its cancellation at once.
    """
    task = asyncio.ensure_future(call(fn, *args, **kwargs))
    task.add_done_callback(_consume)
    return await asyncio.shield(task)


class _Claim:
    """Who owns what a creation in a worker thread returns: its caller, or (once the caller gave up) the thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._made: list[Any] = []  #: what was made and handed towards the caller (empty: nothing yet)

    def deliver(self, made: Any) -> bool:
        """The creation returned ``made``: True if its caller still waits for it, False if the caller gave up."""
        with self._lock:
            if self._abandoned:
                return False
            self._made.append(made)
            return True

    def abandon(self) -> list[Any]:
        """The caller gives up: what was already made and is now nobody's (``[]`` when the thread still runs)."""
        with self._lock:
            self._abandoned = True
            return self._made


def _dispose_quietly(dispose: Callable[[Any], object], made: Any) -> None:
    """Dispose of an abandoned creation; in a background thread, so a failure is logged, never raised."""
    try:
        dispose(made)
    except Exception as exc:  # noqa: BLE001  nobody awaits this: a failure can only be logged (envpin gc removes it)
        _log.warning("envpin: could not remove %r, made for a start that was cancelled: %s", made, exc)


async def create_owned(fn: Callable[..., T], *args: Any, dispose: Callable[[T], object], **kwargs: Any) -> T:
    """:func:`call` for a blocking creation whose result someone must own: a container, a folder.

    A task cancelled while the creation runs in its thread (a kernel shut
    down 0.1 s after it started, while its standby was being created) would
    never learn what was made, and it would stay behind.  Here the creation
    runs to its end regardless, and when nobody awaits it any more its
    result is handed to ``dispose``.

    The disposal happens in threads, never through the event loop: a loop
    that stops right after the cancellation (a server exiting, a test's loop
    closing) runs no callback, and what was made would stay behind.  Either
    the creating thread disposes of it (the caller gave up first) or the
    cancelled caller does, in a thread of its own (the creation had already
    returned); :class:`_Claim` decides which, under its lock.
    """
    claim = _Claim()

    def create() -> T:
        made = fn(*args, **kwargs)
        if not claim.deliver(made):
            _dispose_quietly(dispose, made)
        return made

    task = asyncio.ensure_future(_in_thread(create, fn, args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_consume)  # a creation that fails now has nobody to tell but the log
        for made in claim.abandon():
            threading.Thread(target=_dispose_quietly, args=(dispose, made), name="envpin-dispose", daemon=True).start()
        raise
