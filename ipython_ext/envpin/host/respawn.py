"""``envpin.use_image(IMAGE)`` for scripts, and ``envpin run --image IMAGE -- CMD``.

The script form of ``%use_image`` (YTsaurus calls it ``respawn_in_docker``):
at the top of a plain Python script, ``envpin.use_image("IMAGE")`` re-executes
the same command line inside a container of IMAGE, with the current folder
mounted at the same path, stdin/stdout/stderr wired through and the child's
exit code passed on, then exits.  In the child ``ENVPIN_RESPAWNED=1``, so the
same line returns at once there; it also returns at once when the process
already runs in a container of IMAGE.
"""

from __future__ import annotations

import os
import sys

from envpin import names
from envpin.session import state


def already_in(image: str) -> bool:
    """True in a respawned child, or inside a container of ``image``."""
    if os.environ.get(names.RESPAWNED) == "1":
        return True
    return names.in_container() and state.runs_in_image(image)


def run(image: str, argv: list[str], cwd: str | None = None) -> int:
    """Run ``argv`` in a container of ``image`` wired to this terminal; return its exit code."""
    from envpin.host import images

    client = images.client()
    resolved = images.resolve(client, image, source="envpin run / envpin.use_image()")
    env = {names.RESPAWNED: "1", names.IMAGE_NAME: image}
    try:
        return images.run_attached(client, resolved, argv, cwd or os.getcwd(), env)
    finally:
        client.close()


def use_image(image: str) -> None:
    """Re-run this script inside a container of ``image`` (returns at once when already there)."""
    if already_in(image):
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv[0] = "python3"  # the image's interpreter, not this host's path
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    cwd = os.getcwd()
    if script and not script.startswith(cwd + os.sep):
        from envpin.errors import EnvpinError

        raise EnvpinError(
            f"envpin.use_image('{image}') mounts only the current folder ({cwd}) into the container, and "
            f"the script {script} is outside it. Run the script from its own folder or a parent of it."
        )
    sys.stdout.flush()
    sys.stderr.flush()
    code = run(image, argv, cwd)
    sys.stdout.flush()
    os._exit(code)  # the child did the work; do not run the rest of this script on the host
