"""envpin's REST endpoints on a real jupyter_server, without an engine: who may ask, and what is refused.

The server runs with this tree's extension enabled (``testutils.browser.install_extension``)
and no kernel: what needs no kernel (authentication, XSRF, a malformed body,
an unknown kernel) is decided before any engine would be asked, which is
the point: a bad request costs nothing.
"""

from __future__ import annotations

import os
import uuid

import pytest
import requests

from testutils.browser import install_extension
from testutils.server import Server


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    base = tmp_path_factory.mktemp("lab-endpoints")
    dirs = {name: base / name for name in ("data", "runtime", "config")}
    for d in dirs.values():
        d.mkdir()
    env = dict(os.environ, DOCKER_HOST="tcp://127.0.0.1:9", JUPYTER_PLATFORM_DIRS="1")
    env.update(
        JUPYTER_PATH=str(dirs["data"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
    )
    install_extension(dirs, page=False)
    root = base / "root"
    root.mkdir()
    server = Server(root, env)
    yield server
    server.stop()


def api(srv, path: str) -> str:
    return f"{srv.url}/envpin/api/{path}"


def auth(srv) -> dict:
    return {"Authorization": f"token {srv.token}"}


def test_no_token_no_answer(srv):
    kid = str(uuid.uuid4())
    for path in ("kernels", f"kernels/{kid}", f"kernels/{kid}/images"):
        r = requests.get(api(srv, path), timeout=10)
        assert r.status_code == 403, (path, r.status_code)
    r = requests.post(api(srv, f"kernels/{kid}/move"), json={"image": "envpin-test/py313"}, timeout=10)
    assert r.status_code == 403
    wrong = {"Authorization": "token " + "0" * 32}
    assert requests.get(api(srv, "kernels"), headers=wrong, timeout=10).status_code == 403


def test_a_login_cookie_without_xsrf_cannot_move(srv):
    session = requests.Session()
    assert session.get(f"{srv.url}/lab?token={srv.token}", timeout=30).status_code in (200, 404)
    url = api(srv, f"kernels/{uuid.uuid4()}/move")
    r = session.post(url, json={"image": "envpin-test/py313"}, timeout=10)
    assert r.status_code == 403
    # The same cookie with the XSRF token (what JupyterLab's page sends) is let in: a 404, no such kernel.
    xsrf = session.cookies.get("_xsrf")
    assert xsrf, session.cookies
    r = session.post(url, json={"image": "envpin-test/py313"}, headers={"X-XSRFToken": xsrf}, timeout=10)
    assert r.status_code == 404, r.text


def test_with_the_token_only_this_servers_kernels(srv):
    r = requests.get(api(srv, "kernels"), headers=auth(srv), timeout=10)
    assert r.status_code == 200 and r.json() == {"kernels": []}
    assert r.headers["Cache-Control"] == "no-store"
    for path in (f"kernels/{uuid.uuid4()}", f"kernels/{uuid.uuid4()}/images"):
        assert requests.get(api(srv, path), headers=auth(srv), timeout=10).status_code == 404
    # Not a kernel id at all: no route (nothing built from it).
    for bad in ("..%2F..%2Fetc", "ABCDEF", str(uuid.uuid4()).upper(), str(uuid.uuid4()) + "x"):
        assert requests.get(api(srv, f"kernels/{bad}"), headers=auth(srv), timeout=10).status_code == 404


@pytest.mark.parametrize(
    "body, says",
    [
        (b"not json", "JSON object"),
        (b"[1]", "JSON object"),
        (b'{"image": "envpin-test/py313", "cwd": "/etc"}', "Unknown field"),
        (b'{"image": "x; import os"}', "'image' must be"),
        (b'{"image": "a\\nb"}', "'image' must be"),
        (b'{"image": ""}', "'image' must be"),
        (b'{"image": "envpin-test/py313", "restart": "yes"}', "'restart' must be"),
        (b'{"image": "' + b"a" * 5000 + b'"}', "at most"),
    ],
)
def test_a_malformed_move_is_a_400_before_anything(srv, body, says):
    r = requests.post(
        api(srv, f"kernels/{uuid.uuid4()}/move"),
        data=body,
        headers={**auth(srv), "Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400 and says in r.json()["message"], r.text


def test_a_good_move_of_an_unknown_kernel_is_a_404(srv):
    r = requests.post(
        api(srv, f"kernels/{uuid.uuid4()}/move"), json={"image": "envpin-test/py313"}, headers=auth(srv), timeout=10
    )
    assert r.status_code == 404 and "No kernel" in r.json()["message"]
