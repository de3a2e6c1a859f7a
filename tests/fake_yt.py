"""A fake YTsaurus HTTP proxy: the cluster's server side, faked, for the real ``ytsaurus-client``.

Only the server is fake.  The test drives the real ``yt.wrapper`` client,
which builds the operation spec, pickles the job, uploads the files and sends
``start_operation`` exactly as it would to a cluster; this server answers the
handful of commands that takes (API discovery, a tiny in-memory Cypress,
transactions, file upload and cache, batches) and records every
``start_operation`` spec so a test can look at what a cluster would have run.
Nothing is executed: there are no exec nodes here.
"""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yt.yson

# name: (input_type, output_type, is_volatile, is_heavy): the descriptors /api/v4 lists.
COMMANDS = {
    "get": (None, "structured", False, False),
    "exists": (None, "structured", False, False),
    "list": (None, "structured", False, False),
    "create": (None, "structured", True, False),
    "set": ("structured", None, True, False),
    "remove": (None, None, True, False),
    "lock": (None, "structured", True, False),
    "copy": (None, "structured", True, False),
    "move": (None, "structured", True, False),
    "concatenate": (None, None, True, False),
    "start_transaction": (None, "structured", True, False),
    "ping_transaction": (None, None, True, False),
    "commit_transaction": (None, None, True, False),
    "abort_transaction": (None, None, True, False),
    "execute_batch": (None, "structured", True, False),
    "write_file": ("binary", None, True, True),
    "get_file_from_cache": (None, "structured", False, False),
    "put_file_to_cache": (None, "structured", True, False),
    "start_operation": (None, "structured", True, False),
    "get_operation": (None, "structured", False, False),
}


class ResolveError(Exception):
    """A path that is not there: YT's "Error resolving path" (code 500), which the client handles."""


def _plain(value: Any) -> Any:
    """YSON types (YsonString, YsonMap with attributes, ...) as plain JSON-able Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return str(value)


class FakeYtProxy:
    """``with FakeYtProxy() as yt_proxy: YtClient(proxy=yt_proxy.url)``; ``yt_proxy.operations`` holds the specs."""

    def __init__(self) -> None:
        self.operations: list[dict[str, Any]] = []  #: every start_operation: {"operation_type", "spec"}
        self.commands: list[str] = []  #: every command name, in order
        self.errors: list[str] = []  #: commands the fake could not answer
        self.files: dict[str, bytes] = {}  #: uploaded files by Cypress path
        self.nodes: dict[str, dict[str, Any]] = {"//sys": {"type": "map_node"}}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeYtProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the commands ----------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{next(self._ids)}-2-3-4"

    def run(self, command: str, params: dict[str, Any], body: bytes) -> Any:
        self.commands.append(command)
        path = str(params.get("path", ""))
        with self._lock:
            if command == "execute_batch":
                return {"results": [{"output": self.run(str(r["command"]), _plain(r.get("parameters", {})), b"")}
                                    for r in params["requests"]]}
            if command == "exists":
                return {"value": self._exists(path)}
            if command == "get":
                return {"value": self._get(path)}
            if command == "list":
                return {"value": [p.rsplit("/", 1)[1] for p in self.nodes if p.rsplit("/", 1)[0] == path]}
            if command == "create":
                self.nodes.setdefault(path, {"type": params.get("type"), **(params.get("attributes") or {})})
                return {"node_id": self._new_id()}
            if command in ("copy", "move"):
                self.nodes[str(params["destination_path"])] = dict(self.nodes.get(str(params["source_path"]), {}))
                return {"node_id": self._new_id()}
            if command == "remove":
                self.nodes.pop(path, None)
                return None
            if command == "set":
                return None
            if command == "lock":
                return {"lock_id": self._new_id(), "node_id": self._new_id()}
            if command == "start_transaction":
                return {"transaction_id": self._new_id()}
            if command == "write_file":
                if body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                elif body[:1] == b"\x78":  # zlib ("deflate")
                    body = zlib.decompress(body)
                self.files[path] = body
                self.nodes.setdefault(path, {"type": "file"})
                return None
            if command == "get_file_from_cache":
                return ""  # never cached: the client uploads every file
            if command == "put_file_to_cache":
                cached = f"//tmp/yt_wrapper/file_storage/new_cache/{params.get('md5')}"
                self.files[cached] = self.files.get(path, b"")
                return cached
            if command == "start_operation":
                self.operations.append({"operation_type": params.get("operation_type"), "spec": params.get("spec")})
                return {"operation_id": self._new_id()}
            if command == "get_operation":
                return {"state": "running", "id": params.get("operation_id"), "start_time": "2026-11-25T12:00:00.000000Z"}
            return None

    def _exists(self, path: str) -> bool:
        base = path.split("/@", 1)[0]
        return base in self.nodes or base in ("/", "//tmp", "//sys")

    def _get(self, path: str) -> Any:
        if path == "//sys/@cluster_name":
            return "envpin-fake"
        if "/@" in path:
            base, attribute = path.split("/@", 1)
            node = self.nodes.get(base, {})
            if attribute and attribute not in node:
                raise ResolveError(f"Error resolving path {path}: attribute {attribute!r} not found")
            return node.get(attribute) if attribute else node
        return {}

    # --- HTTP ------------------------------------------------------------------------------

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding") == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _params(self, body: bytes, volatile_body: bool) -> dict[str, Any]:
                raw = self.headers.get("X-YT-Parameters")
                if raw is None and volatile_body:
                    raw = body.decode()
                if not raw:
                    return {}
                if "yson" in (self.headers.get("X-YT-Header-Format") or ""):
                    return _plain(yt.yson.loads(raw.encode()))
                return _plain(json.loads(raw))

            def _reply(self, payload: Any) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                body = self._body()
                path = self.path.split("?", 1)[0]
                if path == "/api":
                    return self._reply(["v4"])
                if path == "/api/v4":
                    return self._reply([
                        {"name": name, "input_type": i or "null", "output_type": o or "null",
                         "is_volatile": v, "is_heavy": h}
                        for name, (i, o, v, h) in COMMANDS.items()
                    ])
                if path in ("/hosts", "/api/v4/discover_proxies"):
                    return self._reply([f"127.0.0.1:{proxy._server.server_address[1]}"])
                command = path.rsplit("/", 1)[1]
                if command not in COMMANDS:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                input_type, _, volatile, _ = COMMANDS[command]
                try:
                    params = self._params(body, volatile and input_type is None)
                    result = proxy.run(command, params, body if input_type else b"")
                except ResolveError as exc:
                    data = json.dumps({"code": 500, "message": str(exc)}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                except Exception as exc:  # a fake's bug must fail the test fast, not hang the client
                    proxy.errors.append(f"{command}: {exc!r}")
                    data = json.dumps({"code": 1, "message": f"fake proxy: {exc!r}"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-YT-Response-Code", "1")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._reply(result)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args) -> None:
                pass

        return Handler
