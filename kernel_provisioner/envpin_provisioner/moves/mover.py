"""The server's half of ``%use_image``: answer a kernel's pin requests, and move it between images.

The kernel writes a request into its control folder (``envpin.notebook.control``);
:class:`ControlChannel` reads and validates it (everything the kernel writes
is hostile input, see ``moves.control_requests``) and hands over a typed
:class:`ControlRequest`.  :class:`MoveServer` answers it:

* ``same``: the image resolves to the one the kernel runs in; the pin is
  recorded beside the notebook and the kernel pins itself;
* ``refused``: another image, but the kernel holds state and the user did
  not say ``--restart``; nothing changes;
* ``moving``: a kernel is started in the new image on the *same* channels
  while the old one still runs, the pin is recorded, then the old kernel
  hands its clients over and exits (``envpin.notebook.handoff``).  A new image that
  cannot run a kernel is reported while the old kernel is there to say so;
* ``error``: one paragraph, for any request that fails.  The watcher goes on
  serving: a kernel waiting for an answer must never hang.

The requested name is turned into one checked reference off the event loop
(``selection.checked_reference``: the aliases file read once, the
parsed value checked against ``allowed_images``) and the engine is asked for
exactly that value.  A pull the request causes is admitted and counted by
the kernel's ``pull_budget.PullBudget``; unless the request ends with the
kernel in (or pinned to) the pulled image, what it pulled is removed again.

It works on the :class:`~.provisioner.EnvpinProvisioner` that owns it, and
uses exactly the members :class:`MovableKernel` lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from envpin import safe_files
from envpin.images import references
from envpin.session import pin_file
from envpin.session.stamping import require_digest
from envpin_provisioner import engine
from envpin_provisioner.errors import EnvpinError
from envpin_provisioner.images import pulling, selection
from envpin_provisioner.images.pull_budget import PullBudget, PullRecord
from envpin_provisioner.kernel import channels
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel.launch import KernelLaunch
from envpin_provisioner.moves.activity import Activity
from envpin_provisioner.moves.control_requests import ControlChannel, ControlRequest
from envpin_provisioner.remote import tls_kernel

if TYPE_CHECKING:
    import docker.models.containers


class MovableKernel(Protocol):
    """What the move server needs from the provisioner that owns it."""

    kernel_id: str | None
    log: logging.Logger | logging.LoggerAdapter
    allowed_images: list[str]
    pull_policy: str
    cwd: str | None

    @property
    def pull_budget(self) -> PullBudget:
        """The pulls this kernel may still cause (kept across restarts and moves)."""

    @property
    def choice(self) -> selection.ImageChoice | None: ...

    @property
    def kernelspec_name(self) -> str | None:
        """The kernelspec the kernel was started from: recorded with a pin (a folder pin applies only to it)."""

    def pin_location(self) -> tuple[safe_files.PinnedDir, str | None, tuple[int, int] | None]:
        """(folder of the pin file, pinned at the first start; notebook key; owner of the files written)."""

    def build_launch(self, choice: selection.ImageChoice, env: dict[str, str], moved: bool = False) -> KernelLaunch: ...

    async def start_container(
        self, launch: KernelLaunch, replacing: dict[str, tuple[int, int]] | None = None
    ) -> docker.models.containers.Container: ...

    def swap(
        self, container: docker.models.containers.Container, launch: KernelLaunch, choice: selection.ImageChoice
    ) -> docker.models.containers.Container | None:
        """Make ``container`` the kernel's; return the previous one."""

    def set_choice(self, choice: selection.ImageChoice) -> None: ...

    async def engine_client(self) -> Any:
        """The Docker client of the kernel's engine (another machine's, for a remote kernel)."""

    async def abandon(self, container: docker.models.containers.Container) -> None:
        """Remove a move's new container and give the kernel that stays its channels back."""


class MoveServer:
    """Serves one kernel's control channel from launch until cleanup."""

    #: Seconds the old kernel gets to hand over and exit after a move before it is killed.
    HANDOVER_TIMEOUT = 15.0

    def __init__(self, kernel: MovableKernel, channel: ControlChannel, env: dict[str, str]) -> None:
        self.kernel = kernel
        self.channel = channel
        self.env = env  #: the environment of the kernel's start request: a moved kernel gets the same
        #: True while a move replaces the container: the provisioner's poll() must not report the old one's exit
        self.moving = False
        #: what the current request is doing and how the last one ended (reported by the JupyterLab extension)
        self.activity = Activity()
        self._closed = False

    def close(self) -> None:
        self._closed = True

    async def serve(self) -> None:
        """Answer requests until :meth:`close` (or cancellation)."""
        while not self._closed:
            await asyncio.sleep(self.channel.delay)
            if self._closed:
                return
            request = await engine.call(self.channel.take_request)
            if request is None:
                continue
            self.activity.begin(request.image)
            try:
                await self.answer(request)
            except EnvpinError as exc:
                self.activity.end("error", str(exc))
                self.channel.respond(request.id, status="error", message=str(exc))
            except Exception as exc:  # a bug of ours: logged in full, answered, and the watcher survives it
                self.kernel.log.exception("envpin: %%use_image request failed")
                self.activity.end("error", f"envpin failed: {type(exc).__name__}: {exc}")
                self.channel.respond(request.id, status="error", message=f"envpin failed: {type(exc).__name__}: {exc}")

    async def answer(self, request: ControlRequest) -> None:
        kernel, channel, name = self.kernel, self.channel, request.image
        current = kernel.choice
        if current is None:
            raise EnvpinError("This kernel has not finished starting; run %use_image again in a moment.")
        channel.respond(request.id, status="working", message=f"envpin: resolving {name} ...")
        reference = await engine.call(
            selection.checked_reference, name, kernel.allowed_images, "%use_image in this kernel"
        )
        client = await self.kernel.engine_client()
        pulls = kernel.pull_budget.record()
        try:
            used = await self._answer(request, current, reference, client, pulls)
        except BaseException:
            await engine.call(pulls.undo, client, kernel.log)
            raise
        if used:
            pulls.keep()
        else:
            await engine.call(pulls.undo, client, kernel.log)

    async def _answer(
        self,
        request: ControlRequest,
        current: selection.ImageChoice,
        reference: references.Reference,
        client: Any,
        pulls: PullRecord,
    ) -> bool:
        """Answer ``request`` for the checked ``reference``; True when the kernel now uses the image."""
        kernel, channel, name = self.kernel, self.channel, request.image
        policy = "always" if request.pull else kernel.pull_policy

        def progress(message: str, fraction: float | None = None) -> None:  # shown under the %use_image cell
            self.activity.progress("pulling", message, fraction)
            channel.respond(request.id, status="working", message=message, fraction=fraction)

        resolved = await engine.call(pulling.resolve, client, reference, policy, kernel.log, progress, pulls)
        notes = list(current.notes) if current.latest_id and resolved.immutable == current.latest_id else []
        answer = {"name": name, "reference": resolved.reference, "image_id": resolved.immutable, "notes": notes}
        options = request.options.as_dict()
        if options.get("by_digest"):
            require_digest(name, resolved.immutable)  # before anything moves
        record: dict[str, Any] = {
            "image": name,
            "reference": resolved.reference,
            "image_id": resolved.immutable,
            pin_file.KERNELSPEC: kernel.kernelspec_name,
        }
        if options:
            record["options"] = options
        pin_folder, notebook, owner = kernel.pin_location()
        if resolved.id == current.resolved.id:
            if request.python:
                record["python"] = request.python
            await engine.call(pin_file.record, pin_folder, notebook, record, owner)
            kernel.set_choice(
                selection.ImageChoice(
                    name, current.resolved, pinned=True, options=options, source=selection.BY_USE_IMAGE
                )
            )
            self.activity.end("same", f"pinned to {name} ({resolved.immutable})")
            channel.respond(request.id, status="same", **answer)
            return True
        if not request.allow_restart:
            self.activity.end(
                "refused",
                f"Moving to '{name}' ({resolved.immutable}) restarts this kernel, which holds state that would be "
                "lost; confirm the move with --restart.",
            )
            channel.respond(request.id, status="refused", **answer)
            return False
        await engine.call(pin_file.read, pin_folder)  # a damaged pin file stops the move before it starts
        choice = selection.ImageChoice(name, resolved, pinned=True, options=options, source=selection.BY_USE_IMAGE)
        await self.move(request, choice, answer, lambda: pin_file.record(pin_folder, notebook, record, owner))
        return True

    async def move(
        self, request: ControlRequest, choice: selection.ImageChoice, answer: dict, record_pin: Callable[[], object]
    ) -> None:
        """Start the kernel in the new image on the same channels, then let the old one hand over and go.

        The new kernel binds the same unix socket paths while the old one still
        runs (clients stay connected to the old one until it exits), so a new
        image that cannot run a kernel is reported while the old kernel is still
        there to report it.
        """
        kernel = self.kernel
        launch = kernel.build_launch(choice, self.env, moved=True)
        self.moving = True
        self.activity.progress("starting", f"starting a kernel in {choice.name}")
        try:
            new = await kernel.start_container(launch, replacing=channels.socket_inodes(launch))
            try:
                await engine.call(record_pin)  # before the hand-over: a restart must find it
            except BaseException:
                await self.kernel.abandon(new)
                raise
            self.channel.respond(request.id, status="moving", **answer)
            old = kernel.swap(new, launch, choice)
            self.activity.end("moved", f"moved into {choice.name} ({choice.resolved.immutable})")
            if old is not None:
                try:
                    await engine.call(wait_exit, old, self.HANDOVER_TIMEOUT)
                    # A relayed control folder (another machine's engine) brings handoff.json across; locally
                    # the two containers share the folder and this does nothing.
                    await engine.call(self.channel.carry_handoff, old)
                finally:  # a shutdown meanwhile cancels this task: the old container still goes
                    await engine.call_through(tls_kernel.remove, old)  # (and a TLS kernel's channel relay)
            kernel.log.info(
                "envpin: kernel %s moved into %s (%s)", kernel.kernel_id, choice.name, choice.resolved.immutable
            )
        finally:
            self.moving = False


def wait_exit(container: docker.models.containers.Container, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``container`` to stop by itself, then kill it.  Blocking."""
    import docker.errors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kernel_container.state(container)[1] is not None:
            return
        time.sleep(0.05)
    try:
        container.kill()
    except docker.errors.APIError:  # it stopped between the last look and the kill (404/409)
        pass
