"""The submission-hook registry: how job systems get stamped with the session's pin.

An *adapter* teaches one job system (envpin's own executor, YTsaurus, Ray,
Flyte, ...) to carry the pinned image.  ``%use_image`` activates every
registered adapter whose library is importable; ``%unload_ext envpin``
deactivates them.  An adapter is any object with::

    name: str
    def available(self) -> bool: ...          # is its library importable here?
    def activate(self, stamp: Stamp) -> None: ...
    def deactivate(self) -> None: ...

For systems without an adapter, ``envpin.stamp(job)`` returns (or fills in)
what to put on a job: the image, its id, the fingerprint and the environment
variables ``ENVPIN_IMAGE``, ``ENVPIN_IMAGE_ID`` and ``YT_JOB_DOCKER_IMAGE``.
A job that already names another image keeps it, with an
``ImageConflictWarning`` naming both (an error in strict mode).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

from envpin import names
from envpin.errors import EnvpinError
from envpin.session import aliases, state


class ImageConflictWarning(UserWarning):
    """A job names an image other than the session's pin."""


class ImageConflict(EnvpinError):
    """Strict mode: a job names an image other than the session's pin.

    After ``%use_image IMAGE --strict``, a job that names its own image (``container_image``,
    ``image_uri``, ``docker_image``) is refused before submission instead of warned about
    (``ImageConflictWarning``).

    Fix: remove the job's own image so it gets the pin, pin the session to that image, or pin
    without ``--strict`` to keep the job's image with a warning.
    """


@dataclass(frozen=True)
class Stamp:
    image: str  #: the reference jobs run in (aliases expanded: clusters cannot resolve them)
    image_id: str | None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    #: where the image keeps the project's code, if it says so (``ENV ENVPIN_CODE_IN_IMAGE=/app``)
    code_in_image: str | None = None
    #: jobs name the image by its registry digest (``repo@sha256:...``), not by a tag that may move
    by_digest: bool = False
    #: pickle-compatibility strictness chosen with ``%use_image --envelope`` (None: $ENVPIN_ENVELOPE)
    envelope: str | None = None

    @property
    def job_image(self) -> str:
        """The image reference written into jobs: the pinned reference, or its digest with ``--by-digest``."""
        if self.by_digest and self.image_id and "@sha256:" in self.image_id:
            return self.image_id
        return self.image

    @property
    def env(self) -> dict[str, str]:
        env = {names.IMAGE: self.image, names.YT_JOB_DOCKER_IMAGE: self.image}
        if self.image_id:
            env[names.IMAGE_ID] = self.image_id
        return env

    def check_explicit(self, named: str | None, what: str = "This job") -> bool:
        """True when ``named`` (a job's own image) differs from the pin; warns, or raises when strict."""
        if not named or named in (self.image, self.image_id):
            return False
        text = (
            f"{what} names image '{named}' but this session is pinned to '{self.image}' ({self.image_id}); "
            f"it keeps '{named}'. Pickles made here may not load there."
        )
        if self.strict:
            raise ImageConflict(text + " Remove the job's own image, or pin the session to it.")
        warnings.warn(text, ImageConflictWarning, stacklevel=_caller_stacklevel())
        return True


def _library_dirs() -> tuple[str, ...]:
    import os
    import sysconfig

    dirs = {names.PACKAGE_DIR}
    for key in ("purelib", "platlib", "stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.abspath(path))
    return tuple(d + os.sep for d in dirs)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's own line, not at envpin or the engine's library.

    An adapter warns from deep inside ``ray``, ``yt.wrapper`` or ``flytekit``
    code; the line the user needs to see is the cell that declared or
    submitted the job: the first frame outside envpin, site-packages and the
    standard library.
    """
    import os
    import sys
    import types

    skip = _library_dirs()
    frame: types.FrameType | None = sys._getframe(2)  # 1 would be check_explicit itself
    level = 2
    while frame is not None:
        if not os.path.abspath(frame.f_code.co_filename).startswith(skip):
            return level
        frame, level = frame.f_back, level + 1
    return 3


def require_digest(name: str, image_id: str | None) -> None:
    """``--by-digest`` needs a registry digest: an image only built or loaded locally has none."""
    if not image_id or "@sha256:" not in image_id:
        raise EnvpinError(
            f"'{name}' has no registry digest ({image_id or 'unknown id'}): it was built or loaded on this engine "
            "and never pulled from or pushed to a registry, so a cluster could not pull it by digest. Push it to "
            "a registry the cluster can reach and pin that reference, or pin without --by-digest."
        )


class Adapter(Protocol):
    name: str

    def available(self) -> bool: ...

    # optional: def describe(self) -> str  (one line for the status table)

    def activate(self, stamp: Stamp) -> None: ...

    def deactivate(self) -> None: ...


_registry: dict[str, Adapter] = {}
_active: dict[str, Adapter] = {}


def register(adapter: Adapter) -> None:
    """Add ``adapter``; activated at once if the session is already pinned."""
    _registry[adapter.name] = adapter
    current = current_stamp()
    if current is not None and adapter.available():
        adapter.activate(current)
        _active[adapter.name] = adapter


def unregister(name: str) -> None:
    adapter = _active.pop(name, None)
    if adapter is not None:
        adapter.deactivate()
    _registry.pop(name, None)


def reset() -> None:
    """Deactivate and forget every adapter (``envpin.reset_caches``); ``%load_ext envpin`` registers them again."""
    deactivate_all()
    _registry.clear()


def adapter_names() -> list[str]:
    """Every registered adapter's name."""
    return sorted(_registry)


def active() -> list[str]:
    return sorted(_active)


def registered(name: str) -> Adapter:
    """The adapter registered as ``name`` (to set its options, e.g. the Ray adapter's ``mode``)."""
    try:
        return _registry[name]
    except KeyError:
        raise EnvpinError(
            f"No envpin adapter is called '{name}'; registered: {', '.join(sorted(_registry)) or 'none'} "
            "(%load_ext envpin registers the built-in ones)."
        ) from None


def describe() -> list[str]:
    """A line per active adapter: what it stamps (and whether it waits for its library's import)."""
    return [getattr(a, "describe", lambda a=a: a.name)() for _, a in sorted(_active.items())]


def activate_all(stamp: Stamp) -> list[str]:
    """Activate every available adapter with ``stamp``; return their names."""
    deactivate_all()
    for name, adapter in _registry.items():
        if adapter.available():
            adapter.activate(stamp)
            _active[name] = adapter
    return active()


def deactivate_all() -> None:
    for adapter in list(_active.values()):
        adapter.deactivate()
    _active.clear()


def pin_session(pin: state.Pin) -> list[str]:
    """Pin the session to ``pin`` and (re)activate every adapter with its stamp; return their names.

    The one way a pin takes effect (``%use_image``, a kernel started pinned),
    so the state and the adapters never disagree.  ``pin.by_digest`` without a
    registry digest is refused before anything changes.
    """
    if pin.by_digest:
        require_digest(pin.name, pin.image_id)
    state._set_pin(pin)
    return activate_all(_stamp_for(pin))


def unpin_session() -> None:
    """Forget the pin and deactivate every adapter (``%unload_ext envpin``)."""
    deactivate_all()
    state._set_pin(None)


def current_stamp(strict: bool = False) -> Stamp | None:
    """The stamp for the session's pin (None before ``%use_image``)."""
    pin = state.current_pin()
    return None if pin is None else _stamp_for(pin, strict)


def _stamp_for(pin: state.Pin, strict: bool = False) -> Stamp:
    fp = {"python": pin.python, "cloudpickle": pin.cloudpickle}
    return Stamp(
        image=pin.reference or aliases.expand(pin.name),
        image_id=pin.image_id,
        fingerprint=fp,
        strict=strict or pin.strict,
        code_in_image=pin.code_in_image,
        by_digest=pin.by_digest,
        envelope=pin.envelope,
    )


def stamp(
    job: dict[str, Any] | None = None, *, image_key: str = "image", env_key: str = "env", strict: bool = False
) -> dict[str, Any]:
    """What to put on a job for a system without an adapter.

    Without ``job``: ``{"image", "image_id", "fingerprint", "env"}``.  With a
    job description (a dict), fills in ``job[image_key]`` (kept, with a
    warning, if it names another image) and merges ``job[env_key]`` (the job's
    own values win), and returns the job.
    """
    s = current_stamp(strict)
    if s is None:
        raise EnvpinError("Nothing to stamp: pin the session first with %use_image IMAGE.")
    if job is None:
        return {"image": s.job_image, "image_id": s.image_id, "fingerprint": dict(s.fingerprint), "env": s.env}
    if job.get(image_key) in (s.image, s.job_image) or not s.check_explicit(job.get(image_key)):
        job[image_key] = s.job_image
    job[env_key] = {**s.env, **(job.get(env_key) or {})}
    return job
