"""envpin's own package as a tar, for an engine that cannot bind-mount this machine's folder of it.

A local engine gets the package by a read-only bind mount of ``names.PACKAGE_DIR``.
An engine on another machine has no such folder: the server fills a volume
there from this archive (``envpin_provisioner.remote.package_volume``), and a
short-lived probe that imports envpin gets it copied into its container
(``envpin.host.images.run_python``).  One reading of the files for both, so
the digest that names a package volume is the content a probe gets.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading

from envpin import names

_lock = threading.Lock()
_files_read: tuple[str, list[tuple[str, bytes]]] | None = None  #: (digest, [(relative path, content)])


def _read() -> tuple[str, list[tuple[str, bytes]]]:
    """The package's source files (no bytecode) and the digest of their names and contents; read once."""
    global _files_read
    with _lock:
        if _files_read is None:
            digest = hashlib.sha256()
            files = []
            for folder, dirs, found in os.walk(names.PACKAGE_DIR):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(found):
                    if name.endswith((".pyc", ".pyo")):
                        continue
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, names.PACKAGE_DIR)
                    with open(path, "rb") as f:
                        data = f.read()
                    digest.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
                    files.append((rel, data))
            _files_read = (digest.hexdigest(), files)
        return _files_read


def reset() -> None:
    """Read the files again next time (a test that changed them)."""
    global _files_read
    with _lock:
        _files_read = None


def digest() -> str:
    """The sha256 of the package's files (names and contents)."""
    return _read()[0]


def archive(prefix: str = "", marker: str | None = None) -> bytes:
    """A tar of the package, each file under ``prefix`` (its folders included, mode 0755), owned by root and
    readable by all (0644), with an empty ``marker`` file last when given (a copy that ends with it is whole)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        parts = [p for p in prefix.split("/") if p]
        for i in range(1, len(parts) + 1):
            folder = tarfile.TarInfo("/".join(parts[:i]))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
        base = "/".join(parts)
        for rel, data in _read()[1]:
            info = tarfile.TarInfo(f"{base}/{rel}" if base else rel)
            info.size, info.mode, info.uid, info.gid = len(data), 0o644, 0, 0
            tar.addfile(info, io.BytesIO(data))
        if marker:
            info = tarfile.TarInfo(f"{base}/{marker}" if base else marker)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()
