"""JupyterLab in a real browser: the launcher, the Containerized Python kernel, %use_image moving it.

JupyterLab (from PyPI) runs on 127.0.0.1; Playwright drives Debian's Chromium
(/usr/bin/chromium, headless: Playwright cannot download browsers here; the
harness installs the package when it is missing and this is root).  A
screenshot is kept in test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import requests

from conftest import PY311, PY313, ROOT
from test_server import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def chromium():
    if not os.path.exists(CHROMIUM):
        from tools.engine import apt_install

        apt_install("chromium", "chromium")
    return CHROMIUM


@pytest.fixture
def lab(jupyter_env, tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    port, token = free_port(), uuid.uuid4().hex
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if os.getuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/api/status?token={token}", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    yield f"{url}/lab?token={token}", root
    proc.terminate()
    proc.wait(30)
    log.close()


def test_use_image_moves_a_kernel_in_jupyterlab(chromium, lab, install_kernelspec, docker_client):
    from playwright.sync_api import sync_playwright

    install_kernelspec(PY313, display_name="Py313 kernel")
    url, root = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(url)
        page.wait_for_selector(".jp-LauncherCard", timeout=90_000)
        page.locator(".jp-LauncherCard[title*='Py313 kernel']").first.click()
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        # Typing before the kernel connects runs nothing: wait for the status bar to say it is idle.
        page.get_by_text("Py313 kernel | Idle").wait_for(timeout=60_000)

        def run_cell(code: str, expect: str, index: int) -> str:
            cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
            cell.locator(".cm-content").click()
            page.keyboard.press("Control+a")
            page.keyboard.insert_text(code)
            page.keyboard.press("Shift+Enter")
            output = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")
            output.filter(has_text=expect).first.wait_for(timeout=60_000)
            return "\n".join(output.all_inner_texts())

        try:
            first = run_cell("import sys; print('before', sys.version_info[:2])", "before", 0)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-failed.png"))
            raise
        assert "before (3, 13)" in first
        moved = run_cell(f"%load_ext envpin\n%use_image {PY311}", "now runs in", 1)
        assert f"moving this kernel into {PY311}" in moved
        after = run_cell("import sys, os; print('after', sys.version_info[:2], os.environ['ENVPIN_IMAGE'])", "after", 2)
        assert f"after (3, 11) {PY311}" in after
        # The person re-runs the %use_image cell: now it only confirms the pin, as a table.
        page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        table = page.locator(".jp-Notebook .jp-Cell").nth(1).locator("table.envpin-status")
        table.wait_for(timeout=60_000)
        text = table.inner_text()
        assert PY311 in text and docker_client.images.get(PY311).id in text and "3.11." in text
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-use-image.png"))
        browser.close()
    pins = (root / ".envpin.json").read_text()
    assert '"Untitled.ipynb"' in pins and PY311 in pins  # keyed by the notebook JupyterLab opened
