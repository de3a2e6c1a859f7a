"""A hostile kernel's attempts at its warm container's hand-over folder (found in its mount table): ``_tamper()``
says, for a write into it and for replacing its FIFO, "done" or the OSError that stopped it."""

import os


def _tamper():
    out = {"handoff": None}
    for line in open("/proc/self/mountinfo"):
        if "/handoff-" in line.split()[4]:
            out["handoff"] = line.split()[4]
    for what, act in (
        ("write", lambda d: open(os.path.join(d, "x"), "w")),
        ("unlink", lambda d: os.unlink(os.path.join(d, "go"))),
    ):
        try:
            act(out["handoff"])
            out[what] = "done"
        except OSError as exc:
            out[what] = f"OSError {exc.errno}"
    return out
