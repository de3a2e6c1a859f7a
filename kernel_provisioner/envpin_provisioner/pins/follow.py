"""A pin follows its notebook: renames, moves, copies and deletes made through Jupyter's contents API.

JupyterLab's rename dialog (also the name asked at a new notebook's first
save), its file browser (rename, drag to another folder, "Duplicate",
"Delete") and any client of ``/api/contents`` go through the server's
contents manager, which reports each change on jupyter_server's event bus
(schema ``contents_service/v1``: ``rename`` and ``copy`` with ``source_path``,
``delete``; paths relative to the contents root).  :class:`PinFollower`
listens there and carries the notebook's entry in ``.envpin.json`` along
(``envpin.session.pin_file.transfer`` / ``drop``):

* **rename or move**: the entry goes with the notebook, into the pin file of
  its new folder when it changed folder;
* **copy**: the copy gets the original's pin as well (it is the same code: it
  should run where the original runs), recorded for the copy's own file;
* **delete**: the entry goes; a notebook that later takes the name starts unpinned.

What the server does not see (``mv`` in a terminal, git) is caught when a
kernel starts: an entry records the file it was made for
(``pin_file._belongs``).

The listener is registered by the server extension (``jupyter_server_config.d/envpin.json``,
installed with envpin) when the server starts, and again, idempotently, by
the first envpin kernel a server starts (for a server where the extension
is not enabled: renames before that first kernel are then only caught by
the file check).

Security: the folders are the kernels' to write, and the server may run as
root.  The contents root is resolved once (the server's own setting); every
folder below it is opened component by component without following a link
(``safe_files.open_below``), and the pin files are read and written through
those descriptors (``pin_file``: no link, no special file, never written
through).  Events come from the server's own contents manager (after it
checked the user's request), never from a kernel.  All file work runs in one
worker thread, off the event loop, one event at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import posixpath
from typing import Any

from envpin import printable, safe_files
from envpin.errors import PinFileError
from envpin.session import pin_file
from envpin_provisioner.images import selection

CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

#: One thread for every pin file change this process makes on an event: in order, off the event loop.
_WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="envpin-pins")
#: Event loggers a follower listens on already (one per server), with it: attaching twice is a no-op.
_attached: dict[int, tuple[Any, PinFollower]] = {}


def reset() -> None:
    """Stop following (``envpin_provisioner.reset_caches``): the listeners leave their event loggers."""
    for events, follower in _attached.values():
        events.remove_listener(schema_id=CONTENTS_SCHEMA, listener=follower)
    _attached.clear()


class PinFollower:
    """The contents-event listener of one server: ``root`` is its contents manager's root folder."""

    def __init__(self, root: str, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.root = os.path.realpath(root)  # the server's own setting: the one path resolved through links
        self.log = log

    async def __call__(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        action = data.get("action")
        if action not in ("rename", "copy", "delete"):
            return
        path, source = data.get("path"), data.get("source_path")
        await asyncio.get_running_loop().run_in_executor(_WORKER, self.apply, action, path, source)

    def apply(self, action: str, path: Any, source: Any) -> None:
        """Carry the pin for one event.  Blocking; never raises (a pin that cannot follow is logged)."""
        try:
            if action == "delete":
                self._delete(path)
            elif isinstance(source, str):
                self._carry(source, path, keep_source=action == "copy")
        except PinFileError as exc:
            self.log.warning(
                "envpin: the pin of %s did not follow its %s: %s", printable.one_line(source or path, 300), action, exc
            )
        except (OSError, ValueError) as exc:  # a folder gone meanwhile, a link on the way (never followed)
            self.log.info(
                "envpin: the pin of %s did not follow its %s (%s)",
                printable.one_line(source or path, 300), action, printable.one_line(exc, 300),
            )  # fmt: skip

    def _parts(self, api_path: Any) -> tuple[str, str]:
        """(folder below the root, file name) of a contents API path; raise ValueError for anything odd."""
        if not isinstance(api_path, str):
            raise ValueError("no path")
        clean = api_path.strip("/")
        folder, name = posixpath.split(clean)
        if not name or any(p in ("", ".", "..") for p in clean.split("/")):
            raise ValueError(f"not a plain contents path: {api_path!r}")
        return folder, name

    def _open(self, folder: str) -> int:
        root = safe_files.open_real_path(self.root)
        try:
            return safe_files.open_below(root, "/" + folder)
        finally:
            os.close(root)

    def _shown(self, folder: str) -> str:
        return os.path.join(self.root, folder)

    def _carry(self, source: str, path: Any, keep_source: bool) -> None:
        src_folder, src_name = self._parts(source)
        dst_folder, dst_name = self._parts(path)
        src = self._open(src_folder)
        try:
            dst = self._open(dst_folder)
            try:
                moved = pin_file.transfer(
                    src, src_name, dst, dst_name, keep_source, (self._shown(src_folder), self._shown(dst_folder))
                )
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if moved:
            self.log.info(
                "envpin: the pin of %s %s %s", printable.one_line(source, 300),
                "was copied to" if keep_source else "follows it to", printable.one_line(path, 300),
            )  # fmt: skip

    def _delete(self, path: Any) -> None:
        folder, name = self._parts(path)
        fd = self._open(folder)
        try:
            dropped = pin_file.drop(fd, name, self._shown(folder))
        finally:
            os.close(fd)
        if dropped:
            self.log.info("envpin: %s was deleted; its pin goes with it", printable.one_line(path, 300))


def _server_app(obj: Any) -> Any:
    """The jupyter_server ServerApp above ``obj`` (a kernel manager), or None (nbclient, papermill, tests)."""
    for _ in range(4):
        if obj is None:
            return None
        if hasattr(obj, "contents_manager") and hasattr(obj, "event_logger"):
            return obj
        obj = getattr(obj, "parent", None)
    return None


def listen(serverapp: Any, log: logging.Logger | logging.LoggerAdapter | None = None) -> PinFollower | None:
    """Have pins follow the contents changes of ``serverapp``; idempotent.  None where it cannot (no file root)."""
    events = getattr(serverapp, "event_logger", None)
    root = getattr(getattr(serverapp, "contents_manager", None), "root_dir", None)
    if events is None or not isinstance(root, str) or not os.path.isdir(root):
        return None
    known = _attached.get(id(events))
    if known is not None and known[0] is events:
        return known[1]
    follower = PinFollower(root, log or serverapp.log)
    _attached[id(events)] = (events, follower)
    events.add_listener(schema_id=CONTENTS_SCHEMA, listener=follower)
    return follower


def attach(kernel_manager: Any, log: logging.Logger | logging.LoggerAdapter) -> None:
    """From a provisioner: listen on the server that runs its kernel manager, if there is one."""
    serverapp = _server_app(kernel_manager)
    if serverapp is not None:
        listen(serverapp, log)


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """jupyter_server's hook: the extension is enabled by ``jupyter_server_config.d/envpin.json``."""
    if listen(serverapp) is not None:
        serverapp.log.info("envpin: pins in .envpin.json follow their notebooks' renames, copies and deletes")


def follow_session(
    previous: str | None,
    notebook: str | None,
    folder: safe_files.PinnedDir,
    pin_dir: safe_files.PinnedDir,
    log: logging.Logger | logging.LoggerAdapter,
) -> safe_files.PinnedDir:
    """At a restart: the folder of the notebook's pin file now, the pin carried if the session changed file.

    Blocking.  A notebook renamed, moved or saved under another name in
    Jupyter keeps its kernel (and its kernel's working folder, which stays
    mounted), and jupyter_server passes the new path at the next restart
    (``JPY_SESSION_NAME``, the server's word, never the kernel's).  The pin
    file to read is then the new folder's, pinned as at a first start.  If
    the new name has no pin of its own, the previous name's entry follows the
    session: copied when the previous file is still the one it was made for
    (JupyterLab's "Save As", which the event bus reports as a plain save),
    moved when the new file is (a rename this server's listener did not see).
    """
    path = os.path.abspath(selection.notebook_folder(notebook, folder.path))
    now = pin_dir
    if path != pin_dir.path:
        try:
            now = folder if path == folder.path else safe_files.PinnedDir(path)
        except OSError:  # gone meanwhile: keep the folder pinned before
            return pin_dir
    if previous and notebook and previous != notebook:
        old, new = pin_file.notebook_key(previous), pin_file.notebook_key(notebook)
        try:
            with safe_files.directory(pin_dir) as src, safe_files.directory(now) as dst:
                if new not in pin_file.read_at(dst, pin_file.pin_file_for(now)):
                    carried = pin_file.transfer(src, old, dst, new, True, (pin_dir.path, now.path)) or (
                        pin_file.transfer(src, old, dst, new, False, (pin_dir.path, now.path))
                    )
                    if carried:
                        log.info("envpin: the pin of %s follows its session to %s", previous, notebook)
        except (PinFileError, OSError) as exc:  # the start reads the pin file again and reports a damaged one
            log.info("envpin: the pin of %s did not follow its session: %s", previous, printable.one_line(exc, 300))
    if now is not pin_dir and pin_dir is not folder:
        pin_dir.close()
    return now
