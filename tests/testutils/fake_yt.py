"""A fake YTsaurus cluster: its HTTP proxy, scheduler and storage faked; its jobs run for real.

What is fake: the server side.  The test drives the real ``yt.wrapper``
client, which builds the operation spec, pickles the job, uploads the files
and sends ``start_operation`` exactly as it would to a cluster; this server
answers the commands that takes (API discovery, a tiny in-memory Cypress and
table storage, transactions, file upload and cache, batches, operation and
job status, job stderr) and records every ``start_operation`` spec.

What is real, with ``FakeYtProxy(exec_node=docker_client)``: the jobs.  A
fake *exec node* (``ExecNode``) runs each user job of each operation (map,
reduce, map-reduce, vanilla) the way a YTsaurus exec node does: the job's
``command`` in a container of the job's ``docker_image``, in a sandbox holding
the job's ``file_paths`` (under their ``file_name``, executable when asked),
with the spec's ``environment`` plus ``YT_OPERATION_ID``, ``YT_JOB_ID``,
``YT_JOB_INDEX`` and ``YT_JOB_DOCKER_IMAGE`` (set from the spec, as the real
exec node does), the input rows on stdin in the job's format, output table k
on file descriptor 3k+1 (stdout for table 0), statistics on fd 5.  A job that
fails fails its operation, with its stderr, as the client reports it.  The
containers share the host's network, so a job reaches this proxy on
127.0.0.1 (nested operations).  Formats: JSON (``yt.JsonFormat()``): the
images need no YSON bindings.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import shutil
import tempfile
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
    "abort_operation": (None, None, True, False),
    "write_table": ("tabular", None, True, True),
    "read_table": (None, "tabular", False, True),
    "list_jobs": (None, "structured", False, False),
    "get_job_stderr": (None, "binary", False, True),
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

    def __init__(self, exec_node: Any = None, default_image: str = "envpin-test/py313:latest") -> None:
        """``exec_node``: a Docker client to run the operations' jobs with (None: record specs only).

        ``default_image``: the image a job without ``docker_image`` runs in, as a
        cluster's default image (here another Python than the notebook's).
        """
        self.exec_node = ExecNode(self, exec_node, default_image) if exec_node is not None else None
        self.tables: dict[str, list[dict[str, Any]]] = {}  #: table path -> rows
        self.ids: dict[str, str] = {}  #: node id -> path
        self.states: dict[str, dict[str, Any]] = {}  #: operation id -> {"state", "error", "jobs"}
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

    def __enter__(self) -> FakeYtProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the commands ----------------------------------------------------------------------

    def _new_id(self) -> str:
        return f"{next(self._ids)}-2-3-4"

    def run(self, command: str, params: dict[str, Any], body: bytes, raw: Any = None) -> Any:
        self.commands.append(command)
        path = str(params.get("path", ""))
        with self._lock:
            if command == "execute_batch":
                return {
                    "results": [
                        {"output": self.run(str(r["command"]), _plain(r.get("parameters", {})), b"")}
                        for r in params["requests"]
                    ]
                }
            if command == "exists":
                return {"value": self._exists(path)}
            if command == "get":
                value = self._get(path)
                return value if params.get("return_only_value") else {"value": value}
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
                self.files[path] = _decompress(body)
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
                op_id = self._new_id()
                if self.exec_node is not None:
                    self.states[op_id] = {"state": "running", "jobs": []}
                    raw_spec = (raw or {}).get("spec", params.get("spec"))
                    self.exec_node.start(op_id, str(params.get("operation_type")), raw_spec)
                return {"operation_id": op_id}
            if command == "get_operation":
                op_id = str(params.get("operation_id"))
                state = self.states.get(op_id, {"state": "running"})
                out = {"state": state["state"], "id": op_id, "start_time": "2026-11-25T12:00:00.000000Z",
                       "brief_progress": {}, "progress": {}, "alerts": {}}  # fmt: skip
                if state.get("error"):
                    out["result"] = {"error": state["error"]}
                return out
            if command == "abort_operation":
                self.states.setdefault(str(params.get("operation_id")), {})["state"] = "aborted"
                return None
            if command == "write_table":
                table = _table_path(raw.get("path") if raw else path)
                rows = _decode_rows(_decompress(body), params.get("input_format"))
                self.tables[table.path] = (self.tables.get(table.path, []) if table.append else []) + rows
                self.nodes.setdefault(table.path, {"type": "table"}).pop("sorted_by", None)
                return None
            if command == "read_table":
                rows = self.tables.get(self._resolve(_table_path(path).path), [])
                return _Stream(
                    _encode_rows(rows, params.get("output_format")),
                    {"start_row_index": 0, "approximate_row_count": len(rows)},
                )
            if command == "list_jobs":
                state = self.states.get(str(params.get("operation_id")), {})
                jobs = [{k: v for k, v in j.items() if not k.startswith("_")} for j in state.get("jobs", [])
                        if params.get("job_state") in (None, j["state"])]  # fmt: skip
                return {"jobs": jobs, "cypress_job_count": len(jobs), "errors": []}
            if command == "get_job_stderr":
                state = self.states.get(str(params.get("operation_id")), {})
                job = next((j for j in state.get("jobs", []) if j["id"] == params.get("job_id")), None)
                return (job or {}).get("_stderr", b"")
            return None

    def _node_id(self, path: str) -> str:
        """A stable id for a node; ``#id`` paths (the client reads a locked table by id) resolve back."""
        node_id = f"0-0-{zlib.crc32(path.encode())}-191"
        self.ids[node_id] = path
        return node_id

    def _resolve(self, path: str) -> str:
        return self.ids.get(path[1:], path) if path.startswith("#") else path

    def _exists(self, path: str) -> bool:
        base = path.split("/@", 1)[0]
        return base in self.nodes or base in ("/", "//tmp", "//sys")

    def _get(self, path: str) -> Any:
        if path == "//sys/@cluster_name":
            return "envpin-fake"
        if "/@" in path:
            base, attribute = path.split("/@", 1)
            node = self.nodes.get(base, {})
            if node.get("type") == "table":  # what a table reports about itself
                rows = self.tables.get(base, [])
                node = {"id": self._node_id(base), "row_count": len(rows),
                        "chunk_count": 1 if rows else 0, "dynamic": False,
                        "sorted": bool(node.get("sorted_by")), "compression_codec": "none", "erasure_codec": "none",
                        **node}  # fmt: skip
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

            def _params(self, body: bytes, volatile_body: bool) -> tuple[dict[str, Any], Any]:
                """The parameters, plain, and as parsed (YSON keeps the attributes of file paths)."""
                raw = self.headers.get("X-YT-Parameters")
                if raw is None and volatile_body:
                    raw = body.decode()
                if not raw:
                    return {}, {}
                if "yson" in (self.headers.get("X-YT-Header-Format") or ""):
                    parsed = yt.yson.loads(raw.encode())
                else:
                    parsed = json.loads(raw)
                return _plain(parsed), parsed

            def _reply(self, payload: Any) -> None:
                if isinstance(payload, (bytes, _Stream)):  # tabular or binary output (read_table, get_job_stderr)
                    self.send_response(200)
                    if isinstance(payload, _Stream):
                        if "yson" in (self.headers.get("X-YT-Header-Format") or ""):
                            self.send_header("X-YT-Response-Parameters", yt.yson.dumps(payload.parameters).decode())
                        else:
                            self.send_header("X-YT-Response-Parameters", json.dumps(payload.parameters))
                        payload = payload.data
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
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
                    return self._reply(
                        [
                            {
                                "name": name,
                                "input_type": i or "null",
                                "output_type": o or "null",
                                "is_volatile": v,
                                "is_heavy": h,
                            }
                            for name, (i, o, v, h) in COMMANDS.items()
                        ]
                    )
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
                    params, raw = self._params(body, volatile and input_type is None)
                    result = proxy.run(command, params, body if input_type else b"", raw)
                except ResolveError as exc:
                    data = json.dumps({"code": 500, "message": str(exc)}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                except Exception as exc:  # a fake's bug must fail the test fast, not hang the client
                    import traceback

                    proxy.errors.append(f"{command}: {exc!r}\n{traceback.format_exc()}")
                    data = json.dumps({"code": 1, "message": f"fake proxy: {exc!r}"}).encode()
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-YT-Response-Code", "1")
                    self.send_header("X-YT-Error", data.decode())
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._reply(result)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args) -> None:
                pass

        return Handler


def _decompress(body: bytes) -> bytes:
    """Bodies as the client sends them: gzip, zlib ("deflate") or plain."""
    if body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    if body[:1] == b"\x78":
        return zlib.decompress(body)
    return body


# --- tables -------------------------------------------------------------------------------------


class _Stream:
    """Heavy output with response parameters (``X-YT-Response-Parameters``), as read_table answers."""

    def __init__(self, data: bytes, parameters: dict[str, Any]):
        self.data, self.parameters = data, parameters


class _TablePath:
    def __init__(self, path: str, append: bool):
        self.path, self.append = path, append


def _table_path(value: Any) -> _TablePath:
    """A table path as the client sends it: a string, maybe with ``<append=%true>`` attributes."""
    attributes = getattr(value, "attributes", None) or {}
    if isinstance(value, dict) and "$value" in value:  # JSON header format
        attributes, value = value.get("$attributes", {}), value["$value"]
    text = _plain(value)
    append = bool(attributes.get("append"))
    if text.startswith("<"):  # attributes written into the string: <append=%true>//tmp/t
        append = append or "append=%true" in text.split(">", 1)[0]
        text = text.split(">", 1)[1]
    return _TablePath(text, append)


def _format_name(fmt: Any) -> str:
    fmt = _plain(fmt)
    if isinstance(fmt, dict):
        fmt = fmt.get("$value", "")
    return str(fmt or "json")


def _decode_rows(data: bytes, fmt: Any) -> list[dict[str, Any]]:
    if _format_name(fmt) != "json":
        raise ValueError(f"the fake cluster stores JSON rows only (format {_format_name(fmt)!r}): use yt.JsonFormat()")
    text, rows, decoder, at = data.decode(), [], json.JSONDecoder(), 0
    while True:  # rows one after another, with or without a newline between them
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
        if at >= len(text):
            return rows
        row, at = decoder.raw_decode(text, at)
        rows.append(row)


def _encode_rows(rows: list[dict[str, Any]], fmt: Any) -> bytes:
    if _format_name(fmt) != "json":
        raise ValueError(f"the fake cluster serves JSON rows only (format {_format_name(fmt)!r}): use yt.JsonFormat()")
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# --- the exec node --------------------------------------------------------------------------------


class JobFailed(Exception):
    def __init__(self, message: str, stderr: bytes):
        super().__init__(message)
        self.stderr = stderr


class ExecNode:
    """Runs each operation's user jobs for real, in containers of the job's image (see the module docstring)."""

    LABEL = "envpin-test.role"

    def __init__(self, proxy: FakeYtProxy, docker_client: Any, default_image: str):
        self.proxy = proxy
        self.docker = docker_client
        self.default_image = default_image
        self.jobs_run: list[dict[str, Any]] = []  #: {"operation_id", "image", "command", "env"} per job, in order
        self._job_ids = itertools.count(1)

    def start(self, op_id: str, op_type: str, spec: Any) -> None:
        threading.Thread(target=self._operation, args=(op_id, op_type, spec), daemon=True).start()

    def _operation(self, op_id: str, op_type: str, spec: Any) -> None:
        state = self.proxy.states[op_id]
        try:
            plain = _plain(spec)
            if op_type == "sort":  # no user job: the fake scheduler sorts by itself
                key = plain.get("sort_by") or []
                key = [key] if isinstance(key, str) else key
                rows = [
                    r
                    for p in plain.get("input_table_paths") or []
                    for r in self.proxy.tables.get(_table_path(p).path, [])
                ]
                out = _table_path(spec["output_table_path"]).path
                self.proxy.tables[out] = sorted(rows, key=lambda r: [json.dumps(r.get(k)) for k in key])
                self.proxy.nodes.setdefault(out, {"type": "table"})["sorted_by"] = key
            elif op_type == "vanilla":
                for name, task in (spec.get("tasks") or {}).items():
                    outputs = [_table_path(p).path for p in task.get("output_table_paths") or []]
                    for index in range(int(task.get("job_count", 1))):
                        self._job(op_id, task, [], index, outputs, job_type=str(name))
            else:
                rows = [
                    r
                    for p in plain.get("input_table_paths") or []
                    for r in self.proxy.tables.get(_table_path(p).path, [])
                ]
                outputs = [_table_path(p).path for p in spec.get("output_table_paths") or []]
                key = plain.get("reduce_by") or plain.get("sort_by") or []
                key = [key] if isinstance(key, str) else key
                if op_type in ("map", "map_reduce") and spec.get("mapper"):
                    mapped_to = outputs if op_type == "map" else ["<intermediate>"]
                    rows = self._job(op_id, spec["mapper"], rows, 0, mapped_to, job_type="map")[0]
                if op_type in ("reduce", "map_reduce"):
                    rows = sorted(rows, key=lambda r: [json.dumps(r.get(k)) for k in key])
                    if _key_switch_enabled(plain):  # a control row between groups, as the exec node sends it
                        grouped: list = []
                        for i, row in enumerate(rows):
                            if i and [row.get(k) for k in key] != [rows[i - 1].get(k) for k in key]:
                                grouped.append({"$attributes": {"key_switch": True}, "$value": None})
                            grouped.append(row)
                        rows = grouped
                    self._job(op_id, spec["reducer"], rows, 0, outputs, job_type="reduce")
            state["state"] = "completed"
        except JobFailed as exc:
            state["error"] = {
                "code": 1,
                "message": f"Operation has failed: {exc}",
                "attributes": {},
                "inner_errors": [],
            }
            state["state"] = "failed"
        except Exception as exc:  # the fake's own failure: the operation fails with it, the test sees it
            state["error"] = {"code": 1, "message": f"fake exec node: {exc!r}", "attributes": {}, "inner_errors": []}
            state["state"] = "failed"

    def _job(self, op_id: str, job: Any, rows: list, index: int, outputs: list[str], job_type: str) -> list[list]:
        """Run one user job; store its output rows in ``outputs`` (and return them)."""
        import docker.errors

        plain = _plain(job)
        job_id = f"{next(self._job_ids)}-0-0-{index}"
        image = plain.get("docker_image") or self.default_image
        env = {str(k): str(v) for k, v in (plain.get("environment") or {}).items()}
        env.update(YT_OPERATION_ID=op_id, YT_JOB_ID=job_id, YT_JOB_INDEX=str(index), YT_JOB_DOCKER_IMAGE=image)
        record = {"operation_id": op_id, "job_id": job_id, "type": job_type, "image": image,
                  "command": plain["command"], "env": env}  # fmt: skip
        self.jobs_run.append(record)
        info = {"id": job_id, "type": job_type, "state": "running", "address": "fake-exec-node"}
        self.proxy.states[op_id]["jobs"].append(info)
        sandbox = tempfile.mkdtemp(prefix="fake-yt-job-")
        try:
            for entry in job.get("file_paths") or []:
                attributes = getattr(entry, "attributes", None) or {}
                path = _plain(entry)
                name = _plain(attributes.get("file_name")) or path.rsplit("/", 1)[-1]
                target = os.path.join(sandbox, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as fh:
                    fh.write(self.proxy.files[path])
                if attributes.get("executable"):
                    os.chmod(target, 0o755)
            fmt_in = plain.get("input_format") or "json"
            with open(os.path.join(sandbox, ".stdin"), "wb") as fh:
                fh.write(_encode_rows(rows, fmt_in) if rows else b"")
            fds = " ".join(f"{3 * k + 1 if k else 1}>.out{k}" for k in range(max(1, len(outputs))))
            script = f"exec 5>.stats; ( {plain['command']} ) <.stdin {fds} 2>.stderr"
            container = self.docker.containers.run(
                image, ["bash", "-c", script], detach=True, environment=env, working_dir="/slot/sandbox",
                volumes={sandbox: {"bind": "/slot/sandbox", "mode": "rw"}}, network_mode="host",
                labels={self.LABEL: "yt-job", "envpin-test.operation": op_id},
            )  # fmt: skip
            try:
                code = container.wait(timeout=600)["StatusCode"]
            finally:
                try:
                    container.remove(force=True)
                except docker.errors.NotFound:
                    pass
            stderr = _read(os.path.join(sandbox, ".stderr"))
            info["_stderr"] = stderr
            record["stderr"] = stderr.decode(errors="replace")
            if code != 0:
                info["state"] = "failed"
                info["error"] = {"code": 1, "message": f"Process exited with code {code}", "attributes": {}}
                tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
                raise JobFailed(f"{job_type} job {job_id} in {image} exited with code {code}: {tail[0]}", stderr)
            info["state"] = "completed"
            fmt_out = plain.get("output_format") or "json"
            produced = [
                _decode_rows(_read(os.path.join(sandbox, f".out{k}")), fmt_out) for k in range(max(1, len(outputs)))
            ]
            for path, out_rows in zip(outputs, produced, strict=False):
                if path != "<intermediate>":
                    self.proxy.tables[path] = out_rows
                    self.proxy.nodes.setdefault(path, {"type": "table"}).pop("sorted_by", None)
            return produced
        finally:
            shutil.rmtree(sandbox, ignore_errors=True)


def _key_switch_enabled(spec: dict[str, Any]) -> bool:
    return any(
        ((spec.get(io) or {}).get("control_attributes") or {}).get("enable_key_switch")
        for io in ("job_io", "reduce_job_io", "sort_job_io", "map_job_io")
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return b""
