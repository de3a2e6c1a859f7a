"""The session's pin: which image this kernel's jobs are stamped with.

One kernel is one process, so the pin is process state (a job submitted from
a job inherits it through ``ENVPIN_IMAGE``/``ENVPIN_IMAGE_ID`` instead).
This module holds the state and the facts about this process's own image;
``display`` shows it, ``hooks`` turns it into stamps.  It imports neither, so
imports run one way: ``display`` -> ``hooks`` -> ``session``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

from envpin import names


def _cloudpickle_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cloudpickle")
    except PackageNotFoundError:
        return None


@dataclass
class Pin:
    name: str  #: as the user wrote it (maybe an alias)
    reference: str  #: the image reference it stands for
    image_id: str | None  #: digest or id it resolved to
    python: str | None  #: the image's Python version
    cloudpickle: str | None  #: the image's cloudpickle version
    #: how jobs relate to this kernel: "kernel in image" (the kernel runs in it),
    #: "host" (the kernel does not; differences were checked), "container" (a container not ours)
    mode: str
    notes: list[str] = field(default_factory=list)
    strict: bool = False  #: jobs naming another image are refused instead of warned about
    code_in_image: str | None = None  #: the image's ``ENVPIN_CODE_IN_IMAGE`` (where it keeps the project's code)
    by_digest: bool = False  #: jobs name the image by its registry digest (%use_image --by-digest)
    #: pickle-compatibility strictness for jobs (%use_image --envelope; envpin.compat.policy); None: $ENVPIN_ENVELOPE
    envelope: str | None = None


_current: Pin | None = None


def current_pin() -> Pin | None:
    """The image this session's jobs are pinned to, or None before ``%use_image``."""
    return _current


def _set_pin(pin: Pin | None) -> None:
    """Replace the state only: ``envpin.session.stamping.pin_session`` is the one way a pin takes effect (adapters too)."""
    global _current
    _current = pin


def reset() -> None:
    """Forget the pin (``envpin.reset_caches``, after the adapters are deactivated)."""
    _set_pin(None)


def pin_from_environment(mode: str = "kernel in image") -> Pin | None:
    """The pin of a kernel the provisioner started in the image (None outside one)."""
    reference = os.environ.get(names.IMAGE)
    if not reference:
        return None
    from envpin.session.options import SessionOptions

    carried = SessionOptions.from_environ(os.environ)
    return Pin(
        name=os.environ.get(names.IMAGE_NAME) or reference,
        reference=reference,
        image_id=os.environ.get(names.IMAGE_ID),
        python=platform.python_version(),
        cloudpickle=_cloudpickle_version(),
        mode=mode,
        code_in_image=os.environ.get(names.CODE_IN_IMAGE) or None,
        # %use_image --strict / --by-digest, carried across a move or restart
        strict=carried.strict,
        by_digest=carried.by_digest,
    )


def kernel_image_names() -> set[str]:
    """Every name the provisioner gave this process's image (reference, name as written, id); empty outside one."""
    given = {os.environ.get(names.IMAGE), os.environ.get(names.IMAGE_NAME), os.environ.get(names.IMAGE_ID)}
    return {n for n in given if n}


def runs_in_image(*names: str | None) -> bool:
    """Whether this process runs in the image called any of ``names`` (aliases expanded).

    The one answer to "is the kernel already in the image?": it decides
    whether jobs run as processes of this container or as containers of
    their own, and what the status table says.
    """
    from envpin.session import aliases

    wanted = {n for n in names if n} | {aliases.expand(n) for n in names if n}
    return bool(kernel_image_names() & wanted)
