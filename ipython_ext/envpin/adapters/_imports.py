"""Run a callback when a module is imported: adapters arm themselves without importing their library.

``%use_image`` must stay fast and must not import Ray (about 2 s) or flytekit
just because they are installed.  An adapter therefore asks to be called
when its library's module finishes importing; if the module is already in
``sys.modules`` the callback runs at once.  The finder below sits first on
``sys.meta_path``, answers only for the watched names, delegates the real
finding to the other finders, and wraps the loader's ``exec_module`` so the
callback runs right after the module body (before the ``import`` statement
returns to the user).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Callable

_callbacks: dict[str, list[Callable]] = {}
_lock = threading.RLock()


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders do the finding
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module, _original=original, _name=fullname):
            _original(module)
            _fire(_name, module)

        try:
            loader.exec_module = exec_module  # type: ignore[method-assign]  # per-spec loader instances, not classes
        except (AttributeError, TypeError):
            return spec
        return spec


_finder = _Finder()


def _fire(name: str, module) -> None:
    with _lock:
        callbacks = _callbacks.pop(name, [])
        if not _callbacks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    for callback in callbacks:
        callback(module)


def when_imported(name: str, callback: Callable) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False) is False:
        callback(module)
        return
    with _lock:
        _callbacks.setdefault(name, []).append(callback)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def cancel(name: str, callback: Callable) -> None:
    """Forget a callback that has not run yet."""
    with _lock:
        waiting = _callbacks.get(name, [])
        if callback in waiting:
            waiting.remove(callback)
        if not waiting:
            _callbacks.pop(name, None)
        if not _callbacks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


def reset() -> None:
    """Forget every waiting callback and leave ``sys.meta_path`` as it was (``envpin.reset_caches``)."""
    with _lock:
        _callbacks.clear()
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
