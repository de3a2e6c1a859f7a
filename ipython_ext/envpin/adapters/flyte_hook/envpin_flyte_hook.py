"""envpin's registration rules in a ``pyflyte`` (or any flytekit program) started from a pinned notebook.

This folder is put first on ``PYTHONPATH`` by the Flyte adapter while a session
is pinned, so child processes see its ``envpin_flyte_hook-1.dist-info``, whose
``flytekit.plugins`` entry point flytekit imports at ``import flytekit``
(``load_implicit_plugins``): importing this module installs
``envpin.adapters.flyte_registration.Registration`` with the pin the notebook
passed in ``ENVPIN_FLYTE_STAMP``.  It must never break flytekit: without that
variable it does nothing, and an envpin that cannot be imported is one line
on stderr.
"""

import os
import sys

if os.environ.get("ENVPIN_FLYTE_STAMP"):
    try:
        try:
            from envpin.adapters import flyte_registration
        except ImportError:  # a pyflyte of another environment: envpin is this folder's grandparent's parent
            sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            from envpin.adapters import flyte_registration
        flyte_registration.install_from_environment()
    except ImportError as exc:
        print(f"[envpin] the notebook's Flyte registration rules are not applied here: {exc}", file=sys.stderr)
