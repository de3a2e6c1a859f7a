"""The pickle envelope: check where a pickle was made before loading it.

A cloudpickle payload made under one Python minor fails to load under
another deep inside ``pickle`` (``TypeError: code() argument 13 must be str,
not int``) or, worse, loads and crashes later.  So every payload travels in
an envelope whose header is plain JSON, readable by any Python, and names
the sender's environment.  The receiver asks ``envpin.compat.policy`` what the
measured matrix says about that pair before it calls ``loads`` and, where
the pair is known to break (or the strictness setting refuses it), refuses
in plain words naming both sides, what was measured, and the fix.

Wire format of one message (all lengths big-endian u64)::

    len(header) | header (UTF-8 JSON) | len(payload) | payload | n buffers | (len | bytes) ...

The payload is pickled with protocol 5 and large buffers (NumPy arrays, ...)
travel out of band, as separate frames, without being copied into the pickle.

The peer may be hostile (a job's code runs in the worker that answers), so
``read_frames`` checks every length and the header's shape before it trusts
them: a header is a JSON object of at most ``MAX_HEADER`` bytes naming a
``kind`` the reader expects, a frame is at most ``MAX_FRAME`` bytes, a
message has at most ``MAX_BUFFERS`` buffers.  Anything else is a
``ProtocolError`` (never an ``OverflowError`` or a ``MemoryError``), and the
reader drops the connection.  Memory for a frame is committed as its bytes
arrive (``recv_exact`` of ``envpin.jobs.worker``), not when a length is declared.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import struct
import sys
from collections.abc import Callable
from typing import Any

from envpin import names
from envpin.compat import policy
from envpin.errors import EnvpinError

_U64 = struct.Struct(">Q")
PICKLE_PROTOCOL = 5

#: Largest header accepted (JSON: a kind, the sender's environment, a short message or module list).
MAX_HEADER = 256 * 1024
#: Largest single frame (a pickle or one out-of-band buffer): a sanity bound, far above any real job.
MAX_FRAME = 1 << 40
#: Most out-of-band buffers in one message.
MAX_BUFFERS = 1 << 20
#: Longest value kept of a peer's environment field (``clean_environment``).
_MAX_ENV_VALUE = 200


class EnvelopeMismatch(EnvpinError):
    """A payload was made under a Python or pickler this side cannot safely load.

    A job (or its result) crosses environments the measured pickle matrix says break
    (another Python minor, cloudpickle 3 pickles loaded by cloudpickle 2), or that strict mode
    refuses.  It is refused before unpickling, instead of a ``TypeError`` or a segfault; the
    message names both environments and the measurement.

    Fix: run the caller in the job's image (the Containerized Python kernel), or give the image
    the caller's Python and pickler release; ``--envelope compatible`` (the default) lets pairs
    measured to work through.
    """


class ProtocolError(EnvpinError):
    """A peer sent something that is not a valid message: a bad length, header or kind.

    Between an executor and its workers: a worker (or something else on its socket) answered
    with a frame envpin does not accept.  Only that job fails; the worker is replaced.

    Fix: nothing to do for one occurrence; if it repeats, the job's code is writing to the
    worker's connection, or the image runs an envpin of another version.
    """


@functools.lru_cache(maxsize=8)
def _header(kind: str, image: str | None, image_id: str | None) -> bytes:
    return json.dumps({"kind": kind, "env": sender_environment()}).encode()


def sender_environment() -> dict[str, Any]:
    import cloudpickle

    return {
        "python": platform.python_version(),
        "python_minor": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "implementation": platform.python_implementation(),
        "pickler": "cloudpickle",
        "pickler_version": cloudpickle.__version__,
        "image": os.environ.get(names.IMAGE),
        "image_id": os.environ.get(names.IMAGE_ID),
    }


def _describe(env: dict[str, Any]) -> str:
    where = (
        f"image {env.get('image')} ({env.get('image_id')})"
        if env.get("image")
        else "a process outside any envpin image"
    )
    return f"{env.get('implementation')} {env.get('python')} with {env.get('pickler')} {env.get('pickler_version')} in {where}"


#: What a refusal tells the user to do.
FIX = (
    "Run both sides in the same image: pin the notebook with %use_image IMAGE (or start it in the "
    "Containerized Python kernel of that image) so jobs and kernel share one Python."
)


def fix_for(sent: dict[str, Any], here: dict[str, Any]) -> str:
    """What a refusal tells the user to do, from where they are.

    A host kernel that ran ``%use_image IMAGE`` has done what :data:`FIX`
    says, and it did not help: only its jobs were pinned, the kernel still
    runs the host's Python.  It must run in the image itself.
    """
    from envpin.session import state

    pin = state.current_pin()
    image = (pin.name if pin else None) or sent.get("image") or here.get("image")
    if pin is not None and pin.mode == "host" and image:
        return (
            f"This kernel runs on the host, not in '{image}': %use_image pinned its jobs, not its own Python. Run "
            f"the notebook in the image: envpin kernelspec install --sys-prefix --image {image}, then pick that "
            f"kernel (or open it in a Containerized Python kernel, where %use_image {image} moves it)."
        )
    return FIX


def verdict(sent: dict[str, Any], here: dict[str, Any]) -> policy.Verdict:
    """What the measured matrix says about loading here what ``sent`` pickled (``envpin.compat.policy``)."""
    return policy.judge(policy.Side.of_envelope(sent), policy.Side.of_envelope(here))


def check(sent: dict[str, Any], here: dict[str, Any], what: str, mode: str | None = None, where: str = "here") -> None:
    """Raise EnvelopeMismatch if a ``what`` made under ``sent`` must not be loaded ``here`` (under ``mode``).

    ``mode`` is the strictness (``envpin.session.options.ENVELOPE_MODES``); None: ``$ENVPIN_ENVELOPE``, else compatible.
    ``where`` names the receiving side in the message (the executor judges for its worker too).
    An unmeasured pair in compatible mode warns once and passes.
    """
    policy.enforce(
        verdict(sent, here),
        policy.resolve_mode(mode),
        EnvelopeMismatch,
        f"a {what} made under {_describe(sent)} {where}, under {_describe(here)}",
        fix_for(sent, here),
    )


def control_frames(header: dict[str, Any]) -> list:
    """Frames of a header-only message (hello, refusal, probe): JSON, readable by any Python, no pickle."""
    data = json.dumps(header).encode()
    return [_U64.pack(len(data)), data, _U64.pack(0), b"", _U64.pack(0)]


def dumps(obj: Any, kind: str, dumper: Callable | None = None) -> list:
    """Frames of one envelope holding ``obj`` (a list of bytes-like objects, ready for sendmsg)."""
    import cloudpickle

    buffers: list = []
    payload = (dumper or cloudpickle.dumps)(obj, protocol=PICKLE_PROTOCOL, buffer_callback=buffers.append)
    header = _header(kind, os.environ.get(names.IMAGE), os.environ.get(names.IMAGE_ID))
    frames: list = [_U64.pack(len(header)), header, _U64.pack(len(payload)), payload, _U64.pack(len(buffers))]
    for buf in buffers:
        raw = buf.raw()
        frames += [_U64.pack(raw.nbytes), raw]
    return frames


def _length(recv_exact: Callable[[int], Any], what: str, limit: int) -> int:
    (n,) = _U64.unpack(bytes(recv_exact(8)))
    if n > limit:
        raise ProtocolError(f"the peer announced a {what} of {n} bytes (at most {limit} are accepted)")
    return n


def parse_header(data: bytes, kinds: frozenset[str] | None = None) -> dict[str, Any]:
    """The header's JSON object, checked: an object with a string ``kind`` (one of ``kinds`` when given)."""
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("the peer sent a header that is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("the peer sent a header without a kind")
    if kinds is not None and header["kind"] not in kinds:
        raise ProtocolError(f"the peer sent a message of kind {header['kind'][:40]!r}, expected one of {sorted(kinds)}")
    return header


def read_frames(
    recv_exact: Callable[[int], Any], kinds: frozenset[str] | None = None, max_header: int = MAX_HEADER
) -> tuple[dict, Any, list]:
    """Read one envelope with ``recv_exact(n)``; return (header, payload, buffers) without unpickling.

    Raises ``ProtocolError`` for anything that is not a valid message of one of ``kinds``.
    """
    header = parse_header(bytes(recv_exact(_length(recv_exact, "header", max_header))), kinds)
    payload = recv_exact(_length(recv_exact, "payload", MAX_FRAME))
    count = _length(recv_exact, "buffer count", MAX_BUFFERS)
    buffers = [recv_exact(_length(recv_exact, "buffer", MAX_FRAME)) for _ in range(count)]
    return header, payload, buffers


def clean_environment(env: Any) -> dict[str, str | None]:
    """A peer's ``env`` reduced to the fields ``sender_environment`` sends, as short printable strings.

    These values end up in messages the user reads: a hostile peer must not
    forge lines or terminal escapes there, nor make them huge.
    """
    out: dict[str, str | None] = {}
    if not isinstance(env, dict):
        return out
    for key in ("python", "python_minor", "implementation", "pickler", "pickler_version", "image", "image_id"):
        value = env.get(key)
        if isinstance(value, str):
            out[key] = "".join(c for c in value[:_MAX_ENV_VALUE] if c.isprintable())
        else:
            out[key] = None
    return out


_last_accepted: dict[tuple[str, str | None], dict] = {}


def loads(header: dict, payload: Any, buffers: list, what: str, mode: str | None = None) -> Any:
    """Check the envelope against this process (under strictness ``mode``, see ``check``), then unpickle."""
    import pickle

    sent = header.get("env") or {}
    if sent != _last_accepted.get((what, mode)):  # once per sender: judged on printable values only
        check(clean_environment(sent), sender_environment(), what, mode)
        _last_accepted[(what, mode)] = sent
    return pickle.loads(payload, buffers=buffers)


def reset() -> None:
    """Forget this process's envelope header and the senders already judged (``envpin.reset_caches``)."""
    _header.cache_clear()
    _last_accepted.clear()
