"""JupyterLab in a real browser: the launcher, the Containerized Python kernel, %use_image moving it.

JupyterLab (from PyPI) runs on 127.0.0.1; Playwright drives Debian's Chromium
(/usr/bin/chromium, headless: Playwright cannot download browsers here; the
harness installs the package when it is missing and this is root).  A
screenshot is kept in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

from testutils import PY311, PY313
from testutils.browser import open_notebook as _open_notebook
from testutils.browser import run_cell as _run_cell
from testutils.browser import shoot


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
