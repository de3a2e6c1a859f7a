"""A tiny init for containers on engines that have none to give (Podman without catatonit).

``python -m envpin.entry.pid1 PROGRAM ARGS...`` runs PROGRAM as its child and
does what docker-init (tini) does for envpin's containers:

* signals sent to the container (the provisioner's SIGINT to interrupt a
  kernel, SIGTERM to stop it) reach the program: PID 1 ignores every signal
  it has no handler for, so without an init a stop waits for its timeout;
* orphaned grandchildren (a notebook's ``!cmd &``) are reaped, not left as
  zombies;
* the container exits with the program's status (128 + N for signal N).

Standard library only: it runs from envpin's read-only mount in any image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

#: Signals passed on to the program; SIGKILL and SIGSTOP cannot be caught, SIGCHLD is ours.
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m envpin.entry.pid1 PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    # Default dispositions in the child (subprocess restores them), the program's own handlers apply there.
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # it has just exited: its status is collected below

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.wait()  # any child: the program, or an orphan re-parented to us
        except ChildProcessError:
            return 0
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
