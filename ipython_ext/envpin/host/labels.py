"""Labels on every container envpin starts, the identity of its owning process, and the proof envpin made it.

Kept on the kernel side (stdlib only) because both sides start containers:
the provisioner (kernels) and, on a host, ``envpin.use_image`` / fingerprints
/ job workers.  A container's owner is a process identified by host name,
boot id, pid and the pid's start time (so a recycled pid is not mistaken for
the owner); see ``envpin_provisioner.kernel.ownership`` for the garbage collection
built on it.

**Labels alone prove nothing.**  A container inherits every label of its
image, so ``LABEL envpin.role=kernel`` in a Dockerfile made each plain
``docker run`` of that image look like envpin's, and ``envpin gc`` removed
it.  So :func:`signed` adds two labels at create time: a random
``envpin.nonce`` and ``envpin.proof``, which names the labels envpin set and
carries an HMAC-SHA256 over their values (nonce included) keyed by a secret
only this user's processes can read (:func:`key_path`, a 0600 file, made on
first use).  :func:`made_by_envpin` is the one test every path that *finds*
containers uses (gc, a server's start-up collection, a kernel's sweep of its
stale containers, doctor's counts, a restarted server's adoption): the proof
must hold under this user's key, and the container's image must define none
of the labels the proof covers (an image that copied a real container's
labels, proof included, makes containers that are not envpin's).  Other
``envpin.*`` labels of an image (the test images' ``envpin.test-recipe``)
are inherited harmlessly: the proof does not cover them.

What this does not do: someone who may run containers on the engine can copy
a real container's labels onto one of theirs (``docker run --label ...``);
such a person controls the engine anyway.  A container made by another user
(another key) is never this user's to collect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import stat
import threading
import uuid
from pathlib import Path

from envpin import names
from envpin.errors import EnvpinError

#: Every label envpin sets starts with this (the proof covers only such labels).
_PROOF_SCHEME = "v1"
_KEY_NAME = "owner.key"
_KEY_HEX = 64  #: 32 random bytes, as hex

log = logging.getLogger("envpin")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> str:
    """Start time of ``pid`` (field 22 of /proc/PID/stat), '' when it does not exist."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat_line.rsplit(")", 1)[1].split()[19]


def owner_labels(pid: int | None = None) -> dict[str, str]:
    """Labels naming ``pid`` (this process by default) as a container's owner."""
    pid = pid or os.getpid()
    return {
        names.LABEL_OWNER_HOST: socket.gethostname(),
        names.LABEL_OWNER_BOOT: boot_id(),
        names.LABEL_OWNER_PID: str(pid),
        names.LABEL_OWNER_START: start_ticks(pid),
        names.LABEL_OWNER_UID: str(os.getuid()),
    }


# ---- the proof ---------------------------------------------------------------------------------


class OwnerKeyError(EnvpinError):
    """The owner key file exists but is not one envpin may trust.

    ``~/.local/state/envpin/owner.key`` proves which containers are this user's (for ``envpin gc``
    and every clean-up); it must be a regular file of this user, readable by nobody else, and not
    a link.

    Fix: remove the file; envpin makes a new one (containers started under the old key are then
    no longer collected automatically: remove those once by hand).
    """


def key_path() -> str:
    """This user's owner key: ``~/.local/state/envpin/owner.key``, the home from the password database.

    The password database, not ``$HOME``: under ``sudo`` ``$HOME`` may still
    name the invoking user's home, and root's key must not land there.
    """
    try:
        import pwd

        home = pwd.getpwuid(os.geteuid()).pw_dir
    except (ImportError, KeyError):  # a uid without a passwd entry (in a container): $HOME then
        home = os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "envpin", _KEY_NAME)


_keys: dict[str, bytes] = {}
_keys_lock = threading.Lock()
_warned = False


def reset() -> None:
    """Forget the owner keys read and the warning given (``envpin.reset_caches``); the key files stay."""
    global _warned
    with _keys_lock:
        _keys.clear()
    _warned = False


def _read_key(dir_fd: int, path: str) -> bytes | None:
    """The key in ``dir_fd``, None when there is none; OwnerKeyError for a file that must not be trusted."""
    try:
        fd = os.open(_KEY_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OwnerKeyError(
            f"envpin's owner key {path} cannot be opened ({exc.strerror}; a symbolic link is refused). "
            "Remove it and envpin makes a new one (containers started under the old key are then not "
            "collected by envpin gc: remove them with docker rm)."
        ) from None
    try:
        st = os.fstat(fd)
        data = os.read(fd, _KEY_HEX + 1)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OwnerKeyError(
            f"envpin's owner key {path} is not a regular file of this user readable by nobody else "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}). Remove it and envpin makes a new one "
            "(containers started under the old key are then not collected by envpin gc: remove them with docker rm)."
        )
    try:
        key = bytes.fromhex(data.decode("ascii"))
    except ValueError:
        key = b""
    if len(key) * 2 != _KEY_HEX:
        raise OwnerKeyError(f"envpin's owner key {path} is damaged (not {_KEY_HEX} hex digits): remove it.")
    return key


def _make_key(dir_fd: int, path: str) -> bytes:
    """A new key, put in place with ``link`` so two processes making one at once end up sharing one."""
    tmp = f".{_KEY_NAME}.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, os.urandom(_KEY_HEX // 2).hex().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, _KEY_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileExistsError:
        pass  # another process was first: use its key
    finally:
        os.unlink(tmp, dir_fd=dir_fd)
    key = _read_key(dir_fd, path)
    assert key is not None  # just linked, in a folder only this user writes
    return key


def owner_key(create: bool) -> bytes | None:
    """This user's owner key (made when missing and ``create``); None when there is none.  Cached per process.

    Raises OSError when its folder cannot be made or opened, OwnerKeyError
    for a file that must not be trusted.
    """
    path = key_path()
    with _keys_lock:
        if path in _keys:
            return _keys[path]
        folder = os.path.dirname(path)
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            key = _read_key(dir_fd, path)
            if key is None and create:
                key = _make_key(dir_fd, path)
        finally:
            os.close(dir_fd)
        if key is not None:
            _keys[path] = key
        return key


def _mac(key: bytes, labels: dict[str, str], covered: list[str]) -> str:
    message = json.dumps([[n, labels.get(n)] for n in covered], separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _covered(proof: str) -> list[str] | None:
    """The label names a proof covers (``v1;NAME,NAME,...;MAC``), None when it is not one of envpin's."""
    scheme, _, rest = proof.partition(";")
    names_text, _, mac = rest.rpartition(";")
    covered = names_text.split(",")
    if scheme != _PROOF_SCHEME or len(mac) != 64 or names.LABEL_NONCE not in covered or names.LABEL_ROLE not in covered:
        return None
    if any(not n.startswith(names.LABEL_PREFIX) or n == names.LABEL_PROOF for n in covered):
        return None
    return covered


def signed(labels: dict[str, str]) -> dict[str, str]:
    """``labels`` plus a new nonce and the proof over every ``envpin.*`` label, for a container about to be made.

    Without a usable key (a home that cannot be written, a key file that must
    not be trusted) the container is made without a proof and a warning says
    so once: it works, but envpin gc never collects it.
    """
    global _warned
    out = {k: v for k, v in labels.items() if k != names.LABEL_PROOF}
    out[names.LABEL_NONCE] = uuid.uuid4().hex
    try:
        key = owner_key(create=True)
    except (OSError, OwnerKeyError) as exc:
        if not _warned:
            _warned = True
            log.warning(
                "envpin: no owner key (%s), so the containers this process starts carry no proof of "
                "ownership and envpin gc will not collect them if this process dies.",
                exc,
            )
        return out
    assert key is not None  # made when missing
    covered = sorted(k for k in out if k.startswith(names.LABEL_PREFIX))
    out[names.LABEL_PROOF] = f"{_PROOF_SCHEME};{','.join(covered)};{_mac(key, out, covered)}"
    return out


def proof_holds(labels: dict[str, str]) -> bool:
    """True when ``labels`` carry a proof made with this user's key over the values of the labels it names."""
    covered = _covered(labels.get(names.LABEL_PROOF) or "")
    if covered is None or any(n not in labels for n in covered):
        return False
    try:
        key = owner_key(create=False)
    except (OSError, OwnerKeyError):
        return False
    return key is not None and hmac.compare_digest(
        labels[names.LABEL_PROOF].rsplit(";", 1)[1], _mac(key, labels, covered)
    )


def image_claims(image_labels: dict[str, str] | None, container_labels: dict[str, str]) -> bool:
    """True when the image defines a label envpin sets on ``container_labels`` (one its proof covers, or the proof)."""
    covered = _covered(container_labels.get(names.LABEL_PROOF) or "") or []
    return any(n in (image_labels or {}) for n in (*covered, names.LABEL_PROOF, names.LABEL_NONCE, names.LABEL_ROLE))


def made_by_envpin(container_labels: dict[str, str] | None, image_labels: dict[str, str] | None) -> bool:
    """The one ownership test: a proof made with this user's key, over labels the image does not define.

    ``image_labels`` None means the image could not be looked at (removed):
    then the container is not taken for envpin's.
    """
    container_labels = container_labels or {}
    return (
        image_labels is not None and proof_holds(container_labels) and not image_claims(image_labels, container_labels)
    )
