"""What every library adapter shares: arm on ``%use_image``, install when the library is imported.

A subclass names the module that arms it (``module``) and implements
``install(module, stamp)`` / ``uninstall()``.  ``available`` looks for the
package without importing it, so pinning stays fast whatever is installed.
"""

from __future__ import annotations

import importlib.util

from envpin.adapters import _imports
from envpin.adapters._patching import Patches
from envpin.session.stamping import Stamp


class LibraryAdapter:
    name = ""
    module = ""  #: the import that installs the adapter ("yt.wrapper", "ray", "flytekit")

    def __init__(self) -> None:
        self.stamp: Stamp | None = None
        self.installed = False
        self.patches = Patches()

    # -- the hooks.Adapter protocol ---------------------------------------------------

    def available(self) -> bool:
        top = self.module.split(".", 1)[0]
        try:
            return importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            return False

    def activate(self, stamp: Stamp) -> None:
        self.stamp = stamp
        _imports.when_imported(self.module, self._on_import)

    def deactivate(self) -> None:
        _imports.cancel(self.module, self._on_import)
        if self.installed:
            self.uninstall()
            self.patches.restore()
            self.installed = False
        self.stamp = None

    def describe(self) -> str:
        """One line for the ``%use_image`` status table."""
        what = self.summary()
        return what if self.installed else f"{what} (on import {self.module})"

    # -- for subclasses ---------------------------------------------------------------

    def _on_import(self, module) -> None:
        if self.stamp is not None and not self.installed:
            self.install(module, self.stamp)
            self.installed = True

    def install(self, module, stamp: Stamp) -> None:
        raise NotImplementedError

    def uninstall(self) -> None:
        """Undo what ``install`` did besides the patches (which are restored for you)."""

    def summary(self) -> str:
        return self.name
