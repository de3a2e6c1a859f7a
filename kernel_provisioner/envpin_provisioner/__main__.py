"""``python -m envpin_provisioner ...`` is the ``envpin`` command (used by kernelspec argv)."""

import sys

from .cli import main

sys.exit(main())
