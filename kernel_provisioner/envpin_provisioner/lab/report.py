"""What the JupyterLab extension is told about a kernel, and which images it may offer: built here, nowhere else.

A report says what envpin knows of one kernel of *this* server: the image
as written, the reference and id it resolved to, where the image came from
(the kernelspec, the notebook's pin file, a ``%use_image`` request), whether
the container was taken warm, the Python and pickler inside the image, and
the move or pull going on.  It never carries the connection file, the key,
the channel folder or a path of the server's own: nothing a page needs,
nothing to leak (its notes may name the notebook folder's pin file, the
user's own file, as the kernel's first output does).

The Python and pickler are the image's, asked of the image itself once (a
short-lived probe container on the kernel's own engine, without network or
mounts, so it works on a remote engine too) and kept by image id for the server's life: an id names one
content.  What the probe prints is the image's word, so only values shaped
like versions are kept.  Probes run one at a time, off the event loop, and a
failed one is not retried for a minute: a page polling a broken image cannot
make the server start containers in a loop.  A request waits for a probe a
few seconds at most (``ImageFacts.of``); its report then says ``probing``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from typing import TYPE_CHECKING, Any

from envpin import printable
from envpin.host import images as host_images
from envpin.images import allowlist
from envpin_provisioner import engine
from envpin_provisioner.errors import EnvpinError

if TYPE_CHECKING:
    from envpin.host.images import ResolvedImage
    from envpin_provisioner.provisioner import EnvpinProvisioner

#: The probe: the image's Python and its picklers, as JSON on one line; stdlib only, so any Python answers.
PROBE = (
    "import json, platform\n"
    "from importlib import metadata\n"
    "def v(d):\n"
    "    try: return metadata.version(d)\n"
    "    except Exception: return None\n"
    "print(json.dumps({'python': platform.python_version(), 'cloudpickle': v('cloudpickle'), 'dill': v('dill')}))\n"
)
_VERSION = re.compile(r"^[0-9]{1,4}(\.[0-9A-Za-z+-]{1,16}){0,4}$")
#: Seconds before a failed probe of an image is tried again.
RETRY_AFTER = 60.0
#: Seconds a probe container may run: an image whose Python does not answer by then is asked again later.
PROBE_TIMEOUT = 30
#: The probe's answer is one short line of JSON: what is longer is not read further.
MAX_PROBE_LINE = 4096
#: At most this many images are listed (an engine with thousands of tags answers with the first ones, sorted).
MAX_IMAGES = 500


def _version(value: Any) -> str | None:
    return value if isinstance(value, str) and _VERSION.match(value) else None


class ImageFacts:
    """The Python and pickler of each image id, probed once per server (see the module's docstring).

    A report never waits on a probe longer than the caller allows: the probe
    runs as a task of its own (one at a time, one per image), and a report
    asked meanwhile says ``probing`` and is asked again by the page.  So an
    image whose Python is slow to answer (or never does, up to ``PROBE_TIMEOUT``)
    holds up no request, and a page polling it starts no second container.
    """

    def __init__(self) -> None:
        self._known: dict[str, dict[str, str | None]] = {}
        self._failed: dict[str, float] = {}
        self._probing: dict[str, asyncio.Task] = {}
        self._lock = asyncio.Lock()

    def known(self, image_id: str) -> dict[str, str | None] | None:
        return self._known.get(image_id)

    def probing(self, image_id: str) -> bool:
        return image_id in self._probing

    async def of(self, provisioner: EnvpinProvisioner, wait: float = 0.0) -> dict[str, str | None] | None:
        """The facts of the image ``provisioner``'s kernel runs in; None when not known (yet) or it will not say.

        ``wait``: seconds this caller waits for a probe it started or found running (it goes on regardless).
        """
        choice = provisioner.choice
        if choice is None:
            return None
        image = choice.resolved
        if image.id in self._known:
            return self._known[image.id]
        if time.monotonic() - self._failed.get(image.id, -RETRY_AFTER) < RETRY_AFTER:
            return None
        task = self._probing.get(image.id)
        if task is None:
            task = asyncio.ensure_future(self._probe(image, provisioner.engine, provisioner.python, provisioner.log))
            self._probing[image.id] = task
            task.add_done_callback(functools.partial(self._done, image.id))
        if wait > 0:
            try:
                await asyncio.wait_for(asyncio.shield(task), wait)
            except asyncio.TimeoutError:
                pass
        return self._known.get(image.id)

    def _done(self, image_id: str, _task: asyncio.Task) -> None:
        self._probing.pop(image_id, None)

    async def _probe(self, image: ResolvedImage, address: str, python: str, log: Any) -> None:
        """Ask the image on the engine its kernel runs on (``address``, the kernelspec's; "" for the default)."""
        async with self._lock:  # one probe container at a time, however many images and pages ask
            try:
                client = (await engine.call(engine.shared, address or None)).client
                out = await engine.call(host_images.run_python, client, image, PROBE, PROBE_TIMEOUT, python, 2)
                data = json.loads(out.strip().splitlines()[-1][:MAX_PROBE_LINE])
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except (*engine.ENGINE_ERRORS, EnvpinError, ValueError, IndexError) as exc:
                self._failed[image.id] = time.monotonic()
                log.info("envpin: could not ask image %s for its Python: %s", image.name, printable.one_line(exc, 300))
                return
            self._known[image.id] = {key: _version(data.get(key)) for key in ("python", "cloudpickle", "dill")}


def _pickler(facts: dict[str, str | None] | None) -> str | None:
    if not facts:
        return None
    if facts.get("cloudpickle"):
        return f"cloudpickle {facts['cloudpickle']}"
    if facts.get("dill"):
        return f"dill {facts['dill']}"
    return "none installed"


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def kernel_report(
    kernel_id: str, provisioner: EnvpinProvisioner, facts: dict[str, str | None] | None, probing: bool = False
) -> dict:
    """The report of one envpin kernel (see the module's docstring); no engine call, no file read.

    ``probing``: the image's Python is being asked for (the page asks again for it).  Every string that
    came from a kernel, a pin file or an image is escaped to one line and cut (``printable.one_line``).
    """
    choice = provisioner.choice
    mover = provisioner.mover
    report: dict[str, Any] = {"kernel_id": kernel_id, "envpin": True, "ready": choice is not None}
    if choice is not None:
        image = choice.resolved
        report.update(
            image=printable.one_line(choice.name, 300),
            reference=printable.one_line(image.reference, 300),
            image_id=image.immutable,
            local_id=image.id,
            short_id=_short(image.id),
            source=choice.source,
            pinned=choice.pinned,
            # the tooltip's lines: a moved tag, and which pin decided the image (from where, how to change it)
            notes=[printable.one_line(n, 600) for n in [*choice.notes, *choice.first_output()][:5]],
        )
    report.update(
        probing=probing and facts is None,
        python=(facts or {}).get("python"),
        pickler=_pickler(facts),
        pooled=provisioner.started_warm,
        container=provisioner.container_short_id,
        movable=mover is not None,
        activity=mover.activity.current.as_dict() if mover is not None and mover.activity.current else None,
        last=mover.activity.last.as_dict() if mover is not None and mover.activity.last else None,
    )
    return report


def choosable_images(client: Any, patterns: list[str]) -> dict[str, Any]:
    """The tagged images on the engine that ``patterns`` (a kernel's ``allowed_images``) let it run.  Blocking."""
    found: list[dict[str, Any]] = []
    truncated = False
    for image in client.images.list():
        for tag in image.attrs.get("RepoTags") or []:
            if not isinstance(tag, str) or tag.startswith("<none>") or not allowlist.allowed(tag, patterns):
                continue
            found.append(
                {
                    "reference": printable.one_line(tag, 300),
                    "image_id": image.id,
                    "short_id": _short(image.id),
                    "size": int(image.attrs.get("Size") or 0),
                    "created": str(image.attrs.get("Created") or "")[:32],
                }
            )
    found.sort(key=lambda i: i["reference"])
    if len(found) > MAX_IMAGES:
        found, truncated = found[:MAX_IMAGES], True
    return {"images": found, "allowed_images": list(patterns), "truncated": truncated}
