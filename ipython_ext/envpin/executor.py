"""``ContainerExecutor``: run functions in the pinned image, with the ``concurrent.futures`` interface.

Workers (``envpin.worker``) run in the image and are kept warm: a worker
serves one job at a time, for as many jobs as come, until the executor shuts
down.  Where they run depends on where the caller is:

* ``process`` mode: the caller already runs in the image (a Containerized
  Python kernel), which has no engine access by default: workers are
  processes of the caller's own container, the very same Python;
* ``container`` mode: the caller is elsewhere (a kernel on the host): each
  worker is a container of the image (labels ``envpin.role=job`` and the
  owner), with envpin mounted read-only as for kernels, removed on shutdown.

Jobs and results travel as envelopes (``envpin.envelope``) over a unix socket
in a private directory, mounted into worker containers: checked before
unpickling in both directions, large buffers out of band.

Code shipping: functions and classes of modules that are not installed
(the notebook's own ``helpers.py``, anything outside site-packages) are
pickled by value, so the worker needs no copy of them.  A module that is
installed here but missing in the image is refused at submit time, by name.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable

from . import envelope, shipping, worker
from .errors import EnvpinError


class WorkerDied(EnvpinError):
    """The worker running a job died (killed, out of memory); only that job fails."""


class ModuleNotInImage(EnvpinError):
    """A job needs a module the image cannot import and envpin cannot ship."""


class RemoteTraceback(Exception):
    """The job's traceback as text, attached as ``__cause__`` of the re-raised exception."""

    def __init__(self, tb: str):
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nTraceback in the worker:\n{self.tb}"


class JobFuture(cf.Future):
    """A Future whose ``cancel()`` also stops a job that is already running (its worker is replaced)."""

    _slot: "_Slot | None" = None

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
    """One worker and the thread that feeds it jobs."""

    def __init__(self, executor: "ContainerExecutor", index: int):
        self.ex = executor
        self.id = f"{index}-{uuid.uuid4().hex[:6]}"
        self.conn: socket.socket | None = None
        self.handle: Any = None  # subprocess.Popen or a docker container
        self.cancelled: JobFuture | None = None
        self.thread = threading.Thread(target=self._loop, name=f"envpin-worker-{index}", daemon=True)
        self.thread.start()

    # -- worker lifecycle -----------------------------------------------------------

    def _start_worker(self) -> None:
        argv = ["-m", "envpin.run_worker", self.ex._socket_path, self.id]
        if self.ex.mode == "process":
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [_envpin_parent(), env.get("PYTHONPATH")]))
            self.handle = subprocess.Popen([sys.executable, *argv], env=env, stdin=subprocess.DEVNULL)
        else:
            self.handle = self.ex._start_container(["python3", *argv], self.id)
        try:
            self.conn = self.ex._wait_hello(self.id, self._exit_status)
        except BaseException:
            self.kill_worker()
            raise

    def _exit_status(self) -> int | None:
        if self.handle is None:
            return -1
        if isinstance(self.handle, subprocess.Popen):
            return self.handle.poll()
        return self.ex._container_exit(self.handle)

    def kill_worker(self) -> None:
        handle, self.handle = self.handle, None
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None
        if isinstance(handle, subprocess.Popen):
            handle.kill()
            handle.wait()
        elif handle is not None:
            self.ex._remove_container(handle)

    def _death_message(self, handle: Any) -> str:
        code, oom = None, False
        if isinstance(handle, subprocess.Popen):
            code = handle.wait()
        elif handle is not None:
            code, oom = self.ex._container_death(handle)
        if oom or code in (137, -9):
            why = "it was killed (out of memory, or from outside)" if not oom else "it ran out of memory"
        else:
            why = f"it exited with code {code}"
        return (
            f"The worker running this job in {self.ex.image} died: {why}. Only this job failed; "
            "the worker is replaced for the next one. If it ran out of memory, give workers more "
            "(ContainerExecutor(mem_limit=...)) or send less data per job."
        )

    # -- the job loop ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            item = self.ex._queue.get()
            if item is None:
                self.kill_worker()
                return
            future, frames, kind = item
            if not future.set_running_or_notify_cancel():
                continue
            future._slot = self
            try:
                if self.conn is None:
                    self._start_worker()
                worker.send_frames(self.conn, frames)
                header, payload, buffers = envelope.read_frames(lambda n: worker.recv_exact(self.conn, n))
                future._slot = None
                self._deliver(future, header, payload, buffers, kind)
            except (EOFError, OSError):
                future._slot = None
                handle, self.handle = self.handle, None
                self.kill_worker()
                if self.cancelled is future:
                    self.cancelled = None
                    future.set_exception(cf.CancelledError("the job was cancelled; its worker was stopped"))
                else:
                    future.set_exception(WorkerDied(self._death_message(handle)))
            except BaseException as exc:
                future._slot = None
                future.set_exception(exc)

    def _deliver(self, future: JobFuture, header: dict, payload, buffers, kind: str) -> None:
        if header.get("kind") == "refused":
            future.set_exception(envelope.EnvelopeMismatch(header["message"]))
            return
        if kind == "probe":
            future.set_result(header.get("missing", []))
            return
        try:
            status, value, tb = envelope.loads(header, payload, buffers, "job result")
        except envelope.EnvelopeMismatch:
            raise
        except Exception as exc:  # e.g. an object of a class that exists only in the image
            raise EnvpinError(
                f"The job ran, but its result cannot be loaded here ({type(exc).__name__}: {exc}): it holds "
                "objects of a type this process cannot import. Return plain data (numbers, strings, lists, "
                "dicts, arrays), or types importable on both sides."
            ) from None
        if status == "ok":
            future.set_result(value)
        elif status == "unpicklable":
            future.set_exception(EnvpinError(f"The job ran, but its result cannot be sent back: {tb}. Return plain data."))
        else:
            exc = value if isinstance(value, BaseException) else EnvpinError(tb.strip().splitlines()[-1])
            exc.__cause__ = RemoteTraceback(tb)
            future.set_exception(exc)


def _envpin_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ContainerExecutor(cf.Executor):
    """Run callables in a container image; see the module docstring.

    ``image``: reference, id or alias; default: the session's pin
    (``%use_image``), else the image this process runs in.  ``max_workers``:
    warm workers (default 2).  ``mode``: ``auto``, ``process`` or ``container``.
    ``mem_limit``: per worker container (``"2g"``).
    """

    def __init__(self, image: str | None = None, max_workers: int | None = None, mode: str = "auto", mem_limit: str | None = None):
        from .session import current_pin

        pin = current_pin()
        self.image = image or (pin.name if pin else None) or os.environ.get("ENVPIN_IMAGE")
        if not self.image:
            raise EnvpinError(
                "ContainerExecutor needs an image: pin the session first (%use_image IMAGE) or pass image=..."
            )
        self.max_workers = max_workers or 2
        self.mem_limit = mem_limit
        self.mode = self._choose_mode(mode)
        if self.mode == "container":  # refused here, before any worker, pull or container
            from . import aliases, image_policy

            image_policy.check(
                aliases.expand(self.image), image_policy.patterns_from_env(), "a ContainerExecutor", self.image
            )
        self._dir = tempfile.mkdtemp(prefix="envpin-jobs-")
        self._socket_path = os.path.join(self._dir, "jobs.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self._socket_path)
        self._listener.listen(64)
        self._hellos: dict[str, "queue.Queue[socket.socket]"] = {}
        self._hello_lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name="envpin-accept", daemon=True).start()
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._slots: list[_Slot] = []
        self._shutdown = False
        self._lock = threading.Lock()
        self._verdicts: dict[str, str] = {}
        self._docker = None
        self._image = None
        atexit.register(self.shutdown, wait=False)

    # -- modes ------------------------------------------------------------------------

    def _choose_mode(self, mode: str) -> str:
        if mode in ("process", "container"):
            return mode
        from . import aliases

        here = {os.environ.get("ENVPIN_IMAGE"), os.environ.get("ENVPIN_IMAGE_NAME"), os.environ.get("ENVPIN_IMAGE_ID")}
        wanted = {self.image, aliases.expand(self.image)}
        return "process" if here & wanted else "container"

    def _container_image(self):
        if self._image is None:
            from . import host_docker

            self._docker = host_docker.client()
            self._image = host_docker.resolve(self._docker, self.image, source="a ContainerExecutor")
        return self._image

    def _start_container(self, argv: list[str], slot_id: str):
        from .container_spec import base_options

        image = self._container_image()
        options = base_options(
            image_id=image.id, reference=image.reference, immutable=image.immutable, role="job",
            image_env=image.env, cwd=os.getcwd(), extra_labels={"envpin.job-slot": slot_id},
        )  # fmt: skip
        options["environment"]["ENVPIN_IMAGE_NAME"] = self.image
        options["mounts"].append({"Target": self._dir, "Source": self._dir, "Type": "bind", "ReadOnly": False})
        if self.mem_limit:
            options.update(mem_limit=self.mem_limit, memswap_limit=self.mem_limit)
        container = self._docker.containers.create(entrypoint=[argv[0]], command=argv[1:], **options)
        container.start()
        return container

    def _container_exit(self, container) -> int | None:
        try:
            container.reload()
        except Exception:
            return -1
        return None if container.status in ("created", "running") else container.attrs["State"].get("ExitCode", -1)

    def _container_death(self, container) -> tuple[int | None, bool]:
        try:
            container.wait(timeout=10)
            container.reload()
            state = container.attrs["State"]
            return state.get("ExitCode"), bool(state.get("OOMKilled"))
        except Exception:
            return None, False
        finally:
            self._remove_container(container)

    def _remove_container(self, container) -> None:
        try:
            container.remove(force=True)
        except Exception:
            pass

    # -- connections ----------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            try:
                header, _, _ = envelope.read_frames(lambda n: worker.recv_exact(conn, n))
            except (EOFError, OSError, ValueError):
                conn.close()
                continue
            self._hello_queue(header.get("slot", "")).put(conn)

    def _hello_queue(self, slot_id: str) -> "queue.Queue[socket.socket]":
        with self._hello_lock:
            return self._hellos.setdefault(slot_id, queue.Queue())

    def _wait_hello(self, slot_id: str, exit_status: Callable[[], int | None], timeout: float = 60) -> socket.socket:
        q = self._hello_queue(slot_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                code = exit_status()
                if code is not None:
                    raise WorkerDied(
                        f"A job worker in {self.image} exited (code {code}) before it was ready. The image needs "
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
                self._slots.append(_Slot(self, len(self._slots)))
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
            return envelope.dumps(job, "job")
        except Exception as exc:
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
        import json

        header = json.dumps({"kind": "probe", "modules": names}).encode()
        u = envelope._U64.pack
        missing = set(self._enqueue([u(len(header)), header, u(0), b"", u(0)], "probe").result())
        for name in names:
            self._verdicts[name] = "missing" if name in missing else "image"

    def map(self, fn: Callable, *iterables, timeout: float | None = None, chunksize: int = 1):
        return super().map(fn, *iterables, timeout=timeout)

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
        try:
            self._listener.close()
        except OSError:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._docker is not None:
            self._docker.close()


_shared: dict[str, ContainerExecutor] = {}
_shared_lock = threading.Lock()


def submit(fn: Callable, /, *args: Any, **kwargs: Any) -> JobFuture:
    """Run ``fn(*args, **kwargs)`` in the session's pinned image, on a shared executor."""
    from .session import current_pin

    pin = current_pin()
    image = (pin.name if pin else None) or os.environ.get("ENVPIN_IMAGE")
    if not image:
        raise EnvpinError("envpin.submit needs a pinned image: run %use_image IMAGE first.")
    with _shared_lock:
        ex = _shared.get(image)
        if ex is None or ex._shutdown:
            ex = _shared[image] = ContainerExecutor(image)
    return ex.submit(fn, *args, **kwargs)


class ExecutorAdapter:
    """The built-in adapter: ``envpin.submit`` follows the pin (a re-pin retires the old workers)."""

    name = "envpin.submit"

    def available(self) -> bool:
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            return False
        return True

    def activate(self, stamp) -> None:
        shutdown_shared()  # the next envpin.submit starts workers for the new pin

    def deactivate(self) -> None:
        shutdown_shared()


def shutdown_shared() -> None:
    with _shared_lock:
        for ex in _shared.values():
            ex.shutdown(wait=False)
        _shared.clear()
