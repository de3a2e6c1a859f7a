"""Entry point of job workers (``python -m envpin.entry.job_worker SOCKET SLOT``).

Separate from ``envpin.jobs.worker`` because the package imports that module, and
running an already-imported module with ``-m`` makes runpy warn.
"""

import sys

from envpin.jobs.worker import main

main(sys.argv)
