"""``%use_image``: pin this session's jobs to an image, moving the kernel into it when it can.

Three situations, told apart by what the kernel sees around it:

* under the envpin provisioner (``$ENVPIN_CONTROL_DIR`` exists): the
  provisioner resolves the image; if it is the kernel's own, the session is
  pinned; otherwise the kernel is moved into it (see ``handoff``), unless it
  holds user state and ``--restart`` was not given;
* in some other container that names its image (``envpin run``, a job): only
  that image can be pinned;
* on a host (plain ipykernel, IPython in a terminal): jobs are pinned, and the
  image's fingerprint is compared with this process's; differences that break
  pickles are a warning, or an error with ``--strict``.

Errors are shown as IPython usage errors: one paragraph, no traceback.
"""

from __future__ import annotations

import os
import platform
import sys
import types

from IPython.core.error import UsageError as _IPythonUsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from envpin import names
from envpin.compat import fingerprints, policy
from envpin.errors import EnvironmentMismatch, EnvpinError
from envpin.notebook import control, handoff
from envpin.notebook.display import Progress, Status
from envpin.session import aliases, options, pin_file, stamping
from envpin.session.state import Pin, current_pin, pin_from_environment


class UsageError(_IPythonUsageError, EnvpinError):
    """A ``%use_image`` that cannot be done, said in one paragraph.

    Both an IPython ``UsageError`` (what a magic raises for a bad call) and an
    ``EnvpinError``, so envpin's short display shows it (``short_errors``)
    and ``%tb`` still has the whole story: the cause is chained.

    Fix: the paragraph is the message of the error underneath (one of the others on this page)
    and says what to do; ``%tb`` in the next cell shows the full traceback.
    """


class MoveRefused(EnvpinError):
    """A move the kernel's state forbids without ``--restart`` (the state would be lost).

    Fix: run ``%use_image IMAGE --restart`` to move anyway and lose the variables, or restart the kernel first
    (the pin is kept) and run ``%use_image`` before anything else.
    """


#: Names a fresh kernel already has; anything else in the namespace is the user's state.
_FRESH_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def user_state(shell) -> list[str]:
    """Names the user defined: what a restart would lose.

    Imported modules do not count: re-running the import costs nothing, and
    ``import`` lines commonly sit above ``%use_image``.
    """
    hidden = getattr(shell, "user_ns_hidden", {})
    return sorted(
        k
        for k, v in shell.user_ns.items()
        if not k.startswith("_") and k not in hidden and k not in _FRESH_NAMES and not isinstance(v, types.ModuleType)
    )


def _in_foreign_container() -> bool:
    """In a container that declares its image (``envpin run``, a job) but that envpin cannot restart.

    A container that declares nothing (a dev machine that is itself a
    container) is treated like a host: all we can do there is compare.
    """
    inside = names.in_container()
    return inside and bool(os.environ.get(names.IMAGE)) and control.control_dir() is None


@magics_class
class EnvpinMagics(Magics):
    @line_magic
    @magic_arguments()
    @argument("image", nargs="?", help="image to pin (reference, id or alias); omit to show the current pin")
    @argument("--restart", action="store_true", help="move the kernel even though it holds state (which is lost)")
    @argument("--strict", action="store_true", help=options.BY_NAME["strict"].help)
    @argument("--pull", action="store_true", help="pull the image first even if it is present")
    @argument("--envelope", choices=options.ENVELOPE_MODES, default=None, help=options.BY_NAME["envelope"].help)
    @argument("--by-digest", action="store_true", help=options.BY_NAME["by_digest"].help)
    @argument("--ray-mode", choices=options.RAY_MODES, default=None, help=options.BY_NAME["ray_mode"].help)
    def use_image(self, line: str):
        """Run this notebook and the jobs it submits in IMAGE.

        %use_image IMAGE [--restart] [--strict] [--pull] [--by-digest] [--ray-mode image_uri|env_vars]
                         [--envelope compatible|strict]
        %use_image                      show what is pinned
        """
        try:
            args = parse_argstring(self.use_image, line)
        except _IPythonUsageError as exc:
            raise UsageError(
                f"%use_image takes one image and options, not '{line.strip()}' ({exc}). "
                f"Usage: %use_image IMAGE [--restart] [--pull] {options.usage()}; "
                "%use_image alone shows the pin."
            ) from None
        try:
            if args.ray_mode is not None:
                _ray_adapter().mode = args.ray_mode
            if args.image is None:
                display(Status(current_pin(), "envpin: current pin"))
                return
            if control.control_dir() is not None:
                return self._through_provisioner(args)
            if _in_foreign_container():
                return self._in_foreign_container(args)
            return self._on_host(args)
        except EnvpinError as exc:
            # One paragraph under the cell; %tb shows the full traceback (the cause, chained).
            raise UsageError(str(exc)) from exc

    # -- kernel started by the envpin provisioner -----------------------------------

    def _through_provisioner(self, args):
        folder = control.control_dir()
        if folder is None:  # use_image() checked it; re-checked for the type checker
            raise EnvpinError("This kernel has no control folder: it was not started by the envpin provisioner.")
        # The request's line under the cell: its progress while it works, then its outcome (never "resolving ...").
        progress = Progress(args.image)
        try:
            self._ask_provisioner(args, folder, progress)
        except EnvpinError as exc:
            refused = isinstance(exc, MoveRefused)
            progress.finish(
                "refused" if refused else "error",
                str(exc),
                f"envpin: not moved to {args.image}: "
                + ("this kernel holds state (see below)" if refused else "see the error below"),
            )
            raise

    def _ask_provisioner(self, args, folder, progress: Progress) -> None:
        state = user_state(self.shell)
        answer = control.ask(
            folder,
            {
                "image": args.image,
                "allow_restart": bool(args.restart or not state),
                "pull": bool(args.pull),
                "python": platform.python_version(),
                "options": options.SessionOptions(
                    strict=bool(args.strict),
                    by_digest=bool(args.by_digest),
                    ray_mode=args.ray_mode,
                    envelope=args.envelope,
                ).as_dict(),
            },
            on_progress=lambda answer: progress.update(answer["message"], answer.get("fraction")),
        )
        status = answer.get("status")
        if status == "same":
            pin = _pin_of_this_container()
            pin.name = args.image
            pin.notes += answer.get("notes", [])
            _pin_with_flags(pin, args)
            progress.finish(
                "same",
                f"envpin: pinned to {args.image} ({pin.image_id})",
                Status(pin, f"envpin: pinned to {args.image}"),
            )
            return
        if status == "refused":
            shown = ", ".join(state[:8]) + (", ..." if len(state) > 8 else "")
            raise MoveRefused(
                f"Moving to '{args.image}' ({answer.get('image_id')}) restarts this kernel, which holds state "
                f"({shown}) that would be lost. Re-run as %use_image {args.image} --restart to move anyway, "
                "or put %use_image at the top of the notebook and restart the kernel."
            )
        if status == "moving":
            progress.finish(
                "moved",
                f"envpin: moving this kernel into {args.image} ({answer.get('image_id')}); "
                "the rest of the notebook runs there.",
            )
            for note in answer.get("notes", []):
                print(f"envpin: {note}", flush=True)
            handoff.hand_over_and_exit(self.shell, folder, args.image)
            return
        raise EnvpinError(answer.get("message") or f"The envpin provisioner answered {answer!r}.")

    # -- a container envpin cannot restart ------------------------------------------

    def _in_foreign_container(self, args):
        here = os.environ.get(names.IMAGE)
        if here and (args.image in (here, os.environ.get(names.IMAGE_NAME)) or aliases.expand(args.image) == here):
            pin = _pin_of_this_container("container")
            pin.name = args.image
            _pin_with_flags(pin, args)
            display(Status(pin, f"envpin: pinned to {args.image}"))
            return
        remote = os.environ.get(names.REMOTE_ENGINE)
        if remote:
            raise EnvpinError(
                f"This kernel runs in {here} on the engine at {remote} without a control folder (its Jupyter server "
                "started it with an older envpin, or re-attached to it after a restart), so %use_image cannot move "
                f"it and it stays in {here}. Restart the kernel to get one, or, to work in '{args.image}' there, "
                "install a kernelspec for it and pick that kernel: envpin "
                f"kernelspec install --image {args.image} --name NAME --config engine={remote} (add this "
                "kernelspec's other options); jobs from this kernel run in its own image."
            )
        raise EnvpinError(
            f"This kernel runs in a container of {here} that the envpin provisioner does not manage (started "
            "by envpin run, by a client that ignores kernel provisioners such as VS Code, or by another tool), "
            f"so it cannot move into '{args.image}'. Open the notebook in JupyterLab or Notebook with the "
            f"Containerized Python kernel, or install one for that image: envpin kernelspec install --image {args.image}."
        )

    # -- a kernel on the host --------------------------------------------------------

    def _on_host(self, args):
        theirs = fingerprints.fingerprint(image=args.image)
        ours = fingerprints.fingerprint()
        diffs = fingerprints.compare(ours, theirs)
        pin = Pin(
            name=args.image,
            reference=aliases.expand(args.image),
            image_id=theirs.get("image_id"),
            python=theirs.get("python_version"),
            cloudpickle=theirs.get("cloudpickle"),
            mode="host",
            code_in_image=theirs.get("code_in_image"),
        )
        envelope_mode = policy.resolve_mode(args.envelope)
        # Strict mode refuses every job across a pickle-relevant difference, measured to work or not.
        refused = [d for d in diffs if d.breaks_pickles or (envelope_mode == "strict" and d.evidence)]
        if refused:
            why = (
                "ways that break pickles"
                if any(d.breaks_pickles for d in refused)
                else "ways that strict mode (--envelope strict / ENVPIN_ENVELOPE=strict) refuses"
            )
            text = (
                f"This kernel (Python {platform.python_version()}) is not in '{args.image}' and differs from it in "
                f"{why}: {'; '.join(str(d) for d in refused)}. Jobs pickled here will be refused there. Run the "
                f"notebook in the image instead (envpin kernelspec install --image {args.image}, then pick that "
                "kernel)."
            )
            if args.strict:
                raise EnvironmentMismatch(text)
            pin.notes.append("environment differs: see the warning above")
            print(f"envpin warning: {text}", file=sys.stderr, flush=True)
        elif diffs:
            pin.notes.append("minor differences: " + "; ".join(str(d) for d in diffs))
        notebook = os.environ.get(names.SESSION_NAME)
        if notebook:
            pin_file.record(os.path.dirname(notebook), notebook, _pin_record(pin))
        _pin_with_flags(pin, args)
        display(Status(pin, f"envpin: jobs pinned to {args.image}"))


def _pin_of_this_container(mode: str = "kernel in image") -> Pin:
    pin = pin_from_environment(mode)
    if pin is None:
        raise EnvpinError("This kernel runs in a container that does not say its image (ENVPIN_IMAGE is not set).")
    return pin


def _ray_adapter():
    from envpin.adapters.ray_adapter import RayAdapter

    try:
        adapter = stamping.registered("ray")
    except EnvpinError:
        adapter = RayAdapter()
        stamping.register(adapter)
    return adapter


def _pin_with_flags(pin: Pin, args) -> None:
    """Pin the session with ``%use_image``'s flags (they replace what the pin carried)."""
    pin.strict, pin.by_digest, pin.envelope = bool(args.strict), bool(args.by_digest), args.envelope
    stamping.pin_session(pin)


def _pin_record(pin: Pin) -> dict:
    return {"image": pin.name, "reference": pin.reference, "image_id": pin.image_id, "python": pin.python}
