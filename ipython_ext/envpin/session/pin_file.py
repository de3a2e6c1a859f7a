"""The pin file: which image each notebook of a folder runs in.

``%use_image`` records its choice in ``.envpin.json`` beside the notebook, so
that reopening the notebook, or running it headless with nbclient/papermill,
starts the kernel directly in the pinned image.  The file is small, sorted
JSON meant to be read, diffed and committed::

    {
      "about": "envpin pins: the image each notebook in this folder runs in ...",
      "version": 1,
      "notebooks": {
        "analysis.ipynb": {
          "image": "ubuntu-22.04-py3",                  # as the user wrote it
          "reference": "registry.example.com/py:3.11",  # after alias expansion
          "image_id": "sha256:...",                     # what it meant when pinned
          "python": "3.11.2",
          "pinned_at": "2026-11-25T10:00:00Z",
          "file_id": "2049:1837461:3959595185",         # the notebook file it was made for
          "kernelspec": "containerized-python"          # the kernel it was made in
        }
      }
    }

Notebooks are keyed by file name.  A kernel that does not know its notebook
(nbclient and papermill do not say) records and reads the key ``"*"``, the
folder's pin, which only applies to kernels of the kernelspec it was made in.
A file that does not parse is reported and never overwritten, so a hand edit
gone wrong cannot silently lose the previous pin.

**A pin belongs to a file, not to a name.**  Renames, moves, copies and
deletes made through Jupyter's contents API (what JupyterLab's rename dialog,
file browser and "Duplicate" call) carry the entry along
(:func:`transfer`, :func:`drop`, called by the server's contents-event
listener, ``envpin_provisioner.pins.follow``).  For what Jupyter does not see
(``mv`` in a terminal, git), an entry records ``file_id``, the device,
inode and inode generation of the notebook file it was made for:
jupyter_server saves a notebook in place (the inode stays, measured), so an entry whose file was renamed or
deleted behind Jupyter's back does not apply to a new notebook that takes the
name (``Untitled.ipynb`` again).  Where the file was replaced by the same
notebook (a git checkout, a clone on another machine, an editor that writes a
new file), the notebook itself says so: an entry applies when the notebook
has a ``%use_image IMAGE`` line for the entry's image (:func:`_names_image`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envpin import printable, safe_files
from envpin.errors import PinFileError

PIN_FILE = ".envpin.json"
FOLDER_KEY = "*"
#: Entry fields: the notebook file the pin was made for (``file_id``, on this machine), and the kernelspec.
FILE_ID = "file_id"
KERNELSPEC = "kernelspec"
_ABOUT = (
    "envpin pins: the image each notebook in this folder runs in. Written by %use_image; "
    "read when a kernel starts. Safe to edit or delete; commit it with the notebooks."
)

#: One writer at a time in this process: a move's record and a rename's transfer must not lose each other's entry.
_WRITING = threading.RLock()


def pin_file_for(folder: str | os.PathLike) -> Path:
    return Path(folder) / PIN_FILE


def notebook_key(notebook: str | None) -> str:
    return os.path.basename(notebook) if notebook else FOLDER_KEY


#: A pin file holds a few lines per notebook; anything this large is not one.
MAX_PIN_FILE_BYTES = 1024 * 1024
#: A notebook larger than this is not read for its ``%use_image`` line (its entry then needs its file id).
MAX_NOTEBOOK_BYTES = 32 * 1024 * 1024


def read(folder: str | os.PathLike) -> dict[str, Any]:
    """All pins of ``folder`` (``{}`` when there is no pin file); raise PinFileError if unreadable.

    The notebook folder is writable by the kernel, so the pin file is hostile
    input to the server that reads it: a symbolic link (to ``/etc/shadow``, say),
    a FIFO, a hard link or a huge file is refused without being read, and no
    error message quotes the file's content.
    """
    with safe_files.directory(folder) as dir_fd:
        return read_at(dir_fd, pin_file_for(folder))


def read_at(dir_fd: int, path: str | os.PathLike) -> dict[str, Any]:
    """The pins of the folder ``dir_fd`` (``path``: its pin file, as messages name it); see :func:`read`."""
    try:
        text = safe_files.read_regular(dir_fd, PIN_FILE, MAX_PIN_FILE_BYTES)
    except FileNotFoundError:
        return {}
    except safe_files.UnsafeFile as exc:
        raise PinFileError(
            f"The envpin pin file {path} is not a plain file ({exc.strerror}), so envpin does not read it: "
            "it never follows links or opens special files in a notebook folder. Replace it with a regular "
            "file (or delete it to start over)."
        ) from None
    except OSError as exc:
        raise PinFileError(f"Cannot read the envpin pin file {path}: {exc.strerror}. Fix its permissions.") from None
    try:
        try:
            data = json.loads(text)
        except RecursionError:  # nested deeper than the parser goes: no pin file looks like that
            raise ValueError("it is nested too deeply to be a pin file") from None
        pins = data["notebooks"]
        if not isinstance(pins, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("image"), str) and v.get("image") for v in pins.values()
        ):
            raise ValueError("each pin needs an 'image'")
        if not all(_printable(v["image"]) and _printable(v.get("reference", "x")) for v in pins.values()):
            raise ValueError("an image name holds control characters or is too long")
    except json.JSONDecodeError as exc:
        raise PinFileError(
            f"The envpin pin file {path} is damaged (line {exc.lineno}): {exc.msg}. envpin will not overwrite "
            "it, so the pins it holds are kept; fix the file by hand (it is JSON) or delete it to start over."
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PinFileError(
            f"The envpin pin file {path} is damaged: {_describe(exc)}. envpin will not overwrite it, so the pins "
            "it holds are kept; fix the file by hand (it is JSON) or delete it to start over."
        ) from None
    return pins


def _printable(value: Any) -> bool:
    """A name envpin may show and log as it is: text, printable, of a reasonable length."""
    return isinstance(value, str) and value.isprintable() and len(value) <= 512


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return "it has no 'notebooks' entry"
    if isinstance(exc, TypeError):
        return "it is not a JSON object with a 'notebooks' object"
    return str(exc)


#: ``FS_IOC_GETVERSION`` (``_IOR('v', 1, long)``): a file's inode generation, new each time an inode number is reused.
_FS_IOC_GETVERSION = 0x80000000 | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1


def file_id(dir_fd: int, name: str) -> str | None:
    """``DEV:INO:GENERATION`` of the regular file ``name`` in ``dir_fd``; None when there is none.

    The inode number alone is not an identity: ext4 gives a deleted file's
    number to the next file created (seen here: ``rm`` then a new notebook of
    the same name got the same inode), with a new generation.  Where the file
    system has no generation (tmpfs, which does not reuse numbers at once),
    the id is ``DEV:INO``.  Opened without following a link or blocking on a FIFO.
    """
    try:
        fd = os.open(safe_files.check_name(name), _STAT_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            generation = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETVERSION, bytes(struct.calcsize("l"))))[0]
        except OSError:  # no generations on this file system
            return f"{st.st_dev}:{st.st_ino}"
        return f"{st.st_dev}:{st.st_ino}:{generation & 0xFFFFFFFF}"
    finally:
        os.close(fd)


_STAT_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


#: A ``%use_image IMAGE`` line of a code cell: the first word after the magic is the image.
_USE_IMAGE_LINE = re.compile(r"^\s*%use_image\s+(\S+)", re.MULTILINE)


def _names_image(dir_fd: int, name: str, image: str) -> bool:
    """Whether the notebook ``name`` has a code cell with ``%use_image IMAGE`` (the notebook pins itself there).

    The notebook is the kernel's to write: read like the pin file (no link,
    no special file, bounded), parsed as JSON, never shown.
    """
    try:
        raw = safe_files.read_regular(dir_fd, name, MAX_NOTEBOOK_BYTES)
        cells = json.loads(raw).get("cells")
    except (OSError, ValueError, RecursionError, AttributeError):
        return False
    if not isinstance(cells, list):
        return False
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source")
        text = "".join(s for s in source if isinstance(s, str)) if isinstance(source, list) else source
        if isinstance(text, str) and image in _USE_IMAGE_LINE.findall(text):
            return True
    return False


def _belongs(dir_fd: int, name: str, entry: dict[str, Any]) -> bool:
    """Whether ``entry`` (keyed ``name``) was made for the notebook that has that name now.

    True when the entry names no file (written by hand, or by an older
    envpin), when the file is the one it was made for, or when the notebook
    has the entry's ``%use_image`` line (the same notebook, rewritten or
    cloned); False for another notebook that took a gone one's name.
    """
    recorded = entry.get(FILE_ID)
    if not recorded:
        return True
    if recorded == file_id(dir_fd, name):
        return True
    return _names_image(dir_fd, name, entry["image"])


@dataclass
class Found:
    """The pin that decides a start: its entry, its key and the pin file it is in."""

    entry: dict[str, Any]
    key: str
    path: Path

    def describe(self) -> str:
        """Which pin, from where: what the kernel's first output and the server log say."""
        when = self.entry.get("pinned_at")
        made = f", pinned {printable.one_line(when, 40)}" if isinstance(when, str) else ""
        if self.key == FOLDER_KEY:
            spec = self.entry.get(KERNELSPEC)
            under = (
                f" by a headless run of kernelspec '{printable.one_line(spec, 100)}'" if isinstance(spec, str) else ""
            )
            return f"the folder pin '*' in {self.path} (written{under}{made}; it applies to notebooks without a pin of their own)"
        return f"the entry '{printable.one_line(self.key, 200)}' in {self.path}{made}"


@dataclass
class Lookup:
    """What a start finds: the pin that applies (if any), and every entry that did not, said in words."""

    found: Found | None = None
    skipped: list[str] = field(default_factory=list)


def find(folder: str | os.PathLike, notebook: str | None, kernelspec: str | None = None) -> Lookup:
    """The pin for ``notebook`` in ``folder``: its own, else the folder's ``"*"`` pin of the same kernelspec.

    * a notebook's own entry applies when it was made for this file (see :func:`_belongs`);
    * the folder pin applies only to kernels of the kernelspec it was made in
      (a notebook that names another kernelspec keeps it); one without a
      ``kernelspec`` (by hand, or an older envpin) applies to every kernel;
    * without a notebook name (headless runs), a folder whose pins of this
      kernelspec all name the same image counts as pinned to it.
    """
    path = pin_file_for(folder)
    result = Lookup()
    with safe_files.directory(folder) as dir_fd:
        pins = read_at(dir_fd, path)
        key = notebook_key(notebook)
        own = pins.get(key) if notebook else None
        if own is not None:
            if _belongs(dir_fd, key, own):
                result.found = Found(own, key, path)
                return result
            result.skipped.append(
                f"the entry '{printable.one_line(key, 200)}' in {path} was made for another file of that name "
                "(renamed or deleted outside Jupyter since), so it does not pin this notebook; %use_image IMAGE "
                "pins this one (and replaces the entry)"
            )
    folder_pin = pins.get(FOLDER_KEY)
    if folder_pin is not None:
        made_in = folder_pin.get(KERNELSPEC)
        if not made_in or not kernelspec or made_in == kernelspec:
            result.found = Found(folder_pin, FOLDER_KEY, path)
            return result
        result.skipped.append(
            f"the folder pin '*' in {path} was made in kernelspec '{printable.one_line(made_in, 100)}', and this "
            f"kernel is '{printable.one_line(kernelspec, 100)}': it keeps its own kernelspec's image"
        )
    if not notebook and pins:
        same_spec = [(k, p) for k, p in pins.items() if not kernelspec or p.get(KERNELSPEC) in (None, kernelspec)]
        images = {p.get("image_id") or p["image"] for _, p in same_spec}
        if same_spec and len(images) == 1:
            k, p = same_spec[0]
            result.found = Found(p, k, path)
    return result


def lookup(folder: str | os.PathLike, notebook: str | None, kernelspec: str | None = None) -> dict[str, Any] | None:
    """The entry :func:`find` picks, or None."""
    found = find(folder, notebook, kernelspec).found
    return found.entry if found else None


def _owner_and_mode(dir_fd: int, name: str | None) -> tuple[tuple[int, int] | None, int]:
    """Who a rewritten pin file belongs to, and its mode: the existing file's, else the notebook's owner.

    Only a server running as root gives files away; anyone else writes its own.
    """
    for candidate in (PIN_FILE, name):
        if not candidate:
            continue
        try:
            st = os.stat(safe_files.check_name(candidate), dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            owner = (st.st_uid, st.st_gid) if os.getuid() == 0 else None
            mode = stat.S_IMODE(st.st_mode) if candidate == PIN_FILE else 0o644
            return owner, mode
    return None, 0o644


def _write(dir_fd: int, pins: dict[str, Any], owner: tuple[int, int] | None, mode: int = 0o644) -> None:
    body = json.dumps({"about": _ABOUT, "version": 1, "notebooks": pins}, indent=2, sort_keys=True) + "\n"
    safe_files.write_atomic(dir_fd, PIN_FILE, body.encode(), mode=mode, owner=owner)


def record(
    folder: str | os.PathLike, notebook: str | None, pin: dict[str, Any], owner: tuple[int, int] | None = None
) -> Path:
    """Record ``pin`` for ``notebook`` (the folder's pin when None); atomic, other pins kept.

    Written under a new random name and renamed into place relative to the
    folder (``safe_files.write_atomic``): a link planted at ``.envpin.json`` is
    replaced, never written through.  ``owner`` (uid, gid): who the file
    belongs to, when a server running as root writes it for a kernel's user.
    The entry records the notebook file it is made for (``file_id``).
    """
    path = pin_file_for(folder)
    with _WRITING, safe_files.directory(folder) as dir_fd:
        pins = read_at(dir_fd, path)  # raises on a damaged file: never overwrite what we could not read
        entry = {k: v for k, v in pin.items() if v is not None}
        entry.pop(FILE_ID, None)
        entry.setdefault("pinned_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        key = notebook_key(notebook)
        if notebook:
            made_for = file_id(dir_fd, key)
            if made_for:
                entry[FILE_ID] = made_for
        pins[key] = entry
        _write(dir_fd, pins, owner)
    return path


def transfer(
    src_fd: int,
    src_name: str,
    dst_fd: int,
    dst_name: str,
    keep_source: bool,
    shown: tuple[str, str] = ("the source folder", "the destination folder"),
) -> bool:
    """Give notebook ``dst_name`` of ``dst_fd`` the entry of ``src_name`` in ``src_fd``: a rename or a copy.

    ``keep_source``: a copy (the original keeps its pin too); else a rename
    or a move (the entry leaves the source).  The entry then records the file
    at the destination.  Both are folder descriptors the caller opened
    without following links.  True when there was an entry to carry.  Raises
    PinFileError when either pin file is damaged: then nothing is written
    (the destination first, so a failure in between leaves the pin in both
    places, never in neither).  ``shown``: the two folders as messages name them.
    """
    safe_files.check_name(src_name)
    safe_files.check_name(dst_name)
    same = os.path.samestat(os.fstat(src_fd), os.fstat(dst_fd))
    with _WRITING:
        src_pins = read_at(src_fd, Path(shown[0]) / PIN_FILE)
        entry = src_pins.get(src_name)
        if entry is None:
            return False
        # A stale entry (its notebook went behind Jupyter's back) follows no other file: a rename keeps the
        # file (its id is at the destination now), a copy's original is still at the source.
        if not (_belongs(src_fd, src_name, entry) if keep_source else _belongs(dst_fd, dst_name, entry)):
            return False
        moved = dict(entry)
        moved.pop(FILE_ID, None)
        made_for = file_id(dst_fd, dst_name)
        if made_for:
            moved[FILE_ID] = made_for
        if same:
            if not keep_source:
                del src_pins[src_name]
            src_pins[dst_name] = moved
            _write(src_fd, src_pins, *_owner_and_mode(src_fd, dst_name))
            return True
        dst_pins = read_at(dst_fd, Path(shown[1]) / PIN_FILE)
        dst_pins[dst_name] = moved
        _write(dst_fd, dst_pins, *_owner_and_mode(dst_fd, dst_name))
        if not keep_source:
            del src_pins[src_name]
            _write(src_fd, src_pins, *_owner_and_mode(src_fd, None))
        return True


def drop(dir_fd: int, name: str, shown: str = "the folder") -> bool:
    """Remove the entry of notebook ``name`` (deleted) from the pin file of ``dir_fd``; True when there was one."""
    safe_files.check_name(name)
    with _WRITING:
        pins = read_at(dir_fd, Path(shown) / PIN_FILE)
        if name not in pins:
            return False
        del pins[name]
        _write(dir_fd, pins, *_owner_and_mode(dir_fd, None))
        return True
