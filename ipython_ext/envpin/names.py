"""Names both sides share: where envpin's own package is, and (below) the words the two sides agree on.

The kernel side runs inside images and the server side starts those images;
every string one side writes and the other reads (an environment variable, a
label, a mount point, a module run inside an image) is spelt here once, so a
rename is one edit and a grep for the constant finds every reader.
"""

from __future__ import annotations

import os

#: The ``envpin`` package's own folder (mounted read-only into containers).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: The folder that holds the ``envpin`` package: what a process needs on ``sys.path`` to import it.
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)
