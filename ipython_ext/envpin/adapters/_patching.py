"""Replace a library attribute with a wrapper and put the original back: the one way adapters patch.

Adapters prefer a library's own configuration (YTsaurus's
``user_job_spec_defaults``, ``FLYTE_INTERNAL_IMAGE``); where a library offers
none for a call path, they wrap the function that path goes through.  Every
such wrapper is installed with :class:`Patches`, which records the original
so ``deactivate`` restores the library exactly, and refuses to wrap a
wrapper (re-pinning does not stack layers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class Patches:
    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attribute: str, make_wrapper: Callable[[Callable], Callable]) -> None:
        """Set ``owner.attribute = make_wrapper(original)``."""
        original = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
        function = original.__func__ if isinstance(original, (staticmethod, classmethod)) else original
        if getattr(function, "__envpin_original__", None) is not None:
            return  # already ours
        wrapper: Any = make_wrapper(function)
        functools.update_wrapper(wrapper, function)
        wrapper.__envpin_original__ = function
        if isinstance(original, staticmethod):
            wrapper = staticmethod(wrapper)
        elif isinstance(original, classmethod):
            wrapper = classmethod(wrapper)
        setattr(owner, attribute, wrapper)
        self._originals.append((owner, attribute, original))

    def restore(self) -> None:
        for owner, attribute, original in reversed(self._originals):
            setattr(owner, attribute, original)
        self._originals.clear()
