"""envpin's JupyterLab endpoints (``/envpin/api/``) against strangers, fuzzed requests and a hostile kernel.

The endpoints are a way into the server that did not exist before the
extension, so they get the hostile kernel's standard (test_hostile_kernel.py):
everything runs for real, a real jupyter_server with the extension enabled,
real kernels where a kernel is needed, requests over HTTP.

* A stranger (no token, a wrong token, another Host, a cross-site POST with
  the login cookie but no XSRF token) is refused, and a POST that declares a
  huge body is refused before one byte of it is read.
* Fuzzed requests (random JSON, huge strings, control characters, path
  traversal, shell metacharacters, unicode, wrong types, broken encodings;
  odd kernel ids and methods) are answered 4xx, quickly, with a one-line JSON
  message and no traceback; the server logs no uncaught error.
* Only an image name the route accepts reaches the kernel, and only as the
  argument of ``%use_image`` (checked on the code the server sends, and on
  what a kernel that records its calls receives).
* A hostile kernel writes what the report reads (its move requests, its
  notebook folder's pin file, its answer to a move the page asked for):
  the report stays fast, bounded, on one line per string, JSON the browser
  will not sniff as HTML; and the page's code renders it as text.
"""

from __future__ import annotations

import ast
import json
import os
import random
import re
import socket
import string
import time
import uuid

import pytest
import requests

from envpin_provisioner.lab.ui_moves import IMAGE_NAME
from testutils import PY311, PY313, ROOT, program, wait_for
from testutils.browser import install_extension
from testutils.server import Server

API = "/envpin/api"
#: A request to these endpoints is answered within this many seconds (they do no work before checking).
QUICK = 2.0
#: The longest string a report may carry: a message (2000 characters) with its "... (N characters in all)".
MAX_STRING = 2100


def nobody_kernel() -> str:
    """A well-formed kernel id no server has."""
    return str(uuid.uuid4())


@pytest.fixture
def ext_server(jupyter_env, tmp_path):
    """``ext_server()``: a jupyter_server with envpin's server extension, on its own root; all stop at the end."""
    install_extension(jupyter_env, page=False)
    made = []

    def start(name: str = "root") -> Server:
        root = tmp_path / name
        root.mkdir()
        srv = Server(root, dict(os.environ))
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


class Api:
    """Requests to one server's envpin endpoints, each timed and checked for what no answer may carry."""

    def __init__(self, srv: Server):
        self.srv = srv
        self.auth = {"Authorization": f"token {srv.token}"}

    def call(self, method: str, path: str, limit: float = QUICK, **kw) -> requests.Response:
        kw.setdefault("headers", self.auth)
        t0 = time.monotonic()
        r = requests.request(method, f"{self.srv.url}{API}/{path}", timeout=30, **kw)
        took = time.monotonic() - t0
        assert took < limit, f"{method} {path} took {took:.1f} s"
        assert r.status_code < 500, (method, path, r.status_code, r.text[:500])
        assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:2000]
        return r

    def refused(self, method: str, path: str, statuses: set[int], **kw) -> dict:
        """The request is refused with one of ``statuses`` and a JSON one-line message."""
        r = self.call(method, path, **kw)
        assert r.status_code in statuses, (method, path, kw.get("data", kw.get("json")), r.status_code, r.text[:300])
        if r.headers.get("Content-Type", "").startswith("application/json"):
            body = r.json()
            assert isinstance(body.get("message"), str) and "\n" not in body["message"], body
            return body
        return {}


def assert_log_clean(srv: Server) -> None:
    log = srv.log_text()
    assert "Traceback" not in log and "Uncaught exception" not in log, log[-4000:]
    assert not re.search(r"\] 5\d\d (GET|POST) /envpin", log), log[-4000:]


# ---- strangers --------------------------------------------------------------------------------------


def test_strangers_are_refused_before_anything_is_read(ext_server):
    srv = ext_server()
    api = Api(srv)
    kid = nobody_kernel()
    paths = ("kernels", f"kernels/{kid}", f"kernels/{kid}/images", "pulls")

    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": f"Bearer {srv.token[:-1]}x"}):
        for path in paths:
            body = api.refused("GET", path, {403}, headers=headers)
            assert kid not in json.dumps(body)
        api.refused("POST", f"kernels/{kid}/move", {403}, headers=headers, json={"image": PY313})
    # A page of another site reaching 127.0.0.1 by a name of its own (DNS rebinding): refused by Host.
    api.refused("GET", "kernels", {403}, headers={**api.auth, "Host": "evil.example"})

    # A stranger declaring a huge body is answered at once, without the server reading (or holding) the body.
    for headers in ("", f"Authorization: token {srv.token}\r\n"):
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=QUICK) as sock:
            sock.sendall(
                (
                    f"POST {API}/kernels/{kid}/move HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{headers}"
                    "Content-Type: application/json\r\nContent-Length: 500000000\r\n\r\n"
                ).encode()
            )
            head = sock.recv(4096).decode(errors="replace")
        assert head.startswith("HTTP/1.1 403" if not headers else "HTTP/1.1 413"), head[:200]
        assert time.monotonic() - t0 < QUICK

    # The login cookie alone (what a cross-site form or fetch would carry) cannot POST: XSRF is required.
    s = requests.Session()
    assert s.get(f"{srv.url}/?token={srv.token}", timeout=30).ok
    assert s.get(f"{srv.url}{API}/kernels", timeout=10).status_code == 200  # the cookie does log in
    move = f"{srv.url}{API}/kernels/{kid}/move"
    r = s.post(move, json={"image": PY313}, timeout=10)
    assert r.status_code == 403 and "xsrf" in r.text.lower(), r.text
    xsrf = s.cookies["_xsrf"]
    r = s.post(move, json={"image": PY313}, headers={"X-XSRFToken": xsrf, "Origin": "http://evil.example"}, timeout=10)
    assert r.status_code in (403, 404) and "No kernel" not in r.text, r.text  # the origin check, not the lookup
    # With the cookie and its XSRF token, from the page's own origin, the request gets through to the lookup.
    r = s.post(move, json={"image": PY313}, headers={"X-XSRFToken": xsrf}, timeout=10)
    assert r.status_code == 404 and "No kernel" in r.text, r.text
    assert_log_clean(srv)


# ---- fuzzed requests ------------------------------------------------------------------------------

#: Image names and values a page, a script or an attacker may send; none is an image name the route takes.
HOSTILE_IMAGES = [
    "", " ", "a b", "-rf", "--restart", "a --restart", ".hidden", "/etc/passwd", "../../etc/shadow",
    "..", "a/../../b", "a\\b", "a;id", "a&&id", "a|id", "$(id)", "`id`", "a'b", 'a"b', "a')\nimport os#",
    "a\n%system id", "a\r\nb", "a\x00b", "a\x1b[31mred", "a\u202eb", "ｅnvpin/py311", "envpin/py311\u200b",
    "envpin/😀", "<script>alert(1)</script>", "a%20b", "a\tb", "a" * 301, "a" * 4000, "{}",
    "a:b:c!d", "a#b", "a*", "a?b", "~root", "a,b", "a..b", "a//b", "host:5000//x",
]  # fmt: skip


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 1e308, 2**64, 3.5])
    if kind == 2:
        return "".join(chr(rng.randrange(0x0, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 3:
        return rng.choice(HOSTILE_IMAGES)
    if kind == 4:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 60)))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["image", "restart", "pull", "kernel_id", "code", "__proto__", "image ", "Image", "path"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def fuzzed_bodies(rng: random.Random) -> list[bytes]:
    """Move bodies that must all be refused 400 (or 411/413) before anything happens."""
    bodies = [json.dumps({"image": image}).encode() for image in HOSTILE_IMAGES]
    bodies += [json.dumps({"image": PY313, key: value}).encode() for key, value in [
        ("restart", "true"), ("restart", 1), ("pull", None), ("pull", [True]), ("code", "import os"),
        ("kernel_id", nobody_kernel()), ("__proto__", {}), ("notebook", "../../x.ipynb"),
    ]]  # fmt: skip
    bodies += [
        b"", b"null", b"[]", b'"envpin-test/py311"', b"42", b"{", b"{'image': 'a'}", b"\xff\xfe\x00{",
b"[" * 3000 + b"]" * 3000,
        b'{"image": "' + b"\xc3\x28" + b'"}', b'{"image": 1}', b'{"image": null}', b'{"image": ["a"]}',
        b'{"image": {"$ne": 1}}', b'{"image": "a", "image": "' + b"../" * 100 + b'"}', b"1" * 4097,
        json.dumps({"image": "a" * 5000}).encode(), b"\x00" * 100, b'{"image": "a\\u0000b"}',
    ]  # fmt: skip
    for _ in range(150):
        value = random_json(rng)
        body = {"image": value} if rng.random() < 0.6 else value
        if isinstance(body, dict) and isinstance(body.get("image"), str) and IMAGE_NAME.match(body["image"]):
            continue  # a well-formed name: that one is the lookup's to answer (404), tried below
        bodies.append(json.dumps(body).encode())
    return bodies


def test_fuzzed_requests_are_refused_quickly_and_plainly(ext_server):
    srv = ext_server()
    api = Api(srv)
    rng = random.Random(24)
    kid = nobody_kernel()
    t0 = time.monotonic()
    for body in fuzzed_bodies(rng):
        api.refused("POST", f"kernels/{kid}/move", {400, 413}, data=body)
    # Well-formed, then: the kernel lookup answers (no such kernel here), for the route's kernel ids only.
    api.refused("POST", f"kernels/{kid}/move", {404}, json={"image": PY313, "restart": True, "pull": False})
    api.refused("POST", f"kernels/{kid}/move", {404}, data=b"\xef\xbb\xbf" + json.dumps({"image": PY313}).encode())
    odd_ids = [
        kid.upper(), kid + "0", kid[:-1], "..", "..%2F..%2Fapi%2Fkernels", "%2e%2e", f"{kid}%00", f"{kid}%2F..",
        "not-a-kernel", "ｅ" * 36, "*", f"{kid};rm", "0" * 5000,
    ]  # fmt: skip
    for odd in odd_ids:
        for path in (f"kernels/{odd}", f"kernels/{odd}/images"):
            api.refused("GET", path, {404, 400, 405, 414})
        api.refused("POST", f"kernels/{odd}/move", {404, 400, 405, 414}, json={"image": PY313})
    for method in ("PUT", "DELETE", "PATCH"):
        for path in ("kernels", f"kernels/{kid}", f"kernels/{kid}/images", f"kernels/{kid}/move"):
            api.refused(method, path, {405}, data=b"{}")
    for path in ("kernels", f"kernels/{kid}/images", f"kernels/{kid}", "pulls"):
        api.refused("POST", path, {405}, json={"image": PY313})
    # Query strings are ignored, whatever they say.
    listed = api.call("GET", "kernels", params={"kernel_id": "../../x", "all": "1", "user": "*"})
    assert listed.status_code == 200 and listed.json() == {"kernels": []}
    assert time.monotonic() - t0 < 60
    assert_log_clean(srv)


def test_a_kernel_envpin_does_not_run_is_neither_reported_nor_moved(ext_server):
    """A plain local ipykernel (Jupyter's own kernelspec, no container): no report, no image list, no move."""
    srv = ext_server()
    api = Api(srv)
    kid = srv.start_kernel("python3", "plain.ipynb")
    assert api.call("GET", f"kernels/{kid}").json() == {"kernel_id": kid, "envpin": False}
    assert api.call("GET", "kernels").json() == {"kernels": []}
    api.refused("GET", f"kernels/{kid}/images", {404})
    api.refused("POST", f"kernels/{kid}/move", {404}, json={"image": PY313})
    status, out = srv.execute(kid, "print('still', 'here')")
    assert status == "ok" and out.strip() == "still here"
    assert_log_clean(srv)


def test_only_an_image_name_reaches_the_kernel_and_only_as_the_magics_argument():
    """What the server sends the kernel for a move: two calls, the name a string literal; nothing else passes."""
    from tornado import web

    from envpin_provisioner.lab.handlers import parse_move
    from envpin_provisioner.lab.ui_moves import code_for

    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "._:/@+-"
    names = ["a", PY313, "registry:5000/a/b@sha256:" + "0" * 64, "a" * 300, "a+b-c_d.e:f@g/h"]
    names += [rng.choice(string.ascii_letters) + "".join(rng.choices(alphabet, k=rng.randrange(0, 299))) for _ in range(300)]  # fmt: skip
    names = [n for n in names if ".." not in n and "//" not in n]
    assert len(names) > 100
    for name in names:
        for restart in (False, True):
            pull = rng.random() < 0.5
            assert parse_move(json.dumps({"image": name, "restart": restart, "pull": pull}).encode()) == (
                name,
                restart,
                pull,
            )
            tree = ast.parse(code_for(name, restart, pull))
            calls = [(s.value.func.attr, [ast.literal_eval(a) for a in s.value.args]) for s in tree.body]  # type: ignore[attr-defined]
            line = " ".join([name, *(["--restart"] if restart else []), *(["--pull"] if pull else [])])
            assert calls == [("load_extension", ["envpin"]), ("run_line_magic", ["use_image", line])]
    for bad in HOSTILE_IMAGES:
        assert not IMAGE_NAME.match(bad), bad
        with pytest.raises(ValueError):
            code_for(bad, False, False)
        with pytest.raises(web.HTTPError) as refused:
            parse_move(json.dumps({"image": bad}).encode())
        assert refused.value.status_code == 400


def test_the_page_renders_what_the_server_says_as_text():
    """The page's code puts report strings in textContent, title and notification text, never into HTML."""
    sources = sorted((ROOT / "jupyterlab_ext" / "src").glob("*.ts"))
    assert sources
    for path in sources:
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "dangerouslySetInnerHTML", "document.write",
                     "eval(", "new Function", "createContextualFragment", "DOMParser", "renderMarkdown",
                     "RenderMimeRegistry", "srcdoc", ".href ="):  # fmt: skip
            assert sink not in text, f"{path.name} uses {sink}"
        # Server strings are cut to a length on the page too (api.clip), not only on the server.
        if path.name in ("item.ts", "moves.ts"):
            assert "clip(" in text, path.name


# ---- a hostile kernel -----------------------------------------------------------------------------


def assert_bounded(report: dict) -> None:
    """Every string of a report is on one line, printable and cut; the whole is small."""

    def walk(value, where):
        if isinstance(value, str):
            assert len(value) <= MAX_STRING, (where, len(value))
            assert value.isprintable(), (where, value[:200])
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            assert len(value) <= 5 or where.endswith("images"), where
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")

    walk(report, "report")
    assert len(json.dumps(report)) < 32_000


HOSTILE_NAME = "<img src=x onerror=alert(document.cookie)>" + "A" * 460  # printable: the move server takes it
#: The same for a cell's %use_image line (no spaces: the magic takes one name).
CELL_NAME = "<svg/onload=alert(document.cookie)>" + "A" * 460


def test_a_hostile_kernel_cannot_break_or_slow_the_report(ext_server, install_kernelspec, docker_client):
    srv = ext_server()
    api = Api(srv)
    name = install_kernelspec(PY311)
    kid = srv.start_kernel(name, "n.ipynb")

    def report(limit: float = QUICK) -> dict:
        r = api.call("GET", f"kernels/{kid}", limit=limit)
        assert r.status_code == 200, r.text
        # JSON the browser takes as JSON: never sniffed as a page, never cached.
        assert r.headers["Content-Type"].startswith("application/json"), r.headers
        assert r.headers.get("X-Content-Type-Options") == "nosniff" and r.headers.get("Cache-Control") == "no-store"
        data = r.json()
        assert_bounded(data)
        return data

    wait_for(lambda: report(limit=10).get("python"), 60, "the kernel's Python", 0.5)
    status, out = srv.execute(kid, program("hostile", "toolbox"))
    assert status == "ok", out

    # 1. Move requests with hostile image names, a flood of them in a thread of the kernel, while the page asks.
    flood = (
        "import threading, uuid\n"
        f"NAMES = [{HOSTILE_NAME!r}, '\\u202e' + 'x' * 600, 'a' * 100_000, '%system id', '../../' * 80]\n"
        "def flood():\n"
        "    end = time.monotonic() + 6\n"
        "    while time.monotonic() < end:\n"
        "        for n in NAMES:\n"
        "            send({'id': uuid.uuid4().hex, 'image': n, 'allow_restart': False})\n"
        "            time.sleep(0.01)\n"
        "threading.Thread(target=flood, daemon=True).start()\n"
        "print('flooding')"
    )
    status, out = srv.execute(kid, flood)
    assert status == "ok" and "flooding" in out, out
    seen = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        data = report()  # each under QUICK seconds, bounded, printable
        seen += [s["image"] for s in (data.get("activity"), data.get("last")) if s]
        time.sleep(0.1)
    assert any(s.startswith("<img src=x") for s in seen), seen[:5]  # the hostile names did reach the report
    time.sleep(1)  # the flood's last request answered
    # ... and the cell's own %use_image of such a name is refused, the report still bounded
    status, out = srv.execute(kid, f"%load_ext envpin\n%use_image {CELL_NAME}", timeout=60)
    assert status == "error" and "<svg/onload" in out, (status, out[:500])
    data = report()
    assert data["last"]["phase"] in ("refused", "error") and data["last"]["image"].startswith("<svg"), data["last"]

    # 2. The kernel writes its notebook folder's pin file (read at the next start): its text reaches the report's notes.
    hostile_spec = "\x1b]0;owned\x07<script>alert(1)</script>\u202e" + "K" * 20_000
    pins = {"notebooks": {"*": {"image": PY313, "kernelspec": hostile_spec, "pinned_at": "\x1b[2J" * 50}}}
    status, out = srv.execute(kid, f"import json\nopen('.envpin.json', 'w').write(json.dumps({pins!r}))\nprint('ok')")
    assert status == "ok" and out.strip() == "ok", out
    srv.restart(kid)
    srv.wait_answers(kid, 41)
    data = report(limit=10)
    assert data["source"] == "kernelspec" and data["image"] == PY311, data  # the other kernelspec's pin is skipped
    notes = " ".join(data["notes"])
    assert "<script>" in notes and "\\x1b" in notes and "\x1b" not in notes, notes[:300]

    # 3. A move from the page, in a kernel that answers it with lies: the report says so, bounded; nothing but
    #    the two calls of the move's code ran, with the image name as the magic's argument.
    liar = (
        "import json\n"
        "ip = get_ipython()\n"
        "def record(*args):\n"
        "    with open('calls.json', 'a') as fh: fh.write(json.dumps(args) + '\\n')\n"
        "ip.extension_manager.load_extension = lambda name: record('load_extension', name)\n"
        "class Evil(Exception): pass\n"
        "Evil.__name__ = 'E' * 5000\n"
        "def magic(name, line):\n"
        "    record('run_line_magic', name, line)\n"
        "    raise Evil('\\x1b[2J<b>moved</b>\\n' + 'L' * 200_000)\n"
        "ip.run_line_magic = magic\n"
        "print('lying')"
    )
    status, out = srv.execute(kid, liar)
    assert status == "ok" and "lying" in out, out
    r = api.call("POST", f"kernels/{kid}/move", json={"image": PY313, "restart": True, "pull": True})
    assert r.status_code == 202, r.text
    # One move at a time per kernel.
    api.refused("POST", f"kernels/{kid}/move", {409}, json={"image": PY313})
    wait_for(lambda: report()["ui_move"]["state"] != "running", 30, "the move's end", 0.3)
    ui = report()["ui_move"]
    assert ui["state"] == "error" and ui["message"].startswith("\\x1b[2J<b>moved</b>\\nLLL"), ui
    assert len(ui["message"]) <= MAX_STRING
    calls = [json.loads(line) for line in (srv.root / "calls.json").read_text().splitlines()]
    assert calls == [["load_extension", "envpin"], ["run_line_magic", "use_image", f"{PY313} --restart --pull"]]
    # The kernel did not move and still answers.
    assert report()["image"] == PY311
    srv.wait_answers(kid, 42)

    # 4. A kernel of another server is not this server's to report or move.
    other = ext_server("other")
    other_kid = other.start_kernel(name, "o.ipynb")
    api.refused("GET", f"kernels/{other_kid}", {404})
    api.refused("POST", f"kernels/{other_kid}/move", {404}, json={"image": PY313})
    assert other_kid not in api.call("GET", "kernels").text
    assert_log_clean(srv)
