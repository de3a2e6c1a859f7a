"""envpin, kernel side: what runs inside the notebook's kernel (``%load_ext envpin``).

This package is mounted read-only into kernel and job containers and put on
their ``PYTHONPATH`` by the envpin provisioner, so it must import with the
standard library alone (IPython is there wherever a kernel is; the Docker SDK
is imported lazily, only on hosts).  It never imports the server side
(``envpin_provisioner``).

Public API::

    %load_ext envpin            # registers %use_image
    %use_image IMAGE            # pin this session (and move the kernel) to IMAGE
    envpin.current_pin()        # what is pinned
    envpin.fingerprint(), envpin.fingerprint(image=...), envpin.compare(a, b)
    envpin.use_image(IMAGE)     # in a script: re-run it inside IMAGE
    envpin.submit(fn, *args)    # run fn in the pinned image (a concurrent.futures Future)
    envpin.ContainerExecutor()  # the executor behind it
    envpin.stamp(job)           # the pin, for job systems without an adapter
    envpin.reset_caches()       # forget what this process learnt and registered (tests)
    envpin.DaskCluster(n)       # a Dask cluster in the pinned image (imports distributed when first used)
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from envpin import names
from envpin._version import __version__ as __version__
from envpin.errors import EnvpinError

if TYPE_CHECKING:
    from envpin.adapters.dask_cluster import DaskCluster
    from envpin.compat.fingerprints import compare, fingerprint
    from envpin.host.respawn import use_image
    from envpin.jobs.executor import ContainerExecutor, submit
    from envpin.session.stamping import stamp
    from envpin.session.state import current_pin

#: The public names defined elsewhere, and where: imported on first use (``__getattr__``).  A process that
#: needs one part of envpin (a job worker, a kernel loading the extension, a warm kernel) imports envpin's
#: package first; importing all of these with it cost a job worker or a pinned kernel's start about
#: 100 ms before it could answer (``benchmarks/kernel_start.py --breakdown``).  ``DaskCluster``: ``import
#: envpin`` must not import distributed either.
_LAZY = {
    "compare": "envpin.compat.fingerprints",
    "fingerprint": "envpin.compat.fingerprints",
    "use_image": "envpin.host.respawn",
    "ContainerExecutor": "envpin.jobs.executor",
    "submit": "envpin.jobs.executor",
    "stamp": "envpin.session.stamping",
    "current_pin": "envpin.session.state",
    "DaskCluster": "envpin.adapters.dask_cluster",
}

__all__ = [
    "ContainerExecutor",
    "DaskCluster",
    "EnvpinError",
    "compare",
    "current_pin",
    "fingerprint",
    "in_container",
    "kernel_image",
    "reset_caches",
    "stamp",
    "submit",
    "use_image",
]


#: The modules that keep something for the life of the process (caches, registries, the session's pin), each
#: with a ``reset()``, in the order :func:`reset_caches` calls them: the adapters are deactivated before the
#: pin goes, and the engines' facts before their clients.  tests/unit/test_process_state.py fails when a
#: module keeps something that is not listed here or that its ``reset()`` leaves.
STATEFUL_MODULES = (
    "envpin.session.stamping",
    "envpin.session.state",
    "envpin.jobs.executor",
    "envpin.jobs.envelope",
    "envpin.jobs.listener",
    "envpin.jobs.shipping",
    "envpin.adapters._imports",
    "envpin.adapters.ray_adapter",
    "envpin.adapters.ray_compat",
    "envpin.adapters.dask_check",
    "envpin.adapters.code_in_image",
    "envpin.adapters.flyte_registration",
    "envpin.compat.policy",
    "envpin.internals",
    "envpin.host.dialect",
    "envpin.host.labels",
    "envpin.host.docker_client",
    "envpin.host.ssh_tunnel",
    "envpin.host.package_archive",
    "envpin.notebook.handoff",
)


def reset_caches() -> None:
    """Forget what this process learnt and registered: caches, the adapters, the session's pin, engine clients.

    For tests, which must not reach into modules' private state: after this
    the process behaves as if envpin had just been imported (files, such as
    the owner key and pin files, stay).  A module not imported yet has
    nothing to forget and is not imported for it.
    """
    for name in STATEFUL_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            module.reset()


def __getattr__(name: str):
    """A public name of :data:`_LAZY`, imported on first use (then kept as this module's attribute)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'envpin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The lazy names too: ``envpin.<TAB>`` offers ``ContainerExecutor`` before its first use."""
    return sorted({*globals(), *_LAZY})


def in_container() -> bool:
    """True inside a Docker (``/.dockerenv``) or Podman (``/run/.containerenv``) container."""
    return names.in_container()


def kernel_image() -> dict:
    """The image this process runs in, as the provisioner declared it.

    ``name``: as the user wrote it (maybe an alias); ``reference``: the image
    reference (``ENVPIN_IMAGE``); ``id``: what it resolved to when the kernel
    started (``ENVPIN_IMAGE_ID``).  All ``None`` outside an envpin container.
    """
    ref = os.environ.get(names.IMAGE)
    return {
        "name": os.environ.get(names.IMAGE_NAME) or ref,
        "reference": ref,
        "id": os.environ.get(names.IMAGE_ID),
    }


def load_ipython_extension(ipython) -> None:
    """``%load_ext envpin``: register ``%use_image``.

    A kernel the provisioner started for a pinned notebook (or moved into an
    image) loads this by itself and starts out pinned to its image.
    """
    from envpin import adapters
    from envpin.notebook import control, handoff, pin_notes, short_errors
    from envpin.notebook.magics import EnvpinMagics
    from envpin.session import stamping, state

    ipython.register_magics(EnvpinMagics)
    short_errors.install(ipython)
    for adapter in adapters.builtin():  # envpin.submit, YTsaurus, Ray, Flyte: armed by %use_image when usable
        if adapter.name not in stamping.adapter_names():
            stamping.register(adapter)
    pin = state.pin_from_environment() if os.environ.get(names.PINNED) == "1" else None
    if pin is not None and state.current_pin() is None:
        stamping.pin_session(pin)
    pin_notes.show_on_first_cell(ipython)
    folder = control.control_dir()
    if folder is not None:
        handoff.expect_handoff(ipython, folder)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext envpin``: remove the magic and the submission hooks, forget the pin."""
    from envpin.jobs import executor
    from envpin.notebook import short_errors
    from envpin.session import stamping

    ipython.magics_manager.magics["line"].pop("use_image", None)
    short_errors.uninstall(ipython)
    stamping.unpin_session()
    executor.shutdown_shared()
