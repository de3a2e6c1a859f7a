"""Errors of envpin's kernel side; the server side's errors derive from :class:`EnvpinError`.

Every message is one paragraph that names the thing and the fix: in a notebook
it is all the user sees (the magics print it instead of a traceback).

Where an error states its fix apart (``EnvpinError(problem, fix=...)``), its
text is still that one paragraph (problem, then fix) for terminals and logs,
and :func:`for_dialog` can put the fix first, in short lines: JupyterLab's
"Error Starting Kernel" dialog shows the message in a ``<pre>`` that keeps
line breaks and does not wrap, so a paragraph is one line cut at the
dialog's edge (seen: the fix of an option typo was never visible).
"""

from __future__ import annotations

import shlex
import textwrap


class EnvpinError(RuntimeError):
    """Base of every error envpin raises deliberately.

    Raised as itself for the refusals that need no class of their own (a bad
    argument, a request that cannot be done here); the more specific errors
    below derive from it, so ``except envpin.EnvpinError`` catches them all.
    ``fix``: what to do, when the message states it apart (it follows the
    problem in the paragraph, and leads in :func:`for_dialog`); ``detail``:
    what comes last in both (a container's last output).

    Fix: every message names what went wrong and ends with what to do; the
    messages below are all of them.
    """

    def __init__(self, message: str = "", *args: object, fix: str | None = None, detail: str = "") -> None:
        super().__init__((f"{message} {fix}" if fix else message) + detail, *args)
        self.problem = message
        self.fix = fix
        self.detail = detail


class PinFileError(EnvpinError):
    """The pin file beside a notebook cannot be read (envpin never overwrites it then).

    ``.envpin.json`` is damaged JSON, unreadable, or not a plain file (a link, a FIFO, a hard
    link: envpin never follows or opens those in a notebook folder).  The kernel does not start,
    so that the pins the file holds are not lost by a write over them.

    Fix: repair the file (it is JSON; the message names the line), make it readable, or
    delete it, or the notebook's entry in it, to start over in the kernelspec's image.
    """


class EnvironmentMismatch(EnvpinError):
    """This process's environment differs from the image's in a way that breaks pickles (``--strict``).

    ``%use_image IMAGE --strict`` in a kernel that does not run in IMAGE (a plain ipykernel on
    the host) compares this Python with the image's; a difference the measured matrix says
    breaks pickles (another Python minor, cloudpickle 3 pickles for a cloudpickle 2) is an error
    instead of a warning.

    Fix: run the notebook in the image (``envpin kernelspec install --image IMAGE`` and pick
    that kernel), or pin an image whose Python matches this one.
    """


class MissingDependency(EnvpinError):
    """An optional dependency a feature needs is not importable here.

    The host-side features (``envpin.fingerprint(image=...)``, ``ContainerExecutor`` in
    container mode, ``envpin.use_image()``) need the Docker SDK, which the kernel side does not
    import until then.

    Fix: ``pip install envpin`` (or ``pip install docker``) in the environment that runs the code; inside
    a Containerized Python kernel (no engine, by design) the message says what to do from there instead.
    """


class ClusterMismatch(EnvpinError):
    """A cluster (Ray, Dask) runs another Python, pickler or engine release than the pinned image: refused.

    Checked when the client connects (``ray.init``, ``distributed.Client``) and before submissions, from what
    the cluster reports about itself, instead of tasks that fail to load or kill their workers later.

    Fix: run the cluster in the pinned image (``envpin.DaskCluster()``, or name the image to the cluster
    manager), or pin the image the cluster runs; the message names both sides.
    """


#: Columns of a line in a dialog that keeps line breaks but does not wrap (JupyterLab's is about 130 wide).
DIALOG_WIDTH = 96


def dialog_text(exc: BaseException, width: int = DIALOG_WIDTH) -> str:
    """``exc``'s message for a dialog: its fix first, then the rest, in lines of at most ``width`` columns.

    Lines the message already has (a container's last output, each line
    starting with two spaces, ``|`` and a space, after "Its last output:") are kept as they are, below
    everything else; the rest is wrapped.
    """
    fix = getattr(exc, "fix", None)
    problem = getattr(exc, "problem", None)
    detail = getattr(exc, "detail", "")
    text = str(exc)
    if fix and problem is not None and text == f"{problem} {fix}{detail}":
        blocks = [fix, problem]
    elif detail and problem is not None and text == f"{problem}{detail}":
        blocks = [problem]
    else:
        blocks, detail = [text], ""
    out: list[str] = []
    for block in blocks:
        if out:
            out.append("")
        for line in block.split("\n"):
            if line.startswith("  | "):
                out.append(line)
                continue
            # A fix that ends with a command to run ("...: envpin kernelspec install ...", no full stop)
            # gets it on lines of its own, continued with " \\": copied from the dialog into a shell, a
            # wrapped command would run its first line alone.
            prose, sep, command = line.partition(": envpin ")
            if not sep or command.endswith("."):
                prose, command = line, ""
            else:
                prose, command = prose + ":", "envpin " + command
            out.extend(textwrap.wrap(prose, width, break_long_words=False, break_on_hyphens=False) or [""])
            if command:
                out.extend(_command_lines(command, width))
    out.extend(detail.strip().split("\n") if detail else ())  # "Its last output:", then the container's lines
    return "\n".join(out)


def _command_lines(command: str, width: int) -> list[str]:
    """``command`` in lines of at most ``width`` columns where it can, broken between shell words only.

    Each line but the last ends with `` \\`` (a shell continues it), and a quoted word
    (``'Typo kernel'``) is never split: a backslash-newline inside quotes is not a continuation.
    """
    try:
        words = shlex.split(command, posix=False)  # quotes kept: the words as they are written
    except ValueError:  # unbalanced quotes: one line, as it is
        return [command]
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) + 2 <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


def for_dialog(exc: BaseException) -> BaseException:
    """``exc`` itself, its message replaced by :func:`dialog_text` (type, traceback and cause kept)."""
    exc.args = (dialog_text(exc),)
    return exc
