"""Where a ``ContainerExecutor``'s workers run: one interface, two places.

A worker is ``python -m envpin.run_worker SOCKET SLOT`` (``envpin.worker``)
started somewhere that runs the pinned image:

* :class:`ProcessWorker`: a process of this very container, when the caller
  already runs in the image (a Containerized Python kernel, which has no
  engine access by default), the same interpreter as the caller;
* :class:`ContainerWorker`: a container of the image, when the caller runs
  elsewhere (a kernel on the host); labelled ``envpin.role=job`` with its
  owner, envpin mounted read-only as for kernels, the executor's socket
  folder mounted at its own path.

The executor only ever talks to a :class:`Worker`: how to tell whether it
still runs, how to stop it, and why it died.  Everything about one kind of
worker stays in its class.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Protocol

from . import boot, engines
from .compat import ENV_VAR as ENVELOPE_VAR  # tells a worker how strictly to check the jobs it loads

#: The worker's entry point, relative to the interpreter: ``python -m envpin.run_worker SOCKET SLOT``.
WORKER_MODULE = "envpin.run_worker"


@dataclass(frozen=True)
class Death:
    """How a worker ended: its exit code (None: unknown) and whether the kernel's OOM killer did it."""

    code: int | None
    oom: bool = False

    def describe(self) -> str:
        if self.oom:
            return "it ran out of memory"
        if self.code in (137, -9):
            return "it was killed (out of memory, or from outside)"
        return f"it exited with code {self.code}"


class Worker(Protocol):
    """A started worker, whatever runs it."""

    def exit_status(self) -> int | None:
        """None while it runs, else its exit code (-1 when it is gone without one)."""

    def stop(self) -> None:
        """Stop it now and release what it holds (idempotent)."""

    def death(self) -> Death:
        """After it stopped by itself: why.  Releases it too."""


def envpin_parent() -> str:
    """The folder holding the ``envpin`` package, for a worker process's ``PYTHONPATH``."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ProcessWorker:
    """A worker process of this container, on this interpreter."""

    def __init__(self, socket_path: str, slot_id: str, envelope_mode: str) -> None:
        env = dict(os.environ)
        env[ENVELOPE_VAR] = envelope_mode
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [envpin_parent(), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            boot.argv(sys.executable, WORKER_MODULE, socket_path, slot_id), env=env, stdin=subprocess.DEVNULL
        )

    def exit_status(self) -> int | None:
        return self._process.poll()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()

    def death(self) -> Death:
        return Death(self._process.wait())


class ContainerWorker:
    """A worker container of the pinned image, created through the Docker SDK's ``client``.

    ``image`` is a ``host_docker.Image`` (resolved once per executor);
    ``socket_dir`` is the executor's private folder holding its socket.
    """

    def __init__(
        self,
        client: Any,
        image: Any,
        name: str,
        socket_dir: str,
        socket_path: str,
        slot_id: str,
        mem_limit: str | None,
        envelope_mode: str,
    ) -> None:
        from .container_spec import base_options

        options = base_options(
            image_id=image.id,
            reference=image.reference,
            immutable=image.immutable,
            role="job",
            image_env=image.env,
            cwd=os.getcwd(),
            extra_labels={"envpin.job-slot": slot_id},
        )
        options["environment"]["ENVPIN_IMAGE_NAME"] = name
        options["environment"][ENVELOPE_VAR] = envelope_mode  # the worker checks jobs as strictly as we do
        options["mounts"].append({"Target": socket_dir, "Source": socket_dir, "Type": "bind", "ReadOnly": False})
        if mem_limit:
            options.update(mem_limit=mem_limit, memswap_limit=mem_limit)
        self._container = engines.create(
            client, entrypoint=boot.entrypoint("python3"), command=[WORKER_MODULE, socket_path, slot_id], **options
        )
        try:
            self._container.start()
        except BaseException:
            self.stop()
            raise
        self._gone = False

    def exit_status(self) -> int | None:
        import docker.errors

        if self._gone:
            return -1
        try:
            self._container.reload()
        except docker.errors.NotFound:  # removed from outside
            return -1
        if self._container.status in ("created", "running"):
            return None
        return int(self._container.attrs["State"].get("ExitCode", -1))

    def stop(self) -> None:
        from .host_docker import remove

        if not self._gone:
            self._gone = True
            remove(self._container)

    def death(self) -> Death:
        import docker.errors
        import requests.exceptions

        try:
            self._container.wait(timeout=10)
            self._container.reload()
            state = self._container.attrs["State"]
            return Death(state.get("ExitCode"), bool(state.get("OOMKilled")))
        except (docker.errors.NotFound, requests.exceptions.RequestException):
            return Death(None)  # removed from outside, or it did not stop within 10 s: unknown
        finally:
            self.stop()
