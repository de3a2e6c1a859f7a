"""envpin's server side: the ``envpin-docker`` kernel provisioner, kernelspecs and the CLI.

This package may import the kernel-side ``envpin`` package; the reverse never
happens, because ``envpin`` is mounted into containers that have none of the
server's dependencies (Docker SDK, jupyter_client).

``EnvpinProvisioner`` is imported on first use, so that the CLI's small
commands (``envpin gc``) need only the Docker SDK.
"""

import sys

import envpin
from envpin._version import __version__  # written in one place, on the kernel side
from envpin_provisioner.errors import EnvpinError

__all__ = ["EnvpinError", "EnvpinProvisioner", "__version__", "reset_caches"]

#: The server's modules that keep something for the life of the process, each with a ``reset()`` (see
#: ``envpin.STATEFUL_MODULES``; the warm pools, ``warm.pool.pools``, hold containers, not knowledge: they stay).
STATEFUL_MODULES = (
    "envpin_provisioner.engine",
    "envpin_provisioner.images.pulling",
    "envpin_provisioner.images.start_pulls",
    "envpin_provisioner.kernel.ownership",
    "envpin_provisioner.kernel.quota",
    "envpin_provisioner.pins.follow",
    "envpin_provisioner.remote.package_volume",
    "envpin_provisioner.remote.tls_kernel",
    "envpin_provisioner.warm.standbys",
)


def reset_caches() -> None:
    """Forget what this process learnt: the server's caches, then the kernel side's (``envpin.reset_caches``).

    For tests.  Run it while no kernel of this process runs: their engine clients are closed.
    """
    for name in STATEFUL_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            module.reset()
    envpin.reset_caches()


def __getattr__(name: str):
    if name == "EnvpinProvisioner":
        from envpin_provisioner.provisioner import EnvpinProvisioner

        return EnvpinProvisioner
    raise AttributeError(f"module 'envpin_provisioner' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """jupyter_server extension (enabled by ``jupyter_server_config.d/envpin.json``): pins follow their notebooks."""
    return [{"module": "envpin_provisioner.pins.follow"}]
