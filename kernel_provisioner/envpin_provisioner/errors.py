"""The errors a user can meet, each a single paragraph naming the thing and the fix.

Everything envpin raises on purpose derives from :class:`EnvpinError`.  Jupyter
shows the message of an exception raised while a kernel starts (the REST reply
of ``POST /api/kernels`` carries it), so the message is the whole user
interface of a failure: it names the image, says what happened in plain words,
and ends with what to do.  Library exceptions are chained (``raise ... from``)
for the server log, never shown instead.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from envpin.errors import EnvpinError, for_dialog  # the kernel side's base: one hierarchy for both sides
from envpin.host.docker_client import EngineUnavailable  # the one Docker layer's (both sides)

__all__ = [
    "EnvpinError",
    "EngineUnavailable",
    "InvalidImageReference",
    "ImageUnavailable",
    "KernelStartFailed",
    "ConfigError",
]


class InvalidImageReference(EnvpinError):
    """The image reference is not a valid Docker reference.

    Raised before anything is pulled or started: the reference (from the kernelspec, a pin,
    ``%use_image`` or ``ENVPIN_IMAGE``) is empty, has capitals in its name, or is refused by
    the engine.

    Fix: write the reference as ``NAME[:TAG]`` or ``NAME@sha256:DIGEST`` in lower case
    (``python:3.11-slim``, ``registry.example.com/team/image:1.2``) where the message says it
    came from.
    """


class ImageUnavailable(EnvpinError):
    """The image is not on the engine and cannot (or may not) be pulled.

    The pull failed (a wrong name, no login, no registry), ``pull_policy`` is ``never``, or the
    image is named only by a notebook's pin file, which never pulls an image on its own word.

    Fix: check the name, ``docker login`` to its registry, or ``docker pull`` / ``docker build``
    / ``docker load`` it on the engine yourself and start again.
    """


class KernelStartFailed(EnvpinError):
    """The container started but the kernel did not come up (no Python, no ipykernel, crash).

    The message says which, from the exit code and the container's last output lines (shown
    after it, each marked ``  | ``): no ``python3`` on the image's ``PATH``, Python without
    ipykernel, an ipykernel that fails to import, killed (out of memory), or no answer within
    ``launch_timeout``.

    Fix: ``pip install ipykernel`` (and cloudpickle, for jobs) in the image, set the ``python``
    option to the image's interpreter, raise ``mem_limit`` or ``launch_timeout``; ``envpin
    doctor`` checks every envpin kernelspec's image the same way.
    """


class ConfigError(EnvpinError):
    """An option is unknown or has the wrong type.

    A kernelspec's ``metadata.kernel_provisioner.config``, an ``envpin kernelspec install
    --config``, ``c.EnvpinProvisioner`` in a Jupyter config file, an ``ENVPIN_<OPTION>`` variable
    of the server, or a combination of options that cannot work (``transport='tcp'`` with
    ``network_mode='none'``), checked when it is written (install), by ``envpin doctor``, and when
    the kernel starts.  The message names each bad key or impossible value (``mem_limit='lots'``),
    and the closest known option for a misspelt one.

    Fix: what the message's fix says for where it was set: rename or remove the key in the
    kernelspec's kernel.json (``envpin kernelspec list`` shows where), correct the ``--config``
    of the install command, or the Jupyter config file.
    """


_Hook = TypeVar("_Hook", bound=Callable[..., Awaitable[Any]])


def shown_in_dialogs(hook: _Hook) -> _Hook:
    """A jupyter_client hook whose EnvpinError reaches Jupyter's "Error Starting Kernel" dialog fix first.

    What a kernel start raises is what JupyterLab shows, in a box that keeps
    line breaks and does not wrap: the message goes out in short lines, its
    fix on top (``envpin.errors.for_dialog``).  The CLI and the log of
    anything else keep the one-paragraph form.
    """

    @functools.wraps(hook)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await hook(*args, **kwargs)
        except EnvpinError as exc:
            raise for_dialog(exc) from exc.__cause__

    return wrapper  # type: ignore[return-value]
