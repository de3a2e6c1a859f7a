"""File operations that stay safe in a folder someone hostile can write.

The server side of envpin works in folders that a kernel (or a job) can write:
the kernel's control folder, its socket folder, the notebook folder with its
pin file.  Whatever the kernel planted there, a symbolic link to
``/etc/shadow``, a hard link to a root-owned file, a FIFO that blocks the
reader forever, a 10 GB file, a directory where a file is expected, or a name
swapped between two system calls, must not make the server read, write,
chown or chmod anything outside that folder, nor hang.  So every operation
here:

* works relative to a directory file descriptor the caller opened on a path
  it derived itself (``open_dir``), and takes a bare file *name* (never a
  path with ``/``), so no path component can be swapped for a link;
* opens with ``O_NOFOLLOW`` (a planted symlink is refused, not followed) and
  ``O_NONBLOCK`` (a FIFO cannot block the open), then checks with ``fstat``
  on the open descriptor that it is a regular file with a single link and a
  bounded size, so what was checked is what is read;
* creates with ``O_CREAT | O_EXCL`` under a random name, sets mode and owner
  on the descriptor (``fchmod``/``fchown``), and puts the file in place with
  ``rename`` relative to the directory, which replaces a planted link instead
  of writing through it;
* never puts a byte of a refused file into an error message.

Standard library only: the kernel side uses the same functions for its half
of the conversation.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


class UnsafeFile(OSError):
    """A file that is not what it must be: a link, a special file, several links, or too large."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> str:
    """``name`` if it is a plain file name (no folder part, not ``.``/``..``); raise otherwise."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise UnsafeFile(errno.EINVAL, f"not a plain file name: {name!r}")
    return name


def open_dir(path: str | os.PathLike, nofollow: bool = False) -> int:
    """A descriptor of the directory ``path`` (a path the caller derived itself).

    ``nofollow``: refuse when ``path`` itself is a symbolic link (for a folder
    whose name the caller made, inside a folder someone else can write).
    A :class:`PinnedDir` gives a new descriptor of the folder it pinned,
    wherever that folder is now: its path is not looked up again.
    """
    if isinstance(path, PinnedDir):
        return os.dup(path.fd)
    return os.open(path, _DIR_FLAGS | (os.O_NOFOLLOW if nofollow else 0))


@contextmanager
def directory(path: str | os.PathLike, nofollow: bool = False) -> Iterator[int]:
    fd = open_dir(path, nofollow)
    try:
        yield fd
    finally:
        os.close(fd)


class FolderChanged(OSError):
    """A pinned folder's path no longer leads to the folder that was pinned (renamed, replaced, relinked)."""


def open_real_path(real: str) -> int:
    """A descriptor of the folder at the absolute, link-free path ``real``, following no link on the way.

    Each component is opened relative to its parent with ``O_NOFOLLOW``: a
    link anywhere in the path (planted since ``real`` was worked out) fails
    the walk with ELOOP or ENOTDIR instead of being followed.
    """
    if not os.path.isabs(real):
        raise ValueError(f"not an absolute path: {real!r}")
    root = os.open("/", _DIR_FLAGS)
    try:
        return open_below(root, real)
    finally:
        os.close(root)


def open_below(root_fd: int, path: str) -> int:
    """A descriptor of the folder at absolute ``path`` below the folder ``root_fd``, following no link."""
    fd = os.dup(root_fd)
    try:
        for part in [p for p in path.split("/") if p]:
            if part in (".", ".."):
                raise FolderChanged(errno.EINVAL, f"{path} is not a plain path")
            child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class PinnedDir(os.PathLike):
    """A folder pinned once: an open descriptor, its device and inode, and the paths it had then.

    ``path`` is the folder as the caller named it (what a user and a kernel
    see), ``real`` the same folder with every link resolved at the moment of
    pinning.  The descriptor keeps naming that folder whatever happens to
    its path later: :func:`directory` and the pin functions use it, never
    the path.  :meth:`check` says whether ``real`` still leads to it (for
    the things that must name it by path, like a bind mount).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.real = os.path.realpath(self.path)
        self.fd = open_real_path(self.real)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"PinnedDir({self.path!r})"

    def check(self) -> str:
        """``real`` if it still leads (without a link) to the pinned folder; raise FolderChanged otherwise."""
        try:
            fd = open_real_path(self.real)
        except OSError as exc:
            raise FolderChanged(exc.errno or errno.ENOENT, f"{self.real}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            raise FolderChanged(errno.ESTALE, f"{self.real} is another folder now")
        return self.real

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


#: Folders :func:`remove_tree` holds open at once; deeper ones are moved up first.
_MAX_OPEN_DEPTH = 32


def remove_tree(dir_fd: int, name: str, deadline: float) -> bool:
    """Remove ``name`` in ``dir_fd`` and all below it, iteratively, until ``deadline`` (``time.monotonic``).

    Never follows a link (each folder is opened relative to its parent with
    ``O_NOFOLLOW``), never recurses, and holds at most ``_MAX_OPEN_DEPTH``
    descriptors: a deeper folder is renamed up to the top one and emptied
    from there, so a 100,000-deep tree costs neither a Python stack nor the
    process's descriptors.  Stops at ``deadline``: True when
    everything is gone, False when time ran out (what is left stays).
    """
    import time

    check_name(name)
    stack: list[tuple[int, str]] = []  # (descriptor of a folder being emptied, its name in its parent)
    try:
        try:
            top = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):  # a file or a link at that name: unlink it, never follow
                remove(dir_fd, name)
                return True
            raise
        stack.append((top, name))
        while stack:
            fd, own_name = stack[-1]
            descended = False
            with os.scandir(fd) as entries:
                for entry in entries:
                    if time.monotonic() > deadline:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        if len(stack) >= _MAX_OPEN_DEPTH:  # flatten: move it up to the top, emptied later from there
                            try:
                                flat = f".flat-{uuid.uuid4().hex[:12]}"
                                os.rename(entry.name, flat, src_dir_fd=fd, dst_dir_fd=stack[0][0])
                            except OSError:
                                pass
                            continue
                        try:
                            child = os.open(entry.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                        except OSError:
                            continue  # replaced meanwhile: the next pass sees what is there now
                        stack.append((child, entry.name))
                        descended = True
                        break
                    try:
                        os.unlink(entry.name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except IsADirectoryError:  # swapped for a folder meanwhile: the next pass descends
                        descended = True
                        break
            if descended:
                continue
            stack.pop()
            os.close(fd)
            parent = stack[-1][0] if stack else dir_fd
            try:
                os.rmdir(own_name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:  # refilled meanwhile: loop again while time is left
                    raise
                if time.monotonic() > deadline:
                    return False
                stack.append((os.open(own_name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent), own_name))
        return True
    finally:
        for fd, _ in stack:
            os.close(fd)


def read_regular(dir_fd: int, name: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``name`` in ``dir_fd``; raise FileNotFoundError or UnsafeFile.

    Refused: a symbolic link (ELOOP from ``O_NOFOLLOW``), anything but a
    regular file (a FIFO, a socket, a device, a directory), a file with more
    than one hard link (it may be a link to a file elsewhere that the planter
    could not read itself), a file over ``max_bytes``.  A file with no link
    left is read: it was this name when it was opened and has been replaced
    or removed since (an editor's or a writer's atomic ``os.replace``), which
    is the file the caller asked for, as of the open.
    """
    try:
        fd = os.open(check_name(name), _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, f"{name} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{name} is not a regular file")
        if st.st_nlink > 1:
            raise UnsafeFile(errno.EMLINK, f"{name} has {st.st_nlink} hard links")
        if st.st_size > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"{name} is larger than {max_bytes} bytes")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # grew after the fstat
            raise UnsafeFile(errno.EFBIG, f"{name} is larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def remove(dir_fd: int, name: str) -> None:
    """Remove entry ``name`` of ``dir_fd`` if it is there (an empty folder too); never follows a link."""
    try:
        os.unlink(check_name(name), dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError:
            pass  # a planted non-empty folder: it stays, in the planter's own folder


def take(dir_fd: int, name: str, max_bytes: int) -> bytes | None:
    """Take the file ``name`` away and return its bytes; None when there is none.

    Taking is a rename first: reading and then deleting would race with a
    writer replacing the file in between (a newer version deleted unread).
    A rename takes exactly one version; a later one lands at ``name`` again.
    Whatever was taken is removed, also when it is refused (UnsafeFile).
    """
    taken = f".{check_name(name)}.{uuid.uuid4().hex[:12]}.taken"
    try:
        os.rename(name, taken, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    try:
        return read_regular(dir_fd, taken, max_bytes)
    finally:
        remove(dir_fd, taken)


def write_atomic(dir_fd: int, name: str, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Put ``data`` at ``name`` in ``dir_fd`` atomically: a reader sees the old file or the new one.

    A link planted at ``name`` is replaced, not written through; the temporary
    file is new (``O_EXCL``) under a random name; mode and owner are set on the
    descriptor, never on a path.
    """
    check_name(name)
    tmp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits away
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove(dir_fd, tmp)
        raise


def make_private_dir(parent_fd: int, name: str, mode: int = 0o700, owner: tuple[int, int] | None = None) -> int:
    """Create folder ``name`` in ``parent_fd`` (it must not exist) and return a descriptor of it.

    The owner is set on that descriptor, so a folder swapped in between cannot
    be given away instead.
    """
    os.mkdir(check_name(name), mode, dir_fd=parent_fd)
    fd = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd
