"""The words both sides agree on, each spelt once: environment variables, labels, mount points, entry modules.

The kernel side runs inside images and the server side starts those images;
every string one side writes and the other reads is defined here, so a rename
is one edit and a search for the constant finds every reader and writer.
Server-only settings (``ENVPIN_POOL_SIZE`` and the other provisioner options)
live with their traitlets in ``envpin_provisioner.options``; the session
options' variables are here and their meaning in ``envpin.session.options``.
"""

from __future__ import annotations

import os

# --- where envpin itself is ---------------------------------------------------------------------------
#: The ``envpin`` package's own folder (mounted read-only into containers).
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: The folder that holds the ``envpin`` package: what a process needs on ``sys.path`` to import it.
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)

# --- environment of a kernel or a job -----------------------------------------------------------------
#: The image reference this process runs in, and the one its jobs are stamped with.
IMAGE = "ENVPIN_IMAGE"
#: The name the user wrote for it (maybe an alias).
IMAGE_NAME = "ENVPIN_IMAGE_NAME"
#: The immutable id (or registry digest) the reference resolved to when the kernel started.
IMAGE_ID = "ENVPIN_IMAGE_ID"
#: The id the reference resolves to now, when newer than the kernel's (a moved tag).
IMAGE_LATEST_ID = "ENVPIN_IMAGE_LATEST_ID"
#: Set in an image (``ENV ENVPIN_CODE_IN_IMAGE=/app``): where it keeps the project's code.
CODE_IN_IMAGE = "ENVPIN_CODE_IN_IMAGE"
#: The pin a ``pyflyte`` started from a pinned notebook registers with (JSON; ``adapters.flyte_registration``).
FLYTE_STAMP = "ENVPIN_FLYTE_STAMP"
#: The folder of the flytekit plugin that applies it there, first on child processes' ``PYTHONPATH`` while pinned.
FLYTE_HOOK_DIR = os.path.join(PACKAGE_DIR, "adapters", "flyte_hook")
#: "1" when a pin (or a move) decided the image: the kernel starts out pinned.
PINNED = "ENVPIN_PINNED"
#: What the kernel's first output says about pins (JSON list of sentences): which pin decided, which did not apply.
PIN_NOTES = "ENVPIN_PIN_NOTES"
#: The kernel's control folder (inside its container), where ``%use_image`` asks the server to move it.
CONTROL_DIR = "ENVPIN_CONTROL_DIR"
#: The engine of another machine the kernel runs on (``ssh://USER@HOST``, ``tcp://HOST:2376``), set by the
#: server.  Its control folder is then :data:`CONTAINER_CONTROL_DIR`, relayed by the server (``remote.control_relay``);
#: a kernel there without one (an older server's) says how to get another image instead of moving.
REMOTE_ENGINE = "ENVPIN_REMOTE_ENGINE"
#: Set for a successor kernel that must take over a running ``%use_image`` cell.
HANDOFF_EXPECTED = "ENVPIN_HANDOFF_EXPECTED"
#: Set by ``envpin.use_image()`` in the process it re-runs in the image (no second re-run).
RESPAWNED = "ENVPIN_RESPAWNED"
#: The one-time token a job worker presents to its executor.
WORKER_TOKEN = "ENVPIN_WORKER_TOKEN"
#: The image aliases file (default ``~/.config/envpin/aliases.json``).
ALIASES = "ENVPIN_ALIASES"
#: Patterns of the images envpin may run (comma-separated): the ``allowed_images`` rule for processes
#: without a server (``envpin run``, scripts, executors), and the server's default for the option.
ALLOWED_IMAGES = "ENVPIN_ALLOWED_IMAGES"
#: The Ray dashboard address the Ray adapter submits jobs to.
RAY_DASHBOARD = "ENVPIN_RAY_DASHBOARD"
#: The container engine a batch queue's nodes run Dask workers with (dask-jobqueue): podman, apptainer, docker.
DASK_NODE_ENGINE = "ENVPIN_DASK_NODE_ENGINE"
#: YTsaurus's own variable for a job's image (set beside ``IMAGE`` in every stamp).
YT_JOB_DOCKER_IMAGE = "YT_JOB_DOCKER_IMAGE"
#: jupyter_server's notebook path for the kernel (relative to its root).
SESSION_NAME = "JPY_SESSION_NAME"

# session options (``%use_image --strict`` ...): their meaning, choices and parsing are envpin.session.options
STRICT = "ENVPIN_STRICT"
BY_DIGEST = "ENVPIN_BY_DIGEST"
RAY_MODE = "ENVPIN_RAY_MODE"
ENVELOPE = "ENVPIN_ENVELOPE"

# --- labels on every container envpin starts (their values and the proof: envpin.host.labels) ------------
LABEL_PREFIX = "envpin."
LABEL_ROLE = "envpin.role"
LABEL_KERNEL_ID = "envpin.kernel-id"
LABEL_OWNER_HOST = "envpin.owner-host"
LABEL_OWNER_BOOT = "envpin.owner-boot"
LABEL_OWNER_PID = "envpin.owner-pid"
LABEL_OWNER_START = "envpin.owner-start"
LABEL_OWNER_UID = "envpin.owner-uid"
LABEL_IMAGE = "envpin.image"
LABEL_NONCE = "envpin.nonce"
LABEL_PROOF = "envpin.proof"
#: The ``envpin.DaskCluster`` a scheduler or worker container belongs to (its name).
LABEL_DASK_CLUSTER = "envpin.dask-cluster"

# --- places inside a container -------------------------------------------------------------------------
#: Where envpin's package is mounted (read-only): ``CONTAINER_PYTHONPATH/envpin``.
CONTAINER_PYTHONPATH = "/opt/envpin/python"
#: HOME of a kernel whose user has none in the image.
CONTAINER_HOME = "/tmp/envpin-home"
#: Where a worker container finds its executor's socket folder.
CONTAINER_JOB_SOCKETS = "/run/envpin-jobs"
#: The connection file of a kernel on the tcp transport (copied in, not mounted).
CONTAINER_TCP_CONNECTION_FILE = "/tmp/envpin-kernel.json"
#: A kernel on another machine's engine: its control folder, in its container's own layer (0700, the kernel's user).
CONTAINER_CONTROL_DIR = "/tmp/envpin-control"
#: The TLS certificate and key of an ``envpin.DaskCluster``'s container (copied in before it starts, not mounted).
CONTAINER_DASK_TLS = "/tmp/envpin-dask-tls"
#: Files whose presence says "this process runs in a container" (Docker's, Podman's).
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")

# --- modules run inside images (always through envpin.entry.boot) ----------------------------------------
ENTRY_PID1 = "envpin.entry.pid1"
ENTRY_WARM_KERNEL = "envpin.entry.warm_kernel"
ENTRY_JOB_WORKER = "envpin.entry.job_worker"
#: The FIFO in a warm kernel's hand-over folder that the waiting process reads.
WARM_KERNEL_FIFO = "go"


def in_container() -> bool:
    """Whether this process runs in a container (of any engine): the one answer, used by every caller."""
    return any(os.path.exists(marker) for marker in CONTAINER_MARKERS)
