"""What ``envpin.adapters.ray_compat`` finds in the Ray first on ``sys.path`` (tests/test_ray_compat.py runs it in a
subprocess, with a cached older Ray first): one JSON line, the version and what is missing or unsupported."""

import json
import warnings

warnings.simplefilter("ignore")
import ray  # noqa: E402  (after the filter: an old Ray warns as it is imported)

from envpin.adapters import ray_compat  # noqa: E402

print(
    json.dumps({"version": ray.__version__, "missing": ray_compat.missing(), "unsupported": ray_compat.unsupported()})
)
