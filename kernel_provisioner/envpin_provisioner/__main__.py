"""``python -m envpin_provisioner ...`` is the ``envpin`` command (used by kernelspec argv)."""

import sys

from envpin_provisioner.cli.main import main

sys.exit(main())
