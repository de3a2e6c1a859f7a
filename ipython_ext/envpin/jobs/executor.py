"""``ContainerExecutor``: run functions in the pinned image, with the ``concurrent.futures`` interface.

Workers (``envpin.jobs.worker``) run in the image and are kept warm: a worker
serves one job at a time, for as many jobs as come, until the executor shuts
down.  Where they run depends on where the caller is (``envpin.jobs.worker_hosts``):
``process`` mode when the caller already runs in the image (workers are
processes of its own container), ``container`` mode otherwise (each worker
is a container of the image, removed on shutdown).

Jobs and results travel as envelopes (``envpin.jobs.envelope``) over a unix socket
in a private folder of this executor (``envpin.jobs.listener``: only workers
it started are answered, and nothing a peer sends stops it), mounted
read-only into its own worker containers: checked before unpickling in both
directions, large buffers out of band.  A job's code is hostile to its
caller: worker containers get only what the job needs (``envpin.jobs.worker_hosts``).

Code shipping: functions and classes of modules that are not installed
(the notebook's own ``helpers.py``, anything outside site-packages) are
pickled by value, so the worker needs no copy of them.  A module that is
installed here but missing in the image is refused at submit time, by name.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import functools
import os
import queue
import socket
import sys
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from envpin import names
from envpin.compat import policy
from envpin.errors import EnvpinError
from envpin.jobs import envelope as envelopes  # not 'envelope': ContainerExecutor's argument of that name
from envpin.jobs import listener, shipping, worker, worker_hosts
from envpin.session import state

#: What a worker may answer, per kind of request.
_ANSWERS = {"job": frozenset({"result", "refused"}), "probe": frozenset({"probe", "refused"})}


class WorkerDied(EnvpinError):
    """The worker running a job died (killed, out of memory); only that job fails.

    Also raised when a worker does not start: an image without Python 3 or cloudpickle.  The
    executor replaces the worker and goes on with the other jobs.

    Fix: give container workers more memory (``ContainerExecutor(mem_limit="4g")``), install
    cloudpickle in the image, or look at what the job does when it dies.
    """


class ModuleNotInImage(EnvpinError):
    """A job needs a module the image cannot import and envpin cannot ship.

    envpin ships the notebook's own modules (anything outside site-packages) with the job; an
    installed package it refers to must be in the image.  Raised at submission, naming the module.

    Fix: install the package in the image, or run the notebook in the image so that what it
    imports is what the jobs import.
    """


class RemoteTraceback(Exception):
    """The job's traceback as text, attached as ``__cause__`` of the re-raised exception."""

    def __init__(self, tb: str):
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nTraceback in the worker:\n{self.tb}"


class JobFuture(cf.Future):
    """A Future whose ``cancel()`` also stops a job that is already running (its worker is replaced)."""

    _slot: _Slot | None = None

    def cancel(self) -> bool:
        if super().cancel():
            return True
        slot = self._slot
        if slot is None or self.done():
            return False
        slot.cancelled = self
        slot.kill_worker()
        return True


class _Slot:
    """One worker and the thread that feeds it jobs from the executor's queue.

    It knows the executor only through what it was handed: the job queue,
    ``start`` (a new worker and its connected socket) and the image's name
    for messages.
    """

    def __init__(
        self,
        index: int,
        jobs: queue.Queue[Any],
        start: Callable[[str], tuple[worker_hosts.Worker, socket.socket]],
        image: str,
        envelope_mode: str,
    ):
        self.id = f"{index}-{uuid.uuid4().hex[:6]}"
        self.jobs, self.start, self.image, self.envelope_mode = jobs, start, image, envelope_mode
        self.conn: socket.socket | None = None
        self.worker: worker_hosts.Worker | None = None
        self.cancelled: JobFuture | None = None
        self.thread = threading.Thread(target=self._loop, name=f"envpin-worker-{index}", daemon=True)
        self.thread.start()

    # -- worker lifecycle -----------------------------------------------------------

    def kill_worker(self) -> None:
        worker_, self.worker = self.worker, None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        if worker_ is not None:
            worker_.stop()

    def _death_message(self, dead: worker_hosts.Worker | None) -> str:
        why = dead.death().describe() if dead is not None else "it was stopped"
        return (
            f"The worker running this job in {self.image} died: {why}. Only this job failed; "
            "the worker is replaced for the next one. If it ran out of memory, give workers more "
            "(ContainerExecutor(mem_limit=...)) or send less data per job."
        )

    # -- the job loop ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                self.kill_worker()
                return
            future: JobFuture = item[0]
            frames, kind = item[1], item[2]
            if not future.set_running_or_notify_cancel():
                continue
            future._slot = self
            try:
                if self.conn is None:
                    self.worker, self.conn = self.start(self.id)
                    if self.cancelled is future:  # cancelled while its worker started: nothing to kill then
                        raise EOFError("the job was cancelled before it was sent")
                worker.send_frames(self.conn, frames)
                header, payload, buffers = envelopes.read_frames(
                    functools.partial(worker.recv_exact, self.conn), _ANSWERS[kind]
                )
                future._slot = None
                self._deliver(future, header, payload, buffers, kind)
            except envelopes.ProtocolError as exc:  # the job (or its image) broke the protocol: not trusted again
                future._slot = None
                self.kill_worker()
                future.set_exception(
                    WorkerDied(
                        f"The worker running this job in {self.image} sent a malformed answer ({exc}); it was "
                        "stopped, and only this job failed. A job that writes to the worker's own connection "
                        "(file descriptors it did not open) breaks it: leave them alone."
                    )
                )
            except (EOFError, OSError):
                future._slot = None
                dead, self.worker = self.worker, None
                self.kill_worker()
                if self.cancelled is future:
                    self.cancelled = None
                    if dead is not None:  # cancelled while it started: stopped here, not by cancel()
                        dead.stop()
                    future.set_exception(cf.CancelledError("the job was cancelled; its worker was stopped"))
                else:
                    future.set_exception(WorkerDied(self._death_message(dead)))
            except BaseException as exc:  # noqa: BLE001  anything else fails this job only; the thread serves on
                future._slot = None
                future.set_exception(exc)

    def _deliver(self, future: JobFuture, header: dict, payload, buffers, kind: str) -> None:
        if header["kind"] == "refused":
            message = header.get("message")
            if not isinstance(message, str):
                raise envelopes.ProtocolError("a refusal without a message")
            future.set_exception(envelopes.EnvelopeMismatch(message[:4000]))
            return
        if kind == "probe":
            missing = header.get("missing")
            if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
                raise envelopes.ProtocolError("a probe answer without a list of module names")
            future.set_result(missing)
            return
        try:
            status, value, tb = envelopes.loads(header, payload, buffers, "job result", self.envelope_mode)
        except envelopes.EnvelopeMismatch:
            raise
        except Exception as exc:  # noqa: BLE001  unpickling raises anything; e.g. a class only the image has
            raise EnvpinError(
                f"The job ran, but its result cannot be loaded here ({type(exc).__name__}: {exc}): it holds "
                "objects of a type this process cannot import. Return plain data (numbers, strings, lists, "
                "dicts, arrays), or types importable on both sides."
            ) from None
        if status == "ok":
            future.set_result(value)
        elif status == "unpicklable":
            future.set_exception(
                EnvpinError(f"The job ran, but its result cannot be sent back: {tb}. Return plain data.")
            )
        else:
            raised = value if isinstance(value, BaseException) else EnvpinError(tb.strip().splitlines()[-1])
            raised.__cause__ = RemoteTraceback(tb)
            future.set_exception(raised)


#: Live executors, shut down at interpreter exit; weak, so an executor nobody holds can be collected.
_live: weakref.WeakSet[ContainerExecutor] = weakref.WeakSet()


@atexit.register
def _shutdown_live() -> None:
    for ex in list(_live):
        ex.shutdown(wait=False)


class ContainerExecutor(cf.Executor):
    """Run callables in a container image; see the module docstring.

    ``image``: reference, id or alias; default: the session's pin
    (``%use_image``), else the image this process runs in.  ``max_workers``:
    warm workers (default 2).  ``mode``: ``auto``, ``process`` or ``container``.
    ``mem_limit``: per worker container (``"2g"``).  ``envelope``: how strictly
    jobs and results are checked against the measured pickle matrix,
    ``compatible`` or ``strict`` (``envpin.compat.policy``; default: the pin's
    ``%use_image --envelope``, else ``$ENVPIN_ENVELOPE``, else compatible).

    Container mode only (process-mode workers are the caller's own
    processes, with its files and user): ``workdir``: the current folder
    mounted into worker containers at its own path, ``"ro"`` (or True) or
    ``"rw"``; None (default): not mounted, jobs start in a private empty
    folder.  ``user``: ``uid`` or ``"uid:gid"`` the workers run as; default:
    the caller's, but ``nobody`` (65534) for a root caller; ``user="0:0"``
    runs a root caller's jobs as root.
    """

    def __init__(
        self,
        image: str | None = None,
        max_workers: int | None = None,
        mode: str = "auto",
        mem_limit: str | None = None,
        envelope: str | None = None,
        workdir: str | bool | None = None,
        user: str | int | None = None,
    ):
        pin = state.current_pin()
        self.envelope = policy.resolve_mode(envelope, pin.envelope if pin else None)
        chosen = image or (pin.name if pin else None) or os.environ.get(names.IMAGE)
        if not chosen:
            raise EnvpinError(
                "ContainerExecutor needs an image: pin the session first (%use_image IMAGE) or pass image=..."
            )
        self.image: str = chosen
        self.max_workers = max_workers or 2
        self.mem_limit = mem_limit
        self.mode = self._choose_mode(mode)
        if self.mode == "container":  # refused here, before any worker, pull or container
            from envpin.images import allowlist
            from envpin.session import aliases

            allowlist.check(
                aliases.expand(self.image), allowlist.patterns_from_env(), "a ContainerExecutor", self.image
            )
        worker_hosts.check_workdir(workdir)  # both validated in every mode: a typo is an error, not a no-op
        worker_hosts.worker_user(user)
        self._listener = listener.JobListener()
        try:
            self._box: worker_hosts.WorkerSandbox | None = None
            if self.mode == "container":
                self._box = worker_hosts.sandbox(self._listener.folder, self._listener.base, user, workdir)
                self._listener.open_to(self._box.uid, self._box.gid)
        except BaseException:
            self._listener.close()
            raise
        self._queue: queue.Queue[Any] = queue.Queue()
        self._slots: list[_Slot] = []
        self._shutdown = False
        self._lock = threading.Lock()
        self._verdicts: dict[str, str] = {}
        self._docker: Any = None
        self._image: Any = None
        _live.add(self)

    # -- modes ------------------------------------------------------------------------

    def _choose_mode(self, mode: str) -> str:
        if mode in ("process", "container"):
            return mode
        return "process" if state.runs_in_image(self.image) else "container"

    def _start_worker(self, slot_id: str) -> tuple[worker_hosts.Worker, socket.socket]:
        """A new worker for slot ``slot_id``, and its connection once it said hello."""
        w: worker_hosts.Worker
        token = self._listener.expect()
        try:
            w = self._new_worker(slot_id, token)
        except BaseException:
            self._listener.forget(token)
            raise
        try:
            conn, hello = self._wait_hello(token, w.exit_status)
            self._check_pickles_cross(hello["env"])
            return w, conn
        except BaseException:
            w.stop()
            raise

    def _new_worker(self, slot_id: str, token: str) -> worker_hosts.Worker:
        if self.mode == "process":
            return worker_hosts.ProcessWorker(self._listener.socket_path, slot_id, token, self.envelope)
        else:
            if self._image is None:  # resolved once, at the first container worker
                from envpin.host import images

                self._docker = images.client(
                    in_container_fix="Jobs of a Containerized Python kernel run as processes of its own container, "
                    f"in its image; to run them in {self.image!r}, move the kernel there: %use_image {self.image}, "
                    "and use ContainerExecutor() without an image."
                )
                self._image = images.resolve(self._docker, self.image, source="a ContainerExecutor")
            assert self._box is not None
            return worker_hosts.ContainerWorker(
                self._docker, self._image, self.image, self._box, slot_id, token, self.mem_limit, self.envelope
            )

    def _check_pickles_cross(self, theirs: dict) -> None:
        """Judge, once per worker, both directions a pickle takes, before any job is sent.

        The worker and this side check every envelope anyway; judged here, a
        refusal fails the first job with the whole story and an unmeasured
        pair's warning shows where the user looks (this process), not in a
        worker's log.
        """
        ours = envelopes.sender_environment()
        envelopes.check(ours, theirs, "job", self.envelope, where="in its worker")
        envelopes.check(theirs, ours, "job result", self.envelope)

    # -- connections ----------------------------------------------------------------

    def _wait_hello(
        self, token: str, exit_status: Callable[[], int | None], timeout: float = 60
    ) -> tuple[socket.socket, dict]:
        got = self._listener.wait(token, exit_status, timeout)
        if isinstance(got, tuple):
            return got
        if got is not None:
            raise WorkerDied(
                f"A job worker in {self.image} exited (code {got}) before it was ready. The image needs "
                "Python 3 with cloudpickle installed (pip install cloudpickle)."
            )
        raise WorkerDied(f"A job worker in {self.image} did not start within {timeout:.0f}s.")

    # -- the Executor interface --------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> JobFuture:
        return self._enqueue(self._pack(fn, args, kwargs), "job")

    def _enqueue(self, frames: list, kind: str) -> JobFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit jobs after shutdown")
            future = JobFuture()
            self._queue.put((future, frames, kind))
            if len(self._slots) < self.max_workers:
                self._slots.append(_Slot(len(self._slots), self._queue, self._start_worker, self.image, self.envelope))
            return future

    def _pack(self, fn: Callable, args: tuple, kwargs: dict) -> list:
        """Pickle a job, shipping local modules by value and refusing modules the image lacks.

        Deciding what a pickle refers to means walking its opcodes, which costs
        more than a tiny job; so each module gets a verdict once ("image": the
        worker imports it, "ship": pickle by value, "missing") and a pickle is
        walked only when it mentions a module without one.
        """
        job = (fn, args, kwargs)
        frames = self._dump(job, fn)
        payload = bytes(frames[3])
        mentioned = [m for m in shipping.loaded_top_level_modules() if m.encode() in payload]
        unknown = [m for m in mentioned if m not in self._verdicts]
        if unknown:
            referenced = shipping.modules_by_reference(payload)
            for m in mentioned:
                if m not in referenced:
                    continue  # a mere string: decide when it is really used
                self._verdicts.setdefault(m, self._local_or_installed(m))
            probe = sorted(m for m in referenced if self._verdicts.get(m) == "installed")
            if probe:
                self._probe(probe)
        ship = [sys.modules[m] for m in mentioned if self._verdicts.get(m) == "ship" and m in sys.modules]
        if ship:
            import cloudpickle

            for mod in ship:
                cloudpickle.register_pickle_by_value(mod)
            try:
                frames = self._dump(job, fn)
            finally:
                for mod in ship:
                    cloudpickle.unregister_pickle_by_value(mod)
        missing = [m for m in mentioned if self._verdicts.get(m) == "missing"]
        if missing and set(missing) & shipping.modules_by_reference(bytes(frames[3])):
            where = ", ".join(f"{n} (here: {getattr(sys.modules.get(n), '__file__', '?')})" for n in missing)
            raise ModuleNotInImage(
                f"This job needs {where}, which image {self.image} cannot import, and envpin only ships modules "
                "that are not installed. Install it in the image, or run the notebook in the image "
                f"(%use_image {self.image}) so what you import is what the jobs have."
            )
        return frames

    def _dump(self, job: tuple, fn: Callable) -> list:
        try:
            return envelopes.dumps(job, "job")
        except Exception as exc:  # noqa: BLE001  pickling raises whatever an object's __reduce__ raises
            raise EnvpinError(
                f"This job cannot be sent to a worker: pickling {getattr(fn, '__qualname__', fn)!s} with its "
                f"arguments failed ({type(exc).__name__}: {exc}). Jobs must not capture locks, open files, "
                "sockets or clients; create those inside the job function."
            ) from None

    def _local_or_installed(self, name: str) -> str:
        """'ship' for a module outside site-packages (the notebook's own code), else 'installed' (to probe)."""
        file = getattr(sys.modules.get(name), "__file__", None)
        if not file:
            return "image"  # namespace or built-in module: nothing to ship, nothing to check
        real = os.path.realpath(file)
        if not any(real.startswith(d + os.sep) for d in shipping.site_dirs()):
            return "ship"
        return "image" if self.mode == "process" else "installed"

    def _probe(self, names: list[str]) -> None:
        """Ask a worker which of ``names`` its image can import; record the verdicts."""
        missing = set(self._enqueue(envelopes.control_frames({"kind": "probe", "modules": names}), "probe").result())
        for name in names:
            self._verdicts[name] = "missing" if name in missing else "image"

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in self._slots:
                self._queue.put(None)
        if wait:
            for slot in self._slots:
                slot.thread.join(timeout=30)
        else:
            for slot in self._slots:
                slot.kill_worker()
        self._listener.close()
        _live.discard(self)


_shared: dict[str, ContainerExecutor] = {}
_shared_lock = threading.Lock()


def submit(fn: Callable, /, *args: Any, **kwargs: Any) -> JobFuture:
    """Run ``fn(*args, **kwargs)`` in the session's pinned image, on a shared executor."""
    pin = state.current_pin()
    image = (pin.name if pin else None) or os.environ.get(names.IMAGE)
    if not image:
        raise EnvpinError("envpin.submit needs a pinned image: run %use_image IMAGE first.")
    with _shared_lock:
        ex = _shared.get(image)
        if ex is None or ex._shutdown:
            ex = _shared[image] = ContainerExecutor(image)
    return ex.submit(fn, *args, **kwargs)


def shutdown_shared() -> None:
    """Shut the shared executors down (a re-pin or ``%unload_ext``): the next ``envpin.submit`` starts anew."""
    with _shared_lock:
        for ex in _shared.values():
            ex.shutdown(wait=False)
        _shared.clear()


def reset() -> None:
    """Shut the shared executors down (``envpin.reset_caches``).

    Executors the caller made stay (they are listed in ``_live`` only to be
    shut down at exit, which is theirs to do before that).
    """
    shutdown_shared()
