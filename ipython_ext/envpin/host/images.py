"""The few Docker operations envpin's kernel side does on a host (never inside a kernel container).

Outside a container, ``envpin.use_image`` respawns scripts into an image and
``fingerprint(image=...)`` probes one; both need the Docker SDK, which the
host has when envpin is installed there (it is a dependency of the server
side) but an image may not.  So it is imported lazily, here only, and its
absence is one clear line.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

from envpin import names, printable
from envpin.errors import EnvpinError
from envpin.host import dialect, docker_client, package_archive
from envpin.host.container_spec import base_options
from envpin.images import allowlist, references
from envpin.internals import DOCKER
from envpin.session import aliases


@dataclass(frozen=True)
class ResolvedImage:
    """What an image name meant when envpin resolved it on an engine: the one type both sides use."""

    reference: str  #: what the engine was asked for (aliases expanded)
    id: str  #: local image id, ``sha256:...``: what a container is created from
    digest: str | None  #: ``repo@sha256:...`` when the image has a registry digest
    env: tuple[str, ...] = ()  #: the image's own ``ENV`` entries (``KEY=VALUE``)
    name: str = ""  #: as the user wrote it (maybe an alias); empty: the reference

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.reference)

    @property
    def immutable(self) -> str:
        """The value of ``ENVPIN_IMAGE_ID``: the registry digest if known, else the id."""
        return self.digest or self.id


def resolved(reference: str, image: Any, name: str = "") -> ResolvedImage:
    """The :class:`ResolvedImage` of the engine's ``image`` (a docker-py Image) found for ``reference``.

    The digest is the one of ``reference``'s repository (``localhost:5000/img``: the
    port is not a tag); an image pulled by digest from a repository it is no longer
    tagged in still names the first digest it has.
    """
    repo = references.repository(reference)
    digests = image.attrs.get("RepoDigests") or []
    digest = next((d for d in digests if d.split("@", 1)[0] == repo), None)
    if digest is None and digests and "@" in reference:
        digest = digests[0]
    env = tuple((image.attrs.get("Config") or {}).get("Env") or ())
    return ResolvedImage(reference=reference, id=image.id, digest=digest, env=env, name=name)


def client(in_container_fix: str | None = None):
    """This process's shared Docker client (``docker_client.shared``: one per engine address, both sides).

    ``in_container_fix``: what to do instead, said when this process runs in a
    container without an engine (a Containerized Python kernel has none, by
    design): installing the Docker SDK there would not help.
    """
    from envpin.errors import MissingDependency

    try:
        return docker_client.shared()
    except (MissingDependency, docker_client.EngineUnavailable):
        if in_container_fix is None or not names.in_container():
            raise
    raise EnvpinError(
        "This runs inside a container (a Containerized Python kernel, or a job), which has no Docker engine to "
        "start containers with: kernels get no engine access, by design.",
        fix=in_container_fix,
    )


def remove(container) -> None:
    """Remove ``container`` (running or not), tolerating exactly "already gone" (404) and "being removed" (409)."""
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if exc.status_code != 409:
            raise


def resolve(c, name: str, pull: bool = True, source: str = "this program") -> ResolvedImage:
    """Find image ``name`` (alias, reference or id) on the engine, pulling it if missing.

    ``$ENVPIN_ALLOWED_IMAGES`` is checked first (``envpin.images.allowlist``): a
    refused image is neither pulled nor run.  ``source`` names who asked, for
    that message.
    """
    import docker.errors

    reference = aliases.expand(name)
    allowlist.check(reference, allowlist.patterns_from_env(), source, name)
    try:
        image = c.images.get(reference)
    except docker.errors.ImageNotFound:
        if not pull:
            raise EnvpinError(f"Image '{name}' is not present on the Docker engine.") from None
        try:
            c.images.pull(reference)
            image = c.images.get(reference)
        except docker.errors.APIError as exc:
            raise EnvpinError(
                f"Image '{name}' is not on the Docker engine and could not be pulled: "
                f"{exc.explanation or exc}. Check the name, or build/load it locally."
            ) from None
    except docker.errors.APIError as exc:
        raise EnvpinError(f"'{name}' is not a usable image reference: {exc.explanation or exc}.") from None
    return resolved(reference, image, name)


def _options(
    image: ResolvedImage, role: str, cwd: str | None, env: dict[str, str] | None, with_envpin: bool = True
) -> dict[str, Any]:
    opts = base_options(
        image_id=image.id,
        reference=image.name,
        immutable=image.immutable,
        role=role,
        image_env=image.env,
        cwd=cwd,
        mount_envpin=with_envpin,
    )
    opts["environment"].update(env or {})
    return opts


def run_python(
    c,
    image: ResolvedImage,
    code: str,
    timeout: float = 60,
    python: str = "python3",
    tail: int | str = "all",
    with_envpin: bool = False,
) -> str:
    """Run ``python -c code`` in a short-lived container of ``image`` (labelled, so gc sees it); return its stdout.

    No network and no mount, on any engine: with ``with_envpin`` (the code imports envpin) the package
    is copied into the created container where a kernel has it (``envpin.host.package_archive``), not
    bind-mounted from this machine's folder, which an engine on another machine does not have.
    ``tail``: only the last lines of it (the engine splits a long line at 16 KiB), for a caller that must
    not read whatever amount an image chooses to print.
    """
    options = _options(image, "probe", None, None, with_envpin)  # with_envpin: PYTHONPATH names the package
    options["mounts"] = []
    container = dialect.create(c, entrypoint=[python, "-c", code], network_mode="none", **options)
    try:
        if with_envpin:
            container.put_archive("/", package_archive.archive(prefix=f"{names.CONTAINER_PYTHONPATH}/envpin"))
        container.start()
        result = container.wait(timeout=timeout)
        out = container.logs(stdout=True, stderr=False, tail=tail).decode(errors="replace")
        if result.get("StatusCode") != 0:
            err = container.logs(stdout=False, stderr=True, tail=20).decode(errors="replace").strip()
            raise EnvpinError(  # its stderr is the image's text: escaped, on one line
                f"Probing image '{image.name}' failed (exit {result.get('StatusCode')}): {printable.one_line(err[-500:])}"
            )
        return out
    finally:
        remove(container)


def run_attached(c, image: ResolvedImage, argv: list[str], cwd: str, env: dict[str, str], role: str = "run") -> int:
    """Run ``argv`` in a container of ``image`` wired to this process's stdin/stdout/stderr.

    The working directory is mounted at the same path; SIGINT/SIGTERM/SIGHUP
    are forwarded; the container is removed afterwards; returns its exit code.
    On a terminal (stdin and stdout both one) the program gets a terminal too:
    ``sys.stdin.isatty()`` is true there, so a REPL, ``pdb`` and ``input()``
    work as they do locally (this terminal is raw meanwhile, its size passed on).
    """
    interactive = _on_a_terminal()
    # stdin_open without detach also sets StdinOnce: when our stdin ends, the program's does.
    container = dialect.create(
        c, entrypoint=[argv[0]], command=argv[1:], stdin_open=True, tty=interactive, **_options(image, role, cwd, env)
    )
    previous = {}
    if interactive:
        return _run_on_terminal(container)
    try:
        sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = DOCKER.attr(sock, "attach_socket_raw", sock)

        def forward(signum, _frame):
            import docker.errors

            try:
                container.kill(signal=int(signum))
            except docker.errors.APIError:  # it has just stopped: nothing left to signal
                pass

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, forward)
        container.start()
        threading.Thread(target=_pump_stdin, args=(raw,), daemon=True).start()
        _demux(raw)
        code = container.wait()["StatusCode"]
        return int(code)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        remove(container)


def _on_a_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno()) and os.isatty(sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):
        return False


def _run_on_terminal(container) -> int:
    """Run ``container`` (created with a TTY) on this terminal, raw, until it exits; its exit code."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def resize(*_: Any) -> None:
        import docker.errors

        try:
            size = os.get_terminal_size(sys.stdout.fileno())
            container.resize(height=size.lines, width=size.columns)
        except (OSError, docker.errors.APIError):  # not started yet, or gone
            pass

    previous = signal.signal(signal.SIGWINCH, resize) if threading.current_thread() is threading.main_thread() else None
    try:
        sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = DOCKER.attr(sock, "attach_socket_raw", sock)
        container.start()
        resize()
        tty.setraw(fd)  # keys (Ctrl-C too) go to the program's terminal, which handles them
        threading.Thread(target=_pump_stdin, args=(raw,), daemon=True).start()
        sys.stdout.flush()
        while chunk := raw.recv(65536):  # a TTY's stream is not multiplexed
            os.write(sys.stdout.fileno(), chunk)
        return int(container.wait()["StatusCode"])
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        remove(container)


def _pump_stdin(raw: socket.socket) -> None:
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        fd = None
    try:
        while fd is not None:
            data = os.read(fd, 65536)
            if not data:
                break
            raw.sendall(data)
    except OSError:
        pass
    try:
        raw.shutdown(socket.SHUT_WR)  # EOF for the program in the container
    except OSError:
        pass


def _recv_exact(raw: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = raw.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def _demux(raw: socket.socket) -> None:
    """Copy the engine's multiplexed stream (8-byte frame headers) to our stdout/stderr."""
    outs = {1: sys.stdout, 2: sys.stderr}
    while True:
        header = _recv_exact(raw, 8)
        if not header:
            return
        kind, size = header[0], struct.unpack(">I", header[4:8])[0]
        data = _recv_exact(raw, size)
        stream = outs.get(kind, sys.stdout)
        stream.flush()
        os.write(stream.fileno(), data)
