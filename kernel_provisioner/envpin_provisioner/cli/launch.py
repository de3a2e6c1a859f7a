"""``envpin launch``: run a containerized kernel in the foreground, for clients without provisioners.

VS Code and old Jupyter clients ignore ``metadata.kernel_provisioner`` and
simply run a kernelspec's ``argv`` as a local process, then talk to the ports
of the connection file they wrote.  This process stands in for the kernel: it
starts the same container the provisioner would (same image resolution, same
labels, the key only in a file), forwards SIGINT (interrupt) and SIGTERM
(shutdown) to it, exits with the kernel's exit code and removes the container
on the way out.  If it is killed with SIGKILL, ``envpin gc`` (run by every
provisioner's first start, too) removes the orphan because this process is
recorded as its owner.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import uuid

import docker.errors

from envpin import names, safe_files
from envpin.images import allowlist
from envpin_provisioner import engine
from envpin_provisioner.errors import ConfigError
from envpin_provisioner.images import pulling, selection
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import readiness
from envpin_provisioner.kernel.launch import KernelLaunch

log = logging.getLogger("envpin.launch")


def _check_private_ipc_folder(connection_file: str, info: dict) -> None:
    """With ipc, the connection file's folder is mounted into the container, writable: it must hold nothing else.

    A client's folder of its own (Jupyter's runtime folder, say) holds the connection files, and so the
    keys, of every other kernel of the user: mounted into a container, they would let the kernel's code
    reach those kernels, host ones included.  tcp (what clients use by default) mounts nothing.
    """
    folder = os.path.dirname(connection_file)
    if os.path.dirname(info["ip"]) != folder:
        raise ConfigError(
            "envpin launch with the ipc transport needs the sockets (ip) in the connection file's folder."
        )
    prefix = os.path.basename(info["ip"]) + "-"
    others = [n for n in os.listdir(folder) if n != os.path.basename(connection_file) and not n.startswith(prefix)]
    if others:
        raise ConfigError(
            f"envpin launch with the ipc transport mounts the connection file's folder ({folder}) into the kernel's "
            f"container, and that folder holds other files ({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}), "
            "such as other kernels' connection files and keys, which the kernel's code must not reach. Use the tcp "
            "transport (the default of Jupyter clients), or give this kernel a folder of its own."
        )


def run(
    connection_file: str,
    image: str | None = None,
    pull_policy: str = "if-missing",
    network_mode: str = "bridge",
    python: str = "python3",
    launch_timeout: float = 60.0,
) -> int:
    image = image or os.environ.get(names.IMAGE) or "ubuntu-22.04-py3"
    with open(connection_file) as fh:
        info = json.load(fh)
    connection_file = os.path.abspath(connection_file)
    if info.get("transport", "tcp") == "ipc":
        _check_private_ipc_folder(connection_file, info)
    # The name checked is the name used: one reading of the aliases, one parsed reference.
    reference = selection.checked_reference(image, allowlist.patterns_from_env(), "envpin launch")
    client = engine.shared().client
    resolved = pulling.resolve(client, reference, pull_policy, log)
    launch = KernelLaunch(
        image=resolved,
        kernel_id=info.get("kernel_name") or f"launch-{uuid.uuid4().hex[:12]}",
        connection_info=info,
        connection_file=connection_file,
        python=python,
        cwd=os.getcwd(),
        folder=safe_files.PinnedDir(os.getcwd()),  # mounted only if it is still this folder once the container runs
        env={k: v for k, v in os.environ.items() if k in (names.SESSION_NAME, "LANG", "TZ")},
        network_mode=network_mode,
    )
    container = kernel_container.start(client, launch, log)
    stopping = threading.Event()

    def forward(signum, _frame):
        if signum != signal.SIGINT:
            stopping.set()
        try:
            container.kill(signal=int(signum))
        except docker.errors.APIError:  # it has just stopped (404/409): nothing left to signal
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        readiness.wait_ready(container, launch, launch_timeout, log)
        while True:
            status, code = kernel_container.state(container)
            if code is not None:
                return code
            stopping.wait(0.5)
    finally:
        kernel_container.remove(container)


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return run(
        args.connection_file,
        image=args.image,
        pull_policy=args.pull_policy,
        network_mode=args.network,
        python=args.python,
        launch_timeout=args.launch_timeout,
    )
