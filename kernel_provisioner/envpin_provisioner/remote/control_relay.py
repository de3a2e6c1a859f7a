"""``%use_image`` on another machine's engine: the kernel's control folder, relayed by one ``exec`` per container.

Locally the kernel and the server share the kernel's control folder (a bind
mount of the server's private channel folder, ``envpin.notebook.control``).
A remote engine can mount nothing of this machine, and envpin binds no
server path there; over TCP+TLS not even a folder of that machine is within
reach.  So for a kernel on another machine's engine:

* the control folder is in the container's own layer
  (``names.CONTAINER_CONTROL_DIR``, 0700, the kernel's user, made by the
  ``put_archive`` that brings the connection file, before the start), and
  ``ENVPIN_CONTROL_DIR`` names it: the kernel side is the local one, unchanged;
* the server holds ONE long-lived ``exec`` per kernel container,
  :data:`WATCHER` run by the image's Python with ``-I`` (as the TLS channel
  relay): it takes ``request.json`` the way ``safe_files.take`` does (rename,
  no link followed, regular files only, at most ``control.MAX_FILE_BYTES``)
  and writes each as one line on its stdout; its stdin brings the server's
  answers, which it writes atomically (temporary name, rename) into the folder.
  Nothing listens anywhere, nothing is mounted, and the exec's stream is the
  engine API's own connection (inside SSH, or the engine's TLS);
* the hand-over (``handoff.json``, old kernel -> new kernel) is carried by
  the server the same way over both transports: once the old container has
  stopped, its file is read from the stopped container (``get_archive``,
  bounded, a regular file only) and written into the new container's folder
  by the new container's watcher.  No folder is shared between containers.

Everything a watcher sends is hostile: the kernel can kill it, replace it, or
write anything on its behalf.  Each line is bounded (a line longer than
:data:`MAX_LINE` ends the connection), lines are taken at most
:data:`LINES_PER_SECOND` a second (the reader sleeps; the watcher then blocks
on its stdout), requests are parsed by the same ``ControlRequest.parse`` as
local ones and queued at most :data:`BACKLOG` deep, and all of it happens on
this module's threads, never on the event loop: :meth:`respond` only queues
(bounded, never blocks).  A watcher that ends while its container runs is
started again with a bounded backoff (:data:`BACKOFF`).  A ``%use_image``
waiting for an answer never hangs: the kernel side gives up in one paragraph
when no answer comes (``control.ask``), and an answer queued while a watcher
was restarting is delivered by the next one.
"""

from __future__ import annotations

import base64
import binascii
import collections
import io
import json
import posixpath
import queue
import socket
import tarfile
import threading
import time
import uuid
from typing import Any

import docker.errors

from envpin import names, printable
from envpin.notebook import control
from envpin_provisioner import engine
from envpin_provisioner.moves.control_requests import ControlChannel

#: The watcher, run in the kernel's container by the image's Python (``-I``: nothing from the working folder or
#: PYTHON* variables), stdlib only.  argv: the control folder, the largest request.  It speaks only after the
#: server's first line, so the engine's HTTP answer to the exec is out before its first byte (see tls_kernel.RELAY).
#: Its first line is a token it writes to ``.relay``: the newest watcher of a folder is its only one (an older
#: one whose connection the server dropped, but whose stdin the engine kept open, sees another token and ends).
#: stdout: ``R <base64 request>`` or ``E <base64 reason>`` lines, and ``K`` every HEARTBEAT seconds: an engine
#: need not end an exec's stream when its process dies while its stdin is open (measured over TLS: it does not),
#: so a watcher that stays silent for HEARTBEAT_TIMEOUT seconds counts as dead.  stdin: JSON lines ``{"name", "data"}`` (write
#: that file atomically) or ``{"name"}`` (remove it).  Its stdin's end is its end.
WATCHER = r"""
import base64,json,os,stat,sys,threading,time
d=sys.argv[1];M=int(sys.argv[2]);i=sys.stdin.buffer;o=sys.stdout.buffer
g=i.readline().strip()
if not g: sys.exit(0)
G=os.path.join(d,".relay")
def mine():
 try:
  with open(G,"rb") as f: return f.read(64)==g
 except OSError: return False
lock=threading.Lock()
def send(k,b):
 with lock:
  o.write(k+b" "+base64.b64encode(b)+b"\n");o.flush()
def gone(p):
 try: os.unlink(p)
 except IsADirectoryError:
  try: os.rmdir(p)
  except OSError: pass
 except OSError: pass
def take(n):
 t=os.path.join(d,".%s.%d.relay"%(n,os.getpid()))
 try: os.rename(os.path.join(d,n),t)
 except FileNotFoundError: return None
 except OSError as e:
  send(b"E",("cannot take %s: %s"%(n,e.strerror)).encode());return None
 try:
  f=os.open(t,os.O_RDONLY|os.O_NOFOLLOW|os.O_NONBLOCK)
  try:
   if not stat.S_ISREG(os.fstat(f).st_mode):
    send(b"E",("refused %s: not a regular file"%n).encode());return None
   b=b""
   while len(b)<=M:
    c=os.read(f,M+1-len(b))
    if not c: break
    b+=c
   if len(b)>M:
    send(b"E",("refused %s: larger than %d bytes"%(n,M)).encode());return None
   return b
  finally: os.close(f)
 except OSError as e:
  send(b"E",("refused %s: %s"%(n,e.strerror)).encode());return None
 finally: gone(t)
def put():
 for l in i:
  try:
   m=json.loads(l);n=m["name"]
   if not isinstance(n,str) or not n or "/" in n or n[0]=="." or n=="request.json": continue
   p=os.path.join(d,n)
   if "data" not in m:
    gone(p);continue
   b=base64.b64decode(m["data"]);t=os.path.join(d,".%s.%d.tmp"%(n,os.getpid()));gone(t)
   f=os.open(t,os.O_WRONLY|os.O_CREAT|os.O_EXCL|os.O_NOFOLLOW,0o600)
   try:
    v=memoryview(b)
    while v: v=v[os.write(f,v):]
   finally: os.close(f)
   os.rename(t,p)
  except Exception as e:
   send(b"E",("cannot write an answer: %s"%e).encode()[:300])
 os._exit(0)
t=os.path.join(d,".relay.%d"%os.getpid())
with open(t,"wb") as f: f.write(g)
os.replace(t,G)
threading.Thread(target=put,daemon=True).start()
k=0.0
while True:
 if not mine(): os._exit(0)
 r=take("request.json")
 if r is not None: send(b"R",r)
 if time.monotonic()-k>BEAT:
  send(b"K",b"");k=time.monotonic()
 time.sleep(0.05)
"""

#: Seconds between the watcher's "alive" lines, and of silence after which the server counts it dead.
HEARTBEAT = 0.5
HEARTBEAT_TIMEOUT = 3.0
WATCHER = WATCHER.replace("BEAT", repr(HEARTBEAT))

#: Longest line a watcher may send: a request of ``control.MAX_FILE_BYTES`` in base64, and its kind.
MAX_LINE = (control.MAX_FILE_BYTES + 2) // 3 * 4 + 16
#: Lines read per second at most from one watcher: a kernel cannot make the server spin.
LINES_PER_SECOND = 20
#: Requests waiting to be served at most; more are dropped (the kernel sends one at a time).
BACKLOG = 4
#: Answers waiting for a watcher at most (a kernel that stops reading cannot fill the server's memory).
OUTBOX = 64
#: Seconds an answer waits for a watcher (one restarting) before it is dropped; the kernel then says so itself.
DELIVERY_WAIT = 30.0
#: Seconds between a watcher's restarts: doubled from the first to the last after each quick end.  The last
#: stays well under the 10 s a kernel waits for a first answer (``control.ask``): a request written while the
#: watcher was down is still answered in time.
BACKOFF = (0.25, 2.0)
#: A watcher that ran this long ended for a reason of its own: the next restart starts the backoff over.
STABLE = 60.0
#: Seconds an exec may take to be created and started.
EXEC_TIMEOUT = 20


def _plain_socket(raw: Any) -> Any:
    """The socket under docker-py's exec stream: unix (``SocketIO``, as over SSH) or TLS (an ``SSLSocket``)."""
    from envpin.internals import DOCKER

    return DOCKER.attr(raw, "attach_socket_raw", raw) if isinstance(raw, socket.SocketIO) else raw


def read_one_file(chunks: Any, limit: int) -> bytes | None:
    """The one regular file of the tar stream ``chunks`` (``get_archive``), at most ``limit`` bytes; else None.

    The stream is the old container's (its kernel may have put anything at
    the name): read at most ``limit`` plus room for the tar's headers, and
    only a single regular file is accepted (no link, folder or device).
    """
    buf = bytearray()
    cap = limit + 16 * 1024
    for chunk in chunks:
        buf += chunk
        if len(buf) > cap:
            return None
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(buf)), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) != 1 or not members[0].isreg() or members[0].size > limit:
                return None
            extracted = tar.extractfile(members[0])
            return extracted.read(limit + 1) if extracted is not None else None
    except tarfile.TarError:
        return None


class _Watcher:
    """The exec relaying one container's control folder, with its threads; restarted while the container runs.

    Threads: one runs the exec's sessions (reads the lines), one pumps bytes
    between the exec's stream and a local socket pair (``tls_kernel``'s pump:
    one thread alone touches a TLS socket), one writes the queued answers.
    """

    def __init__(self, channel: RemoteControlChannel, container: Any) -> None:
        self.channel = channel
        self.container = container
        self._outbox: queue.Queue[tuple[float, bytes]] = queue.Queue(maxsize=OUTBOX)
        self._conn: socket.socket | None = None
        self._remote: Any = None  # the current session's exec socket (the pump thread alone reads and writes it)
        self._connected = threading.Event()
        self._stopped = threading.Event()
        self.restarts = 0
        threading.Thread(target=self._run, name="envpin-control-relay", daemon=True).start()
        threading.Thread(target=self._deliver, name="envpin-control-answers", daemon=True).start()

    # ---- the server's side --------------------------------------------------------------------

    def send(self, message: dict[str, str]) -> bool:
        """Queue one line for the watcher's stdin; False when the outbox is full.  Never blocks."""
        try:
            self._outbox.put_nowait((time.monotonic(), json.dumps(message).encode() + b"\n"))
        except queue.Full:
            return False
        return True

    def stop(self) -> None:
        self._stopped.set()
        self._connected.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        remote = self._remote
        if remote is not None:  # a stopped (SIGSTOP) watcher may hold the pump in a send: this wakes it
            try:
                remote.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    # ---- threads ------------------------------------------------------------------------------

    def _deliver(self) -> None:
        """Write queued answers to the watcher, in order; one waits for a (re)started watcher, bounded."""
        while not self._stopped.is_set():
            try:
                queued, line = self._outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            while not self._stopped.is_set():
                if time.monotonic() - queued > DELIVERY_WAIT:
                    self.channel.bad("an answer waited too long for the kernel's control relay; dropped")
                    break
                conn = self._conn
                if conn is None or not self._connected.wait(0.2):
                    continue
                try:
                    conn.sendall(line)
                    break
                except OSError:  # the session ended meanwhile: the next one gets it
                    time.sleep(0.1)

    def _run(self) -> None:
        try:
            self._restarting()
        finally:  # its container is gone (or the channel closed): the answer thread ends too
            self.stop()

    def _restarting(self) -> None:
        delay = BACKOFF[0]
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                self._session()
            except (OSError, docker.errors.DockerException, ValueError) as exc:
                self.channel.log.debug("envpin: control relay of %s ended: %s", self.container.short_id, exc)
            finally:
                self._connected.clear()
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
            if self._stopped.is_set() or not self._running():
                return  # its kernel is gone: a restart or a move follows with another container (another watcher)
            delay = BACKOFF[0] if time.monotonic() - started > STABLE else min(delay * 2, BACKOFF[1])
            self.restarts += 1
            self.channel.bad(f"the control relay in container {self.container.short_id} ended; restarting it")
            self._stopped.wait(delay)

    def _running(self) -> bool:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        except engine.ENGINE_ERRORS:
            return True  # the engine does not answer now: try again after the backoff
        return self.container.status == "running"

    def _session(self) -> None:
        """One exec of the watcher: start it, then read its lines until it ends (or :meth:`stop`)."""
        from envpin_provisioner.remote.tls_kernel import ChannelRelay

        api = self.container.client.api
        exec_id = api.exec_create(
            self.container.id,
            [self.channel.python, "-I", "-c", WATCHER, names.CONTAINER_CONTROL_DIR, str(control.MAX_FILE_BYTES)],
            stdin=True, stdout=True, stderr=False, tty=False,
        )["Id"]  # fmt: skip
        remote = _plain_socket(api.exec_start(exec_id, socket=True))
        remote.settimeout(None)
        self._remote = remote
        mine, theirs = socket.socketpair()

        def pump() -> None:
            try:
                ChannelRelay._pump(theirs, remote)
            except OSError:
                pass
            finally:
                for s in (theirs, remote):
                    try:
                        s.close()
                    except OSError:
                        pass

        threading.Thread(target=pump, name="envpin-control-pump", daemon=True).start()
        if self._stopped.is_set():
            mine.close()
            return
        mine.sendall(uuid.uuid4().hex.encode() + b"\n")  # the watcher's cue and token (see WATCHER)
        mine.settimeout(HEARTBEAT_TIMEOUT)  # silent that long: dead, or stopped (TimeoutError ends the session)
        self._conn = mine
        self._connected.set()
        buf = b""
        taken: collections.deque[float] = collections.deque(maxlen=LINES_PER_SECOND)
        while not self._stopped.is_set():
            chunk = mine.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.channel.received(self, line)
                now = time.monotonic()
                taken.append(now)
                if len(taken) == LINES_PER_SECOND and now - taken[0] < 1.0:
                    time.sleep(1.0 - (now - taken[0]))
            if len(buf) > MAX_LINE:
                self.channel.bad(f"the control relay sent a line over {MAX_LINE} bytes; its connection is dropped")
                return


class RemoteControlChannel(ControlChannel):
    """A kernel's control folder on another machine's engine: ``ControlChannel``'s interface, relayed by execs.

    ``MoveServer`` uses it as the local one (``take_request``, ``respond``,
    ``delay``, ``close``); the provisioner tells it which container is the
    kernel's (:meth:`follow`), and the move server has it carry the hand-over
    (:meth:`carry_handoff`).  Requests count only from the current container's
    watcher: an old kernel's, after a move, is not listened to.
    """

    def __init__(self, python: str, log: Any, label: str) -> None:
        # No folder on this machine: nothing of ControlChannel's descriptor is used.
        self.path = f"{names.CONTAINER_CONTROL_DIR} ({label})"
        self.log = log
        self.owner = None
        self.python = python
        self._fd = None
        self._answers = collections.OrderedDict()
        self._bad_in_a_row = 0
        self._last_warning = 0.0
        self._lock = threading.Lock()
        self._requests: collections.deque[bytes] = collections.deque()
        self._current: _Watcher | None = None
        self._retired: list[_Watcher] = []
        self._closed = False

    # ---- what the provisioner and the move server call --------------------------------------------

    def follow(self, container: Any) -> None:
        """``container`` is the kernel's now: its watcher starts (on its threads); the previous one is retired.

        A retired watcher still delivers what was queued for it (the "moving"
        answer its kernel waits for) until its container stops; what it sends
        is not listened to any more.  Never blocks.
        """
        with self._lock:
            if self._closed or (self._current is not None and self._current.container.id == container.id):
                return
            if self._current is not None:
                self._retired = [w for w in self._retired if not w.stopped] + [self._current]
            self._requests.clear()
            self._current = _Watcher(self, container)

    def carry_handoff(self, old: Any) -> None:
        """After a move, the old container stopped: its ``handoff.json`` goes to the new one's folder.  Blocking.

        Read from the stopped container (the engine keeps its layer until it is
        removed), bounded, a single regular file only; written by the new
        container's watcher, atomically.  None found (the old kernel was killed
        first): the moved cell gets no reply, as when that happens locally.
        """
        with self._lock:
            for watcher in [w for w in self._retired if w.container.id == old.id]:
                watcher.stop()
                self._retired.remove(watcher)
            current = self._current
        if current is None or current.container.id == old.id:
            return
        try:
            chunks, _ = old.get_archive(posixpath.join(names.CONTAINER_CONTROL_DIR, control.HANDOFF))
            data = read_one_file(chunks, control.MAX_FILE_BYTES)
        except docker.errors.NotFound:
            self.log.warning("envpin: the old kernel left no %s: the moved cell gets no reply", control.HANDOFF)
            return
        if data is None:
            self.bad(f"the old kernel's {control.HANDOFF} is not a regular file of at most {control.MAX_FILE_BYTES} B")
            return
        if not current.send({"name": control.HANDOFF, "data": base64.b64encode(data).decode()}):
            self.bad(f"the new kernel's control relay is not reading; its {control.HANDOFF} was dropped")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watchers = [w for w in (self._current, *self._retired) if w is not None]
            self._current, self._retired = None, []
            self._requests.clear()
        for watcher in watchers:
            watcher.stop()

    @property
    def restarts(self) -> int:
        """How often the current container's watcher was started again (tests, the log)."""
        return self._current.restarts if self._current is not None else 0

    # ---- what the watchers call (their threads) --------------------------------------------------

    def received(self, watcher: _Watcher, line: bytes) -> None:
        """One line from ``watcher``: a request (queued, bounded) or a reason it refused a file."""
        kind, _, payload = line.partition(b" ")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.bad("the control relay sent a line that is not base64")
            return
        with self._lock:
            if watcher is not self._current:
                return  # an old kernel's, after a move: nobody listens to it
            if kind == b"K":
                return
            if kind == b"R":
                if len(self._requests) < BACKLOG:
                    self._requests.append(data)
                    return
                message = "requests arrive faster than they are served; dropped"
            elif kind == b"E":
                message = printable.lines(data[:300].decode(errors="replace"))
            else:
                message = "the control relay sent a line of an unknown kind"
        self.bad(message)

    def bad(self, message: str) -> None:
        self._bad(message)

    # ---- ControlChannel's storage, relayed ----------------------------------------------------------

    def _take_raw(self) -> bytes | None:
        with self._lock:
            return self._requests.popleft() if self._requests else None

    def _write_answer(self, name: str, data: bytes) -> bool:
        with self._lock:
            current = self._current
        if current is None:
            return False
        if not current.send({"name": name, "data": base64.b64encode(data).decode()}):
            self._bad(f"the kernel's control relay is not reading; the answer {name} was dropped")
            return False
        return True

    def _remove_answer(self, name: str) -> None:
        with self._lock:
            current = self._current
        if current is not None:
            current.send({"name": name})
