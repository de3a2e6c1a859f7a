"""JupyterLab in a real browser: the launcher, the Containerized Python kernel, %use_image moving it.

JupyterLab (from PyPI) runs on 127.0.0.1; Playwright drives Debian's Chromium
(/usr/bin/chromium, headless: Playwright cannot download browsers here; the
harness installs the package when it is missing and this is root).  A
screenshot is kept in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os

from testutils import PY311, PY313
from testutils.browser import ENVPIN_KERNEL_LABEL, launch, shoot
from testutils.browser import open_notebook as _open_notebook
from testutils.browser import run_cell as _run_cell


def test_use_image_moves_a_kernel_in_jupyterlab(chromium, lab, install_kernelspec, docker_client):
    from playwright.sync_api import sync_playwright

    install_kernelspec(PY313, display_name="Py313 kernel")
    url, root, _ = lab
    with sync_playwright() as p:
        browser, page = _open_notebook(p, chromium, url, "Py313 kernel")
        first = _run_cell(page, "import sys; print('before', sys.version_info[:2])", "before", 0)
        assert "before (3, 13)" in first
        moved = _run_cell(page, f"%load_ext envpin\n%use_image {PY311}", "now runs in", 1)
        assert f"moving this kernel into {PY311}" in moved
        after = _run_cell(
            page, "import sys, os; print('after', sys.version_info[:2], os.environ['ENVPIN_IMAGE'])", "after", 2
        )
        assert f"after (3, 11) {PY311}" in after
        # The person re-runs the %use_image cell: now it only confirms the pin, as a table.
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        table = page.locator(".jp-Notebook .jp-Cell").nth(1).locator("table.envpin-status")
        table.wait_for(timeout=60_000)
        text = table.inner_text()
        assert PY311 in text and docker_client.images.get(PY311).id in text and "3.11." in text
        shoot(page, "jupyterlab-use-image")
        browser.close()
    pins = (root / ".envpin.json").read_text()
    assert '"Untitled.ipynb"' in pins and PY311 in pins  # keyed by the notebook JupyterLab opened


def test_ray_in_the_image_and_a_short_error_in_jupyterlab(chromium, lab, install_kernelspec, docker_client):
    """A Ray user's notebook in JupyterLab: the kernel runs in an image with Ray, a local cluster runs a task
    there, and a runtime_env envpin refuses shows as one short paragraph; %tb shows the traceback."""
    from playwright.sync_api import sync_playwright

    install_kernelspec("envpin-test/ray", display_name="Ray image")
    url, _, _ = lab
    with sync_playwright() as p:
        browser, page = _open_notebook(p, chromium, url, "Ray image")
        status = _run_cell(page, "%load_ext envpin\n%use_image envpin-test/ray", "jobs pinned to", 0)
        assert "ray: runtime_env image_uri + env_vars (on import ray)" in status
        ran = _run_cell(
            page,
            "import ray\nray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
            "@ray.remote\ndef where():\n    import os\n    return os.environ['ENVPIN_IMAGE']\n"
            "print('task ran in', ray.get(where.remote()))",
            "task ran in",
            1,
            timeout=180_000,
        )
        assert "task ran in envpin-test/ray" in ran and "stamping env_vars only" in ran
        refused = _run_cell(
            page,
            "ray.shutdown()\n@ray.remote(runtime_env={'pip': ['requests']})\ndef needs():\n    return 1\n"
            "needs.remote()",
            "RuntimeEnvConflict",
            2,
        )
        assert "%tb shows the full traceback" in refused and "Traceback" not in refused
        shoot(page, "jupyterlab-ray-short-error")
        full = _run_cell(page, "%tb", "Traceback", 3)
        assert "ray_adapter.py" in full
        browser.close()


WHERE = "import sys, os; print('where', sys.version_info[:2], os.environ['ENVPIN_IMAGE'])"


def _accept(page) -> None:
    """Press the dialog's main button and wait until the dialog is gone (its backdrop blocks every click)."""
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.locator(".jp-Dialog").wait_for(state="detached")


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _pins(root) -> dict:
    import json

    path = root / ".envpin.json"
    return json.loads(path.read_text())["notebooks"] if path.exists() else {}


def test_a_pin_follows_its_notebooks_rename_in_jupyterlab(chromium, lab, install_kernelspec, docker_client):
    """Issue 30's first report, in the browser: pin a new notebook, name it at its first save, restart (the pin
    holds), open a new notebook (it gets the freed name Untitled.ipynb and its own kernelspec's image); then a
    rename behind Jupyter's back leaves a stale entry that does not pin the next notebook taking that name."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from testutils import wait_for

    install_kernelspec(PY313, display_name="Py313 kernel")
    url, root, _ = lab
    with sync_playwright() as p:
        browser, page = _open_notebook(p, chromium, url, "Py313 kernel")
        _run_cell(page, f"%load_ext envpin\n%use_image {PY311}", "now runs in", 0)
        assert set(_pins(root)) == {"Untitled.ipynb"}
        # The first save asks for a name: JupyterLab renames the file (contents API) and its session.
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        page.locator(".jp-Dialog input[type=text]").fill("analysis.ipynb")
        _accept(page)
        wait_for(lambda: set(_pins(root)) == {"analysis.ipynb"}, 20, "the pin to follow the rename")
        _menu(page, "Kernel", "Restart Kernel…")
        _accept(page)
        page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(timeout=60_000)
        out = _run_cell(page, WHERE, "where", 1)
        assert f"where (3, 11) {PY311}" in out and "pinned by the entry 'analysis.ipynb'" in out
        shoot(page, "jupyterlab-pin-follows-rename")

        # The next new notebook from the launcher is Untitled.ipynb again: its own kernelspec's image.
        _menu(page, "File", "Close Tab")
        discard = page.locator(".jp-Dialog .jp-Dialog-button", has_text="Discard")  # unsaved output: drop it
        try:
            discard.wait_for(timeout=3_000)
            discard.click()
            page.locator(".jp-Dialog").wait_for(state="detached")
        except PlaywrightTimeout:
            pass
        _menu(page, "File", "New Launcher")
        page.locator(".jp-LauncherCard[title*='Py313 kernel']:visible").first.click()
        page.get_by_text("Untitled.ipynb").first.wait_for(timeout=60_000)
        page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(
            timeout=60_000
        )  # typed before it connects, a cell runs nothing
        wait_for(lambda: (root / "Untitled.ipynb").exists(), 20, "the new notebook")
        out = _run_cell(page, WHERE, "where", 0)
        assert "where (3, 13)" in out and "pinned" not in out

        # analysis.ipynb renamed in a terminal (Jupyter sees nothing): its entry stays, under the old name ...
        os.rename(root / "analysis.ipynb", root / "renamed-in-a-terminal.ipynb")
        assert "analysis.ipynb" in _pins(root)
        # ... and the new notebook, renamed to analysis.ipynb in JupyterLab, is not pinned by it.
        _menu(page, "File", "Rename Notebook…")
        page.locator(".jp-Dialog input.jp-mod-styled").first.fill("analysis.ipynb")
        _accept(page)
        wait_for(lambda: (root / "analysis.ipynb").exists(), 20, "the rename")
        _menu(page, "Kernel", "Restart Kernel…")
        _accept(page)
        page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(timeout=60_000)
        out = _run_cell(page, WHERE, "where", 1)
        assert "where (3, 13)" in out, out
        shoot(page, "jupyterlab-stale-pin-ignored")
        browser.close()


def test_a_kernel_start_error_is_readable_in_jupyterlabs_dialog(chromium, lab, install_kernelspec, docker_client):
    """The option-typo message was one line cut at the dialog's edge: the fix comes first, in lines that fit."""
    import json

    from jupyter_client.kernelspec import KernelSpecManager
    from playwright.sync_api import sync_playwright

    name = install_kernelspec(PY311, name="typo", display_name="Typo kernel")
    path = os.path.join(KernelSpecManager().get_kernel_spec(name).resource_dir, "kernel.json")
    spec = json.load(open(path))
    spec["metadata"]["kernel_provisioner"]["config"]["netwrok_mode"] = "none"  # edited by hand, past the CLI
    json.dump(spec, open(path, "w"))
    url, _, _ = lab
    with sync_playwright() as p:
        browser, page = launch(p, chromium)
        page.goto(url)
        page.wait_for_selector(".jp-LauncherCard", timeout=90_000)
        page.locator(".jp-LauncherCard[title*='Typo kernel']").first.click()
        dialog = page.locator(".jp-Dialog", has_text="Error Starting Kernel")
        dialog.wait_for(timeout=60_000)
        body = dialog.locator(".jp-Dialog-body pre")
        shoot(page, "jupyterlab-start-error")
        lines = body.inner_text().splitlines()
        assert lines[0].startswith("Fix: rename 'netwrok_mode' to 'network_mode' in"), lines
        assert "typo/kernel.json" in " ".join(lines[:3]), lines
        # Nothing is cut: the text is no wider than the box that shows it, and the box needs no scrolling.
        assert body.evaluate("e => e.scrollWidth <= e.clientWidth"), lines
        assert dialog.locator(".jp-Dialog-body").evaluate("e => e.scrollHeight <= e.clientHeight"), lines
        browser.close()


def test_run_all_with_a_move_in_the_middle_in_jupyterlab(chromium, lab, install_kernelspec, docker_client):
    """Run All: the cells queued behind %use_image were sent to the old kernel; each ends with a status
    (none stays at [*]) and says why it did not run; run again, they run in the new image."""
    import nbformat
    from playwright.sync_api import sync_playwright

    name = install_kernelspec(PY313, display_name="Py313 kernel")
    url, root, _ = lab
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": name, "display_name": "Py313 kernel", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in (WHERE, f"%load_ext envpin\n%use_image {PY311}", WHERE, WHERE)]
    nbformat.write(nb, root / "run-all.ipynb")
    with sync_playwright() as p:
        browser, page = launch(p, chromium)
        page.goto(url.replace("/lab?", "/lab/tree/run-all.ipynb?"))
        page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(timeout=90_000)
        _menu(page, "Run", "Run All Cells")
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        cells.nth(2).locator(".jp-OutputArea-output", has_text="not run").wait_for(timeout=90_000)
        cells.nth(1).locator(".jp-OutputArea-output", has_text="now runs in").wait_for(timeout=60_000)
        from testutils import wait_for

        prompts = lambda: [t.strip() for t in cells.locator(".jp-InputArea-prompt").all_inner_texts()]  # noqa: E731
        wait_for(lambda: not any("*" in t for t in prompts()), 60, "every cell to end (no [*] left)")
        assert prompts()[0] == "[1]:" and prompts()[1] not in ("[ ]:", "[*]:"), prompts()  # both ran ...
        assert prompts()[2:] == ["[ ]:", "[ ]:"], prompts()  # ... the two behind the move did not
        outputs = [cells.nth(i).locator(".jp-OutputArea").inner_text() for i in range(4)]
        shoot(page, "jupyterlab-run-all-move")
        assert "where (3, 13)" in outputs[0] and "now runs in" in outputs[1], outputs
        for out in outputs[2:]:
            assert f"not run: the kernel moved into {PY311}" in out and "where" not in out, outputs
        page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(timeout=30_000)
        again = _run_cell(page, WHERE, "where", 2)
        assert f"where (3, 11) {PY311}" in again
        browser.close()
