"""envpin's server side: the ``envpin-docker`` kernel provisioner, kernelspecs and the CLI.

This package may import the kernel-side ``envpin`` package; the reverse never
happens, because ``envpin`` is mounted into containers that have none of the
server's dependencies (Docker SDK, jupyter_client).
"""

from .errors import EnvpinError
from .provisioner import EnvpinProvisioner

__all__ = ["EnvpinProvisioner", "EnvpinError"]
__version__ = "0.1.0"
