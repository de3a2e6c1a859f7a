"""The REST endpoints of envpin's JupyterLab extension, under ``/envpin/api/`` (see ``envpin_provisioner.lab``).

A new way into the server, so each request is treated as hostile until checked:

* authenticated and authorized like Jupyter's own kernel API (the server's
  token or login cookie, XSRF on POST, the ``kernels`` resource: ``read`` to
  look, ``execute`` to move, since a move runs a magic in the kernel);
* a kernel id in a path is a UUID (the route's pattern) of a kernel *this*
  server's kernel manager holds, else 404: no other server's or user's kernel
  is ever looked up, and no path is built from a request;
* a POST body is a JSON object of at most ``MAX_BODY`` bytes with known keys
  only, each of its type (``image``: ``ui_moves.IMAGE_NAME``); anything else
  is a 400 naming the problem, before anything happens.  The body is not
  even read before the request is authenticated and its declared length
  checked (``MoveHandler.prepare``): a stranger cannot make the server hold
  megabytes;
* the work is bounded: reports read the provisioner's memory (the one engine
  call, the image's Python, is asked once per image, ``report.ImageFacts``,
  and a request waits for it ``FACTS_WAIT`` seconds at most); the image list
  is one engine call at a time, off the event loop, cached ``IMAGES_TTL``,
  given up after ``ENGINE_TIMEOUT``, capped; one move per kernel and
  ``ui_moves.MAX_MOVES`` per server at once;
* answers never carry a connection key or a channel folder, and every string
  a kernel, a pin file or an image wrote is escaped to one line and cut (the
  page shows them as text, never as HTML).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from envpin import printable
from envpin_provisioner import engine
from envpin_provisioner.images import start_pulls
from envpin_provisioner.lab import report
from envpin_provisioner.lab.ui_moves import IMAGE_NAME, MAX_MOVES, UiMoves

#: The route's kernel id: a UUID as jupyter_server makes them (lowercase hex and dashes).
KERNEL_ID = r"(?P<kernel_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
#: A move request is a few dozen bytes.
MAX_BODY = 4096
AUTH_RESOURCE = "kernels"
#: Seconds a report waits for its image's Python (asked once per image); after that it says ``probing``.
FACTS_WAIT = 3.0
#: Seconds the engine has to list its images before the request is answered 503.
ENGINE_TIMEOUT = 30.0


class LabState:
    """What the extension keeps per server: the images' facts and the moves pages asked for."""

    #: Seconds an image list is reused: a page that asks in a loop costs one engine call per this.
    IMAGES_TTL = 2.0

    def __init__(self) -> None:
        self.facts = report.ImageFacts()
        self.moves = UiMoves()
        self._images: dict[tuple[str, ...], tuple[float, dict]] = {}  #: (engine, *patterns) -> (when, listing)
        self._images_lock = asyncio.Lock()

    async def images(self, patterns: list[str], address: str = "") -> dict:
        """The choosable images for ``patterns`` on engine ``address`` (a kernel's; "" for the default one).

        Listed at most once per ``IMAGES_TTL`` per engine and patterns, one engine call at a time:
        requests that arrive together wait for it and share its answer.  A kernel moves within its own
        engine, so a kernel on another machine is offered that machine's images.
        """
        key = (address, *patterns)
        async with self._images_lock:
            cached = self._images.get(key)
            if cached is None or time.monotonic() - cached[0] >= self.IMAGES_TTL:
                client = (await engine.call(engine.shared, address or None)).client
                listed = await asyncio.wait_for(
                    engine.call(report.choosable_images, client, list(patterns)), ENGINE_TIMEOUT
                )
                if len(self._images) > 64:  # one entry per distinct allowed_images: bounded all the same
                    self._images.clear()
                cached = self._images[key] = (time.monotonic(), listed)
        return json.loads(json.dumps(cached[1]))


def envpin_provisioner(km: Any) -> Any | None:
    """The EnvpinProvisioner of kernel manager ``km``, None when envpin does not run that kernel."""
    from envpin_provisioner.provisioner import EnvpinProvisioner

    provisioner = getattr(km, "provisioner", None)
    return provisioner if isinstance(provisioner, EnvpinProvisioner) else None


class _Base(APIHandler):
    auth_resource = AUTH_RESOURCE

    @property
    def lab(self) -> LabState:
        return self.settings["envpin_lab"]

    def _kernel(self, kernel_id: str) -> Any:
        """The kernel manager of ``kernel_id`` on this server; 404 for any other id."""
        mkm = self.kernel_manager
        if kernel_id not in mkm:
            raise web.HTTPError(404, f"No kernel {kernel_id} on this server.")
        return mkm.get_kernel(kernel_id)

    async def _report(self, kernel_id: str, km: Any, wait: float = FACTS_WAIT) -> dict:
        provisioner = envpin_provisioner(km)
        if provisioner is None:
            return {"kernel_id": kernel_id, "envpin": False}
        facts = await self.lab.facts.of(provisioner, wait)
        choice = provisioner.choice  # read after the wait: a restart may have changed it meanwhile
        probing = choice is not None and self.lab.facts.probing(choice.resolved.id)
        out = report.kernel_report(kernel_id, provisioner, facts, probing)
        move = self.lab.moves.by_kernel.get(kernel_id)
        out["ui_move"] = move.as_dict() if move is not None else None
        return out

    def _json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))


class KernelsHandler(_Base):
    """``GET /envpin/api/kernels``: the reports of every kernel envpin runs for this server."""

    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        mkm = self.kernel_manager
        ids = list(mkm.list_kernel_ids())
        self.lab.moves.forget(set(ids))
        out = []
        for kid in ids:
            try:
                km = mkm.get_kernel(kid)
            except KeyError:  # shut down meanwhile
                continue
            if envpin_provisioner(km) is not None:
                out.append(await self._report(kid, km, wait=0))  # one request never waits on many probes
        self._json({"kernels": out})


class KernelHandler(_Base):
    """``GET /envpin/api/kernels/ID``: one kernel's report (``{"envpin": false}`` for a kernel envpin does not run)."""

    @web.authenticated
    @authorized(action="read")
    async def get(self, kernel_id: str) -> None:
        self._json(await self._report(kernel_id, self._kernel(kernel_id)))


class ImagesHandler(_Base):
    """``GET /envpin/api/kernels/ID/images``: the images on the engine this kernel may move to."""

    @web.authenticated
    @authorized(action="read")
    async def get(self, kernel_id: str) -> None:
        provisioner = envpin_provisioner(self._kernel(kernel_id))
        if provisioner is None:
            raise web.HTTPError(404, f"Kernel {kernel_id} is not run by envpin.")
        try:
            listed = await self.lab.images(list(provisioner.allowed_images), provisioner.engine)
        except engine.ENGINE_ERRORS as exc:
            raise web.HTTPError(
                503, f"The Docker engine did not list its images: {printable.one_line(exc, 300)}"
            ) from None
        except asyncio.TimeoutError:
            raise web.HTTPError(
                503, f"The Docker engine did not list its images within {ENGINE_TIMEOUT:.0f} s; try again."
            ) from None
        choice = provisioner.choice
        listed["current"] = printable.one_line(choice.name, 300) if choice is not None else None
        listed["pinned"] = bool(choice is not None and choice.pinned)
        self._json(listed)


class PullsHandler(_Base):
    """``GET /envpin/api/pulls``: the pulls kernel starts of this server are waiting for, and those just ended.

    A start has no kernel to report on until it ends; the page asks this while
    one of its notebooks waits for a kernel (``images.start_pulls``: memory only, bounded).
    """

    @web.authenticated
    @authorized(action="read")
    async def get(self) -> None:
        self._json(start_pulls.report())


def parse_move(body: bytes) -> tuple[str, bool, bool]:
    """(image, restart, pull) from a move request's body; ``web.HTTPError(400)`` naming the first problem."""
    if len(body) > MAX_BODY:
        raise web.HTTPError(400, f"A move request is at most {MAX_BODY} bytes.")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise web.HTTPError(400, "A move request is a JSON object.") from None
    if not isinstance(data, dict):
        raise web.HTTPError(400, "A move request is a JSON object.")
    unknown = sorted(str(k)[:40] for k in set(data) - {"image", "restart", "pull"})
    if unknown:
        raise web.HTTPError(400, f"Unknown field(s) in the move request: {', '.join(map(repr, unknown[:5]))}.")
    image = data.get("image")
    if not isinstance(image, str) or not IMAGE_NAME.match(image):
        raise web.HTTPError(
            400,
            "'image' must be an image reference, id or alias (letters, digits and ._:/@+-, no '..' or '//', "
            "at most 300).",
        )
    flags = []
    for key in ("restart", "pull"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise web.HTTPError(400, f"'{key}' must be true or false.")
        flags.append(value)
    return image, flags[0], flags[1]


@web.stream_request_body
class MoveHandler(_Base):
    """``POST /envpin/api/kernels/ID/move`` ``{"image", "restart", "pull"}``: run ``%use_image`` in the kernel.

    Answers 202 at once; the outcome is the kernel report's ``ui_move``.

    The body is streamed to this handler (``web.stream_request_body``) so that
    nothing of it is read before ``prepare`` has authenticated the request
    (token or cookie, XSRF) and checked its declared length; what arrives
    beyond ``MAX_BODY`` anyway is dropped, and the request refused.
    """

    _body: bytearray
    _too_big = False
    _read = False  #: the body was read (to its end): until then an answer closes the connection

    async def prepare(self) -> None:  # type: ignore[override]
        self._body = bytearray()
        await super().prepare()  # the server's own checks: host, user, XSRF on POST, origin
        if self._finished:
            return
        if self.current_user is None:
            raise web.HTTPError(403)
        length = self.request.headers.get("Content-Length")
        if length is None:
            raise web.HTTPError(411, "A move request says its length (Content-Length).")
        if not length.isdigit() or int(length) > MAX_BODY:
            raise web.HTTPError(413, f"A move request is at most {MAX_BODY} bytes.")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self._read:  # refused before its body was read: the connection cannot carry another request
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    def data_received(self, chunk: bytes) -> None:
        if self._too_big or len(self._body) + len(chunk) > MAX_BODY:
            self._too_big = True
            return
        self._body += chunk

    @web.authenticated
    @authorized(action="execute")
    async def post(self, kernel_id: str) -> None:
        self._read = True
        if self._too_big:
            raise web.HTTPError(413, f"A move request is at most {MAX_BODY} bytes.")
        image, restart, pull = parse_move(bytes(self._body))
        km = self._kernel(kernel_id)
        provisioner = envpin_provisioner(km)
        if provisioner is None:
            raise web.HTTPError(404, f"Kernel {kernel_id} is not run by envpin: it has no image to change.")
        if provisioner.mover is None:
            raise web.HTTPError(
                409, "This kernel cannot move between images (it has no control channel: transport is not ipc)."
            )
        moves = self.lab.moves
        if moves.running(kernel_id) or provisioner.mover.activity.current is not None:
            raise web.HTTPError(409, "This kernel is already moving; wait for that move to end.")
        if getattr(km, "execution_state", "idle") != "idle":
            raise web.HTTPError(
                409,
                "The kernel is busy running a cell; a move would wait behind it. Let the cell finish (or "
                "interrupt it), then move.",
            )
        if moves.in_flight() >= MAX_MOVES:
            raise web.HTTPError(429, f"{MAX_MOVES} moves are already in flight on this server; try again shortly.")
        move = moves.start(kernel_id, km, provisioner, image, restart, pull)
        self._json({"ui_move": move.as_dict()}, status=202)


def handlers(base_url: str) -> list[tuple[str, type]]:
    from jupyter_server.utils import url_path_join

    api = url_path_join(base_url, "envpin", "api")
    return [
        (url_path_join(api, "kernels") + "/?", KernelsHandler),
        (url_path_join(api, "pulls") + "/?", PullsHandler),
        (url_path_join(api, "kernels", KERNEL_ID) + "/?", KernelHandler),
        (url_path_join(api, "kernels", KERNEL_ID, "images") + "/?", ImagesHandler),
        (url_path_join(api, "kernels", KERNEL_ID, "move") + "/?", MoveHandler),
    ]
