"""The kernel's first output: which pin decided its image, and which pins did not apply.

A pin overrides the kernel the notebook asked for (its kernelspec's image),
so a kernel started because of one says so, with where the pin is and how
to change it, above its first cell's output.  The provisioner writes the
sentences into ``ENVPIN_PIN_NOTES`` (a JSON list); they are shown once, on
the first cell run, and taken out of the environment (jobs and subprocesses
do not inherit them).
"""

from __future__ import annotations

import json
import os
from typing import Any

from envpin import names, printable


def show_on_first_cell(shell: Any) -> None:
    raw = os.environ.pop(names.PIN_NOTES, None)
    if not raw:
        return
    try:
        notes = json.loads(raw)
    except ValueError:
        return
    if not isinstance(notes, list) or not notes:
        return
    text = "\n".join(f"envpin: {printable.one_line(note, 1000)}." for note in notes)

    def say(*_: Any) -> None:
        shell.events.unregister("pre_run_cell", say)
        print(text, flush=True)

    shell.events.register("pre_run_cell", say)
