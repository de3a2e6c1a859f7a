"""JupyterLab, with the kernel on another machine's engine over TCP+TLS: a ``%use_image`` move as a person sees it.

Each of the kernel's connections is relayed there by a ``docker exec``
(``envpin_provisioner.remote.tls_kernel``), so after a move JupyterLab's
sockets come back later than locally; the successor's note ("this kernel now
runs in ...") must still reach the cell, and the next cell run in the new
image on that engine.  A hand check found the note lost there once the local
wait for it was cut to 30 ms.  A screenshot is kept in test-artifacts/.
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from testutils import PY311, PY313, wait_for
from testutils.browser import open_notebook, run_cell, shoot
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(240),
]

WHERE = (
    "import sys, os, socket; print('where', sys.version.split()[0], os.environ['ENVPIN_IMAGE_ID'], "
    "socket.gethostname(), os.path.exists('/.dockerenv'))"
)


def extension_view(srv, wanted: str) -> tuple[dict, set[str]]:
    """The envpin extension's report of the server's one kernel (once the image's Python is known) and the
    references its move picker offers (once ``wanted`` is among them), from the REST endpoints the page reads."""

    def get(path: str):
        answer = requests.get(f"{srv.url}{path}", headers={"Authorization": f"token {srv.token}"}, timeout=60)
        answer.raise_for_status()
        return answer.json()

    (kernel_id,) = [k["id"] for k in get("/api/kernels")]
    deadline = time.monotonic() + 60
    while True:
        report = get(f"/envpin/api/kernels/{kernel_id}")
        listed = {i["reference"] for i in get(f"/envpin/api/kernels/{kernel_id}/images")["images"]}
        if (report["python"] and wanted in listed) or time.monotonic() > deadline:
            return report, listed
        time.sleep(0.5)


@pytest.fixture(scope="module")
def remote(docker_client):
    with RemoteHost("rhlab", images=[PY311, PY313]) as host:
        yield host


@pytest.fixture
def tls_client_env(remote, monkeypatch):
    """The server's environment names the engine's client certificate (set before ``lab`` starts the server)."""
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(remote.cert_path))
    yield
    import envpin_provisioner

    envpin_provisioner.reset_caches()


def test_a_move_on_a_tls_engine_shows_its_note_in_jupyterlab(tls_client_env, chromium, lab, install_kernelspec, remote):
    from playwright.sync_api import sync_playwright

    url, root, srv = lab
    admin = remote.docker_client("admin")
    # The kernel's image exists only on that engine (an id of its own, not a tag of a local image's id):
    # what the extension says of it can only come from there.
    remote_only = "envpin-test/only-on-the-box:1"
    made = admin.containers.create(PY311, command=["true"])
    made.commit(repository="envpin-test/only-on-the-box", tag="1")
    made.remove()
    install_kernelspec(remote_only, display_name="Py311 on the TLS box", engine=remote.tcp_url)
    try:
        with sync_playwright() as p:
            browser, page = open_notebook(p, chromium, url, "Py311 on the TLS box")
            first = run_cell(page, WHERE, "where", 0, timeout=120_000)
            (before,) = admin.containers.list(filters={"label": "envpin.role=kernel"}, ignore_removed=True)
            assert "where 3.11" in first and before.attrs["Config"]["Hostname"] in first and "True" in first
            # What the extension shows comes from the kernel's engine: the image's Python is asked there (it
            # was "Python ?": the probe bind-mounted a path of this machine), the move picker lists its images.
            report, listed = extension_view(srv, remote_only)
            assert (report["python"] or "").startswith("3.11"), report
            assert remote_only in listed and PY313 in listed, listed
            page.get_by_text("Python 3.11").first.wait_for(timeout=30_000)  # the status bar
            moved = run_cell(page, f"%load_ext envpin\n%use_image {PY313}", "now runs in", 1, timeout=120_000)
            assert f"moving this kernel into {PY313}" in moved and f"this kernel now runs in {PY313}" in moved
            after = run_cell(page, WHERE, "where", 2, timeout=120_000)
            running = {"label": "envpin.role=kernel"}  # the old one exited (its removal may still be under way)
            (now,) = wait_for(
                lambda: (
                    found if len(found := admin.containers.list(filters=running, ignore_removed=True)) == 1 else None
                ),
                30,
                "one running kernel container",
            )
            assert now.id != before.id and now.attrs["Config"]["Hostname"] in after
            assert "where 3.13" in after and admin.images.get(PY313).id in after
            shoot(page, "jupyterlab-remote-tls-move")
            browser.close()
    finally:
        admin.images.remove(remote_only, force=True)
        admin.close()
    assert PY313 in (root / ".envpin.json").read_text()  # the pin is beside the notebook, on this machine
