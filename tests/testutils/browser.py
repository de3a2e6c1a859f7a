"""JupyterLab in a real browser: the server with envpin's extension, Debian's Chromium, a notebook, a cell.

JupyterLab (from PyPI) runs on 127.0.0.1; Playwright drives Debian's Chromium
(/usr/bin/chromium, headless: Playwright cannot download browsers here; the
``chromium`` fixture installs the package when it is missing and this is root).
Screenshots go to ``test-artifacts/`` for a person to look at.

The server gets envpin's JupyterLab extension from *this* tree: the built
labextension (``jupyterlab_ext/labextension``, which ``pip install -e .``
builds) is linked into the test's private JUPYTER_PATH and the server
extension enabled in its private config folder, so a checkout tests its own
extension whatever the virtualenv holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from testutils import ROOT
from testutils.server import Server

#: JupyterLab's own options: no browser, no calls home (this machine has no outside network).
LAB_ARGS = ("--no-browser", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
LABEXTENSION = ROOT / "jupyterlab_ext" / "labextension"
#: What JupyterLab's toolbar and status bar call a kernel of an envpin kernelspec (jupyterlab_ext/src/index.ts).
ENVPIN_KERNEL_LABEL = "Containerized Python"
#: The envpin status bar item.
ITEM = ".jp-envpin-status"
#: The cells of the notebook in front (other notebooks' tabs stay in the page, hidden).
VISIBLE_CELLS = ".jp-NotebookPanel:visible .jp-Notebook .jp-Cell"


def install_extension(jupyter_env: dict, page: bool = True) -> None:
    """Make this tree's extension the one the test's JupyterLab loads: the server half, and the page's unless ``page=False``."""
    config = Path(jupyter_env["config"]) / "jupyter_server_config.d"
    config.mkdir(exist_ok=True)
    source = ROOT / "jupyter-config" / "jupyter_server_config.d" / "envpin.json"
    json.loads(source.read_text())  # a broken file would silently leave the server half out
    (config / "envpin.json").write_text(source.read_text())
    if not page:
        return
    # JupyterLab asks whether to fetch news, in a toast that would sit over the others on screenshots: "no".
    settings = Path(jupyter_env["config"]) / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    if not (LABEXTENSION / "package.json").exists():
        raise RuntimeError(
            f"{LABEXTENSION} is not built: run `pip install -e .` (it builds the JupyterLab extension with npm), "
            "or `npm install && npm run build` in jupyterlab_ext/."
        )
    labextensions = Path(jupyter_env["data"]) / "labextensions"
    labextensions.mkdir(exist_ok=True)
    (labextensions / "envpin").symlink_to(LABEXTENSION, target_is_directory=True)


def start_lab(root: Path) -> tuple[Server, str]:
    """JupyterLab on 127.0.0.1 serving ``root``: the server and the URL of its page (token included)."""
    srv = Server(root, dict(os.environ), LAB_ARGS, app="jupyterlab")
    return srv, f"{srv.url}/lab?token={srv.token}"


def launch(p, chromium: str):
    """A headless Chromium and a page of a size that shows the whole status bar."""
    browser = p.chromium.launch(
        executable_path=chromium,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run"],
    )  # fmt: skip
    return browser, browser.new_page(viewport={"width": 1400, "height": 900})


def open_notebook(p, chromium: str, url: str, kernel_display_name: str):
    """A new notebook in the kernel whose launcher card is ``kernel_display_name``, idle: (browser, page)."""
    browser, page = launch(p, chromium)
    page.goto(url)
    page.wait_for_selector(".jp-LauncherCard", timeout=90_000)
    page.locator(f".jp-LauncherCard[title*='{kernel_display_name}']").first.click()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # Typing before the kernel connects runs nothing: wait for the status bar to say it is idle.
    page.get_by_text(f"{ENVPIN_KERNEL_LABEL} | Idle").wait_for(timeout=60_000)
    return browser, page


def run_cell(page, code: str, expect: str, index: int, timeout: float = 60_000) -> str:
    """Type ``code`` into cell ``index``, run it, wait for an output containing ``expect``; all its output text."""
    cell = page.locator(VISIBLE_CELLS).nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(code)
    page.wait_for_timeout(300)  # let the editor settle (a completer popup would eat the key)
    page.keyboard.press("Shift+Enter")
    output = page.locator(VISIBLE_CELLS).nth(index).locator(".jp-OutputArea-output")
    try:
        output.filter(has_text=expect).first.wait_for(timeout=timeout)
    except Exception:
        shoot(page, "jupyterlab-failed")
        raise
    return "\n".join(output.all_inner_texts())


def shoot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
