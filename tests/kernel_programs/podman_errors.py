"""Kernels that cannot start on rootless Podman (a missing image, an image without ipykernel), as the Podman
user: prints one JSON line with each error's text and how long it took."""

import json
import time

import jupyter_client

out = {}
for name, kernel in (("missing", None), ("no_ipykernel", "pm-noipy")):
    km = jupyter_client.KernelManager(kernel_name=kernel or "pm-py311")
    if kernel is None:
        km.kernel_spec.metadata["kernel_provisioner"]["config"]["image"] = "envpin-test/nope:latest"
    t = time.monotonic()
    try:
        km.start_kernel()
        out[name] = ["started?!", 0]
        km.shutdown_kernel(now=True)
    except Exception as exc:
        out[name] = [f"{type(exc).__name__}: {exc}", round(time.monotonic() - t, 1)]
print(json.dumps(out))
