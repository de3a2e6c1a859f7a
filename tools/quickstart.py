"""Run notebooks/quickstart.ipynb headless in the Containerized Python kernel and summarise it.

Called by ``scripts/quickstart`` after the engine and the demo image exist.
The executed copy is written to ``build/quickstart.ipynb``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    notebook = ROOT / "notebooks" / "quickstart.ipynb"
    # Run a copy in build/quickstart/: the pin file %use_image writes lands there, not in the repo.
    workdir = ROOT / "build" / "quickstart"
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "quickstart.ipynb"
    # Into this environment (.venv): in a virtual environment Jupyter looks there before the user's folder.
    subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "kernelspec", "install", "--sys-prefix"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"[envpin] installed the 'Containerized Python' kernelspec into {sys.prefix}", file=sys.stderr)
    nb = nbformat.read(notebook, as_version=4)
    started = time.monotonic()
    print(f"[envpin] executing {notebook.relative_to(ROOT)} in the Containerized Python kernel ...", file=sys.stderr)
    client = NotebookClient(
        nb, kernel_name="containerized-python", timeout=120, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    nbformat.write(nb, out)
    print(f"\nquickstart.ipynb ran in {time.monotonic() - started:.1f}s; executed copy: {out.relative_to(ROOT)}\n")
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                print(output["text"], end="")
            elif "text/plain" in output.get("data", {}):
                print(output["data"]["text/plain"])
    print()
    venv = Path(sys.prefix)
    lab = "" if (venv / "bin" / "jupyter-lab").exists() else f"  {venv}/bin/pip install jupyterlab\n"
    print(
        'Next: open the notebooks in JupyterLab and pick "Containerized Python" in the launcher:\n'
        f"{lab}  {venv}/bin/jupyter lab {ROOT / 'notebooks'}\n"
        "(%use_image IMAGE in a notebook moves its kernel into IMAGE; envpin doctor says what works.)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
