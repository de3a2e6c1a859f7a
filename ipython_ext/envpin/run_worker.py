"""Entry point of job workers (``python -m envpin.run_worker SOCKET SLOT``).

Separate from ``envpin.worker`` because the package imports that module, and
running an already-imported module with ``-m`` makes runpy warn.
"""

import sys

from envpin.worker import main

main(sys.argv)
