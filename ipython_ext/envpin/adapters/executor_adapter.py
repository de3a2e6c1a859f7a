"""envpin's own executor: ``envpin.submit`` follows the pin.

``envpin.submit`` keeps one shared ``ContainerExecutor`` per image; its
workers were started for the image pinned at the time.  A re-pin (or
``%unload_ext envpin``) retires them, so the next ``envpin.submit`` starts
workers in the new image rather than sending jobs to the old one.
"""

from __future__ import annotations

import importlib.util

from envpin.session.stamping import Stamp


class ExecutorAdapter:
    name = "envpin.submit"

    def available(self) -> bool:
        """Jobs are pickled with cloudpickle: without it there is nothing to run."""
        try:
            return importlib.util.find_spec("cloudpickle") is not None
        except (ImportError, ValueError):
            return False

    def activate(self, stamp: Stamp) -> None:
        from envpin.jobs.executor import shutdown_shared

        shutdown_shared()  # the next envpin.submit starts workers for the new pin

    def deactivate(self) -> None:
        from envpin.jobs.executor import shutdown_shared

        shutdown_shared()

    def describe(self) -> str:
        return self.name
