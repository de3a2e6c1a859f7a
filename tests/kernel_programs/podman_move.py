"""%use_image moving a kernel from 3.11 to 3.13 on rootless Podman, as the Podman user, headless with nbclient:
prints the last cell's output, [Python version, in a Podman container, uid]."""

import nbclient
import nbformat

nb = nbformat.v4.new_notebook(
    cells=[
        nbformat.v4.new_code_cell(c)
        for c in (
            "%load_ext envpin",
            "%use_image envpin-test/py313:latest",
            "import json, os, platform; print(json.dumps([platform.python_version(),"
            " os.path.exists('/run/.containerenv'), os.getuid()]))",
        )
    ]
)
nbclient.NotebookClient(nb, kernel_name="pm-py311", timeout=180, resources={"metadata": {"path": "."}}).execute()
print(nb.cells[2].outputs[0]["text"].strip())
