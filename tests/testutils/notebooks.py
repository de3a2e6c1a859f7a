"""Running a notebook of notebooks/ headless, as a user's nbclient would: one way for every test that does."""

from __future__ import annotations

import shutil
from pathlib import Path

from testutils import ROOT


def run_copy(name: str, parent: Path, kernel_name: str, timeout: int = 240) -> str:
    """Copy notebooks/NAME into a new folder of ``parent`` and execute it there; its outputs as one text.

    The copy's folder is the kernel's working folder (what a reopened notebook gets); it is named after the
    notebook, without ``.ipynb``.  nbclient raises on the first cell that fails.
    """
    import nbformat
    from nbclient import NotebookClient

    work = parent / name.replace(".ipynb", "")
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / name, work)
    nb = nbformat.read(work / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, timeout=timeout, resources={"metadata": {"path": str(work)}}).execute()
    return "\n".join(
        o.get("text") or o.get("data", {}).get("text/plain", "") for c in nb.cells for o in c.get("outputs", [])
    )
