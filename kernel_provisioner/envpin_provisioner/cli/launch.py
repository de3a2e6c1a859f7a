"""``envpin launch``: run a containerized kernel in the foreground, for clients without provisioners.

VS Code and old Jupyter clients ignore ``metadata.kernel_provisioner`` and
simply run a kernelspec's ``argv`` as a local process, then talk to the ports
of the connection file they wrote.  This process stands in for the kernel: it
starts the container the provisioner would, built the same way from the same
options (``ProvisionerOptions``, the provisioner's ``kernel.launch.build``):
the notebook's pin (its pin file, read as the provisioner's image choice
reads it), the environment passed through (``env_passthrough``), the
``ENVPIN_*`` settings, the limits, the labels, the key only in a file.  It
forwards SIGINT (interrupt) and SIGTERM (shutdown) to it, exits with the
kernel's exit code and removes the container on the way out.  If it is killed
with SIGKILL, ``envpin gc`` (run by every provisioner's first start, too)
removes the orphan because this process is recorded as its owner.

The options' levels here: the flags and ``--config`` of the argv (what a
kernelspec holds), then ``ENVPIN_*``, then the defaults.  What differs from a
provisioner's start is what the client decides: the connection file and its
transport (no ``%use_image`` moves, no warm pool: nothing manages this kernel
but this process).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import uuid
from typing import Any

import docker.errors

from envpin import names
from envpin_provisioner import engine
from envpin_provisioner.errors import ConfigError
from envpin_provisioner.images import selection
from envpin_provisioner.kernel import container as kernel_container
from envpin_provisioner.kernel import folder, readiness
from envpin_provisioner.kernel import launch as kernel_launch
from envpin_provisioner.kernel.launch import KernelLaunch
from envpin_provisioner.options import ProvisionerOptions, check_options

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


def options_for(config: dict[str, Any], **flags: Any) -> ProvisionerOptions:
    """The provisioner's options for this launch: the flags (``None``: not given) over ``--config`` over the rest.

    The rest is what any ``ProvisionerOptions`` falls back to: ``ENVPIN_*``, then the defaults.
    """
    config = {**config, **{k: v for k, v in flags.items() if v is not None}}
    check_options(ProvisionerOptions, config, None, source="the argv of envpin launch (its flags and --config)")
    return ProvisionerOptions(**config)


def run(connection_file: str, options: ProvisionerOptions) -> int:
    """Start the kernel of ``connection_file`` as the provisioner would; return its exit code once it stops."""
    timeout = options.launch_timeout  # every option is read (and a bad ENVPIN_* refused) before any container
    with open(connection_file) as fh:
        info = json.load(fh)
    connection_file = os.path.abspath(connection_file)
    transport = info.get("transport", "tcp")
    if transport == "ipc":
        _check_private_ipc_folder(connection_file, info)
    kernel_launch.check_transport(transport, options.network_mode, options.image)
    env = dict(os.environ)
    notebook = env.get(names.SESSION_NAME) or None
    notebook_folder, pin_dir = folder.pin_folders(notebook, os.getcwd())
    try:
        shared = engine.shared()
        # The name checked is the name used: one reading of the aliases, one parsed reference; a pin wins.
        choice = selection.choose(
            shared.client,
            options.image,
            options.pull_policy,
            notebook,
            pin_dir,
            log,
            options.allowed_images,
            configured_by="envpin launch",
        )
        for note in choice.notes:
            log.warning("envpin: %s", note)
        launch = kernel_launch.build(
            options,
            choice,
            kernel_id=info.get("kernel_name") or f"launch-{uuid.uuid4().hex[:12]}",
            connection_info=info,
            connection_file=connection_file,
            folder=notebook_folder,  # mounted only if it is still this folder once the container runs
            env=env,
            engine_memory=shared.memory_total() if options.shm_size == "auto" else None,
        )
        return _run_kernel(shared.client, launch, timeout)
    finally:
        for pinned in {id(p): p for p in (notebook_folder, pin_dir)}.values():
            pinned.close()


def _run_kernel(client: Any, launch: KernelLaunch, timeout: float) -> int:
    """Start the container, forward signals to it until it exits, and remove it on the way out."""
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
        readiness.wait_ready(container, launch, timeout, log)
        while True:
            status, code = kernel_container.state(container)
            if code is not None:
                return code
            stopping.wait(0.5)
    finally:
        kernel_container.remove(container)


def main(args) -> int:
    from envpin_provisioner.cli.main import parse_config

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    options = options_for(
        parse_config(args.config),
        image=args.image,
        pull_policy=args.pull_policy,
        network_mode=args.network_mode,
        python=args.python,
        launch_timeout=args.launch_timeout,
    )
    return run(args.connection_file, options)
