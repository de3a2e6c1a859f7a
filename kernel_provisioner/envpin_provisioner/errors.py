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
    """The image reference is not a valid Docker reference."""


class ImageUnavailable(EnvpinError):
    """The image is not on the engine and cannot (or may not) be pulled."""


class KernelStartFailed(EnvpinError):
    """The container started but the kernel did not come up (no Python, no ipykernel, crash)."""


class ConfigError(EnvpinError):
    """An option is unknown or has the wrong type."""


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
