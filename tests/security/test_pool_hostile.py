"""Warm kernels (``pool_size``) keep the boundary: issue 22's five findings, and a pooled hostile-kernel fuzz.

Everything here runs for real, as a notebook server runs it: jupyter_server's
own kernel manager (``AsyncMappingKernelManager``, with a ``root_dir`` shared
by every notebook) in this test's event loop, the envpin provisioner with
``pool_size=1``, ipykernel in containers on the real engine.  The server runs
as root; the kernels run as two users, alice (uid 4242) and bob (uid 4343),
and every attack is plain Python typed into a cell.

The notebooks' root is a shared team folder (mode 1777).  Alice has a
notebook folder with a nested one inside it (``alice/`` and ``alice/nb/``,
each with its own kernel), bob one of his own (``bob/``, 0700).  Canaries
("vaults"): a root-only folder outside the notebooks' root, and one vault in
each user's folder (alice's lies outside her nested notebook folder).  A
kernel may read what lies in its own notebook folder and nothing else: no
vault outside it, no other kernel's connection key.

What the server must keep (issue 22, and the design decisions taken on it):

* a shared-pool container mounts only the notebook folder it was made for,
  and goes only to a kernel of that folder, user and configuration;
* the notebook folder is pinned at the kernel's first start: a pin write, a
  move, a restart or a standby after the folder was renamed or replaced by a
  link is refused with a clear error, or uses the pinned folder; nothing is
  ever written, mounted or read through the link;
* nothing planted in a notebook folder is imported by a process envpin starts;
* a kernelspec's ``environment`` never reaches another kernelspec's kernel;
* removing a channel folder never stalls the event loop nor raises, and the
  key goes first;
* a kernel shut down while its standby is being created leaves no container.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import random
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

from envpin_provisioner.warm.pool import pools
from testutils import PY311, PY313, async_wait_for, containers, envpin_containers, program
from testutils.hostile import KERNEL_UID, Canaries
from testutils.hostile import TOOLBOX as HOSTILE_TOOLBOX
from testutils.kernels import run

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the findings need a server running as root")

ALICE = KERNEL_UID
BOB = 4343
#: The longest the server's event loop may go without running a ready task.
STALL_LIMIT = 0.2
#: Modules whose file says where a kernel's code came from (read from sys.modules: never imported by the probe).
WATCHED = (
    "envpin",
    "envpin.entry.warm_kernel",
    "envpin.entry.boot",
    "ipykernel",
    "ipykernel_launcher",
    "IPython",
    "zmq",
    "traitlets",
    "jupyter_client",
    "tornado",
    "comm",
    "debugpy",
    "runpy",
    "sitecustomize",
    "usercustomize",
)


# ---- the canaries and the notebooks' root ------------------------------------------------------


class Vault:
    """A user's folder that kernels of other folders may neither read nor change (snapshot by content too)."""

    def __init__(self, path: Path, owner: tuple[int, int] | None = None):
        self.dir = path
        path.mkdir(mode=0o700)
        self.secret = f"ENVPIN-CANARY-{uuid.uuid4().hex}"
        self.secret_file = path / "secret.txt"
        self.secret_file.write_text(self.secret)
        inner = path / "inner"
        inner.mkdir(mode=0o700)
        self.inner_file = inner / "inner.txt"
        self.inner_file.write_text(self.secret)
        for p in (self.secret_file, self.inner_file):
            p.chmod(0o600)
        if owner:
            for p in (path, inner, self.secret_file, self.inner_file):
                os.chown(p, *owner)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple]:
        out = {}
        for root, dirs, files in os.walk(self.dir):
            for name in [".", *dirs, *files]:
                p = os.path.normpath(os.path.join(root, name))
                st = os.lstat(p)
                digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
                out[p] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, digest)
        return out

    def assert_untouched(self) -> None:
        now = self.snapshot()
        assert now == self.before, (
            f"the canary {self.dir} was created in, changed or chowned: {_diff(self.before, now)}"
        )


def _diff(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


class Realm:
    """The notebooks' root (jupyter_server's root_dir), three notebook folders, three vaults."""

    def __init__(self, base: Path):
        self.root = base / "notebooks"
        self.root.mkdir()
        self.root.chmod(0o1777)  # a shared team folder: anyone may add a folder, only its owner may rename it
        self.alice = self.root / "alice"
        self.nested = self.alice / "nb"
        self.bob = self.root / "bob"
        for folder, uid, mode in ((self.alice, ALICE, 0o755), (self.nested, ALICE, 0o755), (self.bob, BOB, 0o700)):
            folder.mkdir()
            folder.chmod(mode)
            os.chown(folder, uid, uid)
        self.canary = Canaries(base)  # root's, outside every notebook folder
        self.alice_vault = Vault(self.alice / "vault", (ALICE, ALICE))  # alice's, outside her nested folder
        self.bob_vault = Vault(self.bob / "vault", (BOB, BOB))
        self.vaults: tuple[Canaries | Vault, ...] = (self.canary, self.alice_vault, self.bob_vault)
        #: Every file holding a secret, for the attacks that try to read one.
        self.secret_files = [str(v.secret_file) for v in self.vaults] + [
            str(self.canary.root_only / "inner.txt"),
            *(str(v.inner_file) for v in (self.alice_vault, self.bob_vault)),
        ]
        self.folders = {"alice": self.alice, "nested": self.nested, "bob": self.bob}
        self.owners = {"alice": ALICE, "nested": ALICE, "bob": BOB}
        for label, folder in self.folders.items():
            own = folder / f"own-{label}.txt"  # shows a kernel which folder it really runs in
            own.write_text(label)
            os.chown(own, self.owners[label], self.owners[label])
        self.inodes = {label: os.stat(folder).st_ino for label, folder in self.folders.items()}

    def forbidden(self, label: str) -> list[str]:
        """The secrets a kernel of ``label``'s folder must never see: every vault outside that folder."""
        own = self.folders[label]
        return [v.secret for v in self.vaults if own not in v.dir.parents]

    def assert_untouched(self) -> None:
        for vault in self.vaults:
            vault.assert_untouched()

    def displaced(self, label: str) -> bool:
        """True when ``label``'s folder path no longer leads to the folder it was (renamed, or a link there)."""
        folder = self.folders[label]
        for path in [folder, *[p for p in folder.parents if self.root in p.parents]]:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return True
            if not stat.S_ISDIR(st.st_mode):
                return True
        return os.lstat(folder).st_ino != self.inodes[label] or any(
            self.displaced(other)
            for other, f in self.folders.items()
            if other != label and f in folder.parents  # an enclosing notebook folder moved
        )

    def restore(self) -> None:
        """Put every notebook folder back at its path (as root, never following a link), outermost first."""
        for label in sorted(self.folders, key=lambda lb: len(self.folders[lb].parts)):
            folder, inode = self.folders[label], self.inodes[label]
            try:
                st = os.lstat(folder)
                if stat.S_ISDIR(st.st_mode) and st.st_ino == inode:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.rename(folder, folder.with_name(f"planted-{uuid.uuid4().hex[:6]}"))
                else:
                    os.unlink(folder)
            except FileNotFoundError:
                pass
            found = self.find_folder(inode)
            assert found is not None, f"the notebook folder {folder} is gone"
            os.rename(found, folder)

    def clear_hostile_pins(self) -> None:
        """Remove a pin file a start would rightly refuse (a link, not a file) from each kernel's folder, wherever
        it is now: that refusal is tested elsewhere (test_hostile_kernel), here it would only end the walk."""
        for inode in self.inodes.values():
            folder = self.find_folder(inode)
            pin = Path(folder or "/nonexistent") / ".envpin.json"
            if pin.is_symlink() or (pin.exists() and not pin.is_file()):
                pin.unlink()

    def find_folder(self, inode: int) -> str | None:
        """Where the folder with ``inode`` is now (under the notebooks' root), or None."""
        for top, dirs, _ in os.walk(self.root):  # never follows links
            for name in dirs:
                p = os.path.join(top, name)
                if os.lstat(p).st_ino == inode:
                    return p
        return None

    def findings(self) -> tuple[list[str], list[str]]:
        """Marker files planted code left (it ran), and pin files outside every notebook folder."""
        marks, stray_pins = [], []
        kernel_folders = set(self.inodes.values())
        for top, _, files in os.walk(self.root):
            for name in files:
                if name.startswith("PWNED-"):
                    marks.append(os.path.join(top, name))
                if name == ".envpin.json" and os.lstat(top).st_ino not in kernel_folders:
                    stray_pins.append(os.path.join(top, name))
        return marks, stray_pins


@pytest.fixture
def realm(tmp_path):
    return Realm(tmp_path)


@pytest.fixture
def specs(install_kernelspec):
    """One pooled kernelspec per user (pool_size=1)."""
    return SimpleNamespace(
        alice=install_kernelspec(PY311, name="alice", user=f"{ALICE}:{ALICE}", pool_size=1),
        bob=install_kernelspec(PY311, name="bob", user=f"{BOB}:{BOB}", pool_size=1),
    )


# ---- the server: jupyter_server's kernel manager in this event loop ------------------------------


# Kernel-side helpers, defined in every kernel after each start: the security tests' toolbox (send,
# wait_answer, plant_link ...) and what attacks on a pooled kernel's folders need.
TOOLBOX = HOSTILE_TOOLBOX + program("hostile", "pool")

#: What a kernel says of itself after each start: which user, which folder, where its modules came from.
PROBE = (
    "import builtins as _b, json as _j, os as _o, sys as _s\n"
    "print(_j.dumps({'uid': _o.getuid(), 'cwd': _o.getcwd(), 'python': list(_s.version_info[:2]),"
    " 'listing': (lambda: sorted(_o.listdir('.'))[:500] if _o.access('.', _o.R_OK) else ['unreadable'])(),"
    " 'pwned': [getattr(_b, 'ENVPIN_PWNED', None), _o.environ.get('ENVPIN_PWNED')],"
    f" 'modules': {{n: getattr(_s.modules.get(n), '__file__', None) for n in {WATCHED!r}}}}}))"
)


@dataclass
class Kernel:
    """One kernel of the server, with everything it ever printed (its outputs are checked for leaks)."""

    label: str
    kid: str
    km: Any
    kc: Any
    folder: Path
    key: str
    outputs: list[str] = field(default_factory=list)
    alive: bool = True

    @property
    def connection_file(self) -> str:
        return self.km.connection_file

    async def run(self, code: str, timeout: float = 60) -> dict:
        res = await run(self.kc, code, timeout)
        self.outputs.append(f"{res['stdout']}\n{res['evalue'] or ''}")
        assert res["status"] == "ok" or res["ename"] != "NameError", res  # the toolbox is defined
        return res

    async def probe(self) -> dict:
        res = await self.run(PROBE)
        assert res["status"] == "ok", res
        return json.loads(res["stdout"].strip().splitlines()[-1])


class Server:
    """jupyter_server's own kernel manager over the notebooks' root, in the test's event loop."""

    def __init__(self, root: Path):
        self.root = root
        self.mkm = AsyncMappingKernelManager(root_dir=str(root))
        self.kernels: list[Kernel] = []

    async def start(self, label: str, spec: str, notebook: Path) -> Kernel:
        """What a notebook's session does: the kernel for ``notebook``, started in its folder."""
        env = {**os.environ, "JPY_SESSION_NAME": str(notebook)}
        kid = await self.mkm.start_kernel(kernel_name=spec, path=os.path.relpath(notebook.parent, self.root), env=env)
        km = self.mkm.get_kernel(kid)
        kc = km.client()
        kc.start_channels()
        kernel = Kernel(label, kid, km, kc, notebook.parent, km.session.key.decode())
        self.kernels.append(kernel)
        await kc.wait_for_ready(timeout=60)
        await kernel.run(TOOLBOX)
        return kernel

    async def restart(self, kernel: Kernel) -> None:
        await self.mkm.restart_kernel(kernel.kid)
        await kernel.kc.wait_for_ready(timeout=60)
        await kernel.run(TOOLBOX)

    async def shutdown(self, kernel: Kernel, now: bool = False) -> None:
        if not kernel.alive:
            return
        kernel.alive = False
        kernel.kc.stop_channels()
        if kernel.kid in self.mkm:
            await self.mkm.shutdown_kernel(kernel.kid, now=now)

    async def close(self) -> None:
        """Shut every kernel down, then empty the pools; the first error is raised once all are done."""
        errors = []
        for kernel in self.kernels:
            try:
                await self.shutdown(kernel)
            except Exception as exc:  # every kernel gets its shutdown; the first failure is raised
                errors.append(exc)
        await pools.close()
        if errors:
            raise errors[0]


@pytest.fixture
async def server(realm, jupyter_env, docker_client):
    """The server; at the end its kernels are shut down, its pools emptied, and nothing of it stays on the engine."""
    before = await envpin_container_ids(docker_client)
    srv = Server(realm.root)
    yield srv
    await srv.close()
    await assert_nothing_left(docker_client, before)


class Ticker:
    """A task in the server's event loop that notes the longest time the loop did not get to run it."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.max_stall = 0.0
        self.ticks = 0
        self.phase = ""  #: what the test is doing now: the longest stall of each phase is kept
        self.by_phase: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            stall = now - last - self.interval
            self.max_stall = max(self.max_stall, stall)
            self.by_phase[self.phase] = max(self.by_phase.get(self.phase, 0.0), stall)
            last, self.ticks = now, self.ticks + 1

    def start(self) -> Ticker:
        self._task = asyncio.ensure_future(self._tick())
        return self

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return self.max_stall


def evil(tag: str) -> str:
    """Planted module source: whatever imports it leaves marks where it can (a file, the environment, builtins)."""
    return (
        "import builtins, os\n"
        f"builtins.ENVPIN_PWNED = {tag!r}\n"
        f"os.environ['ENVPIN_PWNED'] = {tag!r}\n"
        "for _d in (os.path.dirname(os.path.abspath(__file__)), os.getcwd()):\n"
        "    try:\n"
        f"        open(os.path.join(_d, 'PWNED-{tag}'), 'w').close()\n"
        "    except OSError:\n"
        "        pass\n"
    )


def evil_pth(folder: str) -> str:
    return (
        "import builtins, os; builtins.ENVPIN_PWNED = 'pth'; os.environ['ENVPIN_PWNED'] = 'pth'; "
        f"open(os.path.join({folder!r}, 'PWNED-pth'), 'w').close()\n"
    )


#: Everything ``python -c BOOTSTRAP MODULE`` or ``python -m MODULE`` could pick up from its working folder.
PLANTED = {
    "envpin/__init__.py": evil("envpin"),
    "envpin/entry/warm_kernel.py": evil("envpin.entry.warm_kernel"),
    "envpin/entry/__init__.py": evil("envpin.entry"),
    "envpin/entry/boot.py": evil("envpin.entry.boot"),
    "ipykernel/__init__.py": evil("ipykernel"),
    "ipykernel_launcher.py": evil("ipykernel_launcher"),
    "IPython/__init__.py": evil("IPython"),
    "zmq/__init__.py": evil("zmq"),
    "traitlets/__init__.py": evil("traitlets"),
    "runpy.py": evil("runpy"),
    "sitecustomize.py": evil("sitecustomize"),
    "usercustomize.py": evil("usercustomize"),
}


def plant_everything(folder: str) -> str:
    """Kernel-side code planting every module of :data:`PLANTED` and a ``.pth`` in ``folder``."""
    lines = [f"plant({folder}, {name!r}, {body!r})" for name, body in PLANTED.items()]
    lines.append(f"plant({folder}, 'zz-envpin.pth', evil_pth)")
    return f"evil_pth = {evil_pth('@')!r}.replace(\"'@'\", repr({folder}))\n" + "\n".join(lines)


def assert_in_own_folder(realm: Realm, kernel: Kernel, probe: dict) -> None:
    """The kernel runs as its user, in its own notebook folder (the one pinned at its start), nothing planted ran."""
    assert probe["uid"] == realm.owners[kernel.label], probe
    assert probe["cwd"] == str(realm.folders[kernel.label]), ("the kernel's folder is not its own mount", probe)
    assert f"own-{kernel.label}.txt" in probe["listing"], ("not the kernel's own folder", probe["listing"][:20])
    assert probe["pwned"] == [None, None], ("planted code ran in the kernel", probe)
    planted = {n: f for n, f in probe["modules"].items() if f and f.startswith(str(realm.root) + os.sep)}
    assert not planted, ("modules imported from a notebook folder", planted)


def assert_no_leak(realm: Realm, kernels: list[Kernel]) -> None:
    """No kernel ever printed a vault's secret outside its folder, or another kernel's key."""
    for kernel in kernels:
        text = "\n".join(kernel.outputs)
        for secret in realm.forbidden(kernel.label):
            assert secret not in text, f"kernel {kernel.label} ({kernel.kid}) read a canary outside its folder"
        for other in kernels:
            if other.kid != kernel.kid:
                assert other.key not in text, f"kernel {kernel.label} read the key of kernel {other.label}"


def assert_clear_refusal(message: str, folder: Path) -> None:
    """A refusal names the notebook folder it is about (one paragraph: the thing and the fix)."""
    assert str(folder) in message, f"the refusal does not name the folder {folder}: {message!r}"


async def envpin_container_ids(docker_client) -> set[str]:
    return await asyncio.to_thread(lambda: {c.id for c in envpin_containers(docker_client)})


async def assert_nothing_left(docker_client, before: set[str], timeout: float = 20) -> None:
    """No envpin container but those of ``before`` remains (a cancelled fill's goes once its creation returns)."""

    def left() -> list:
        return [c for c in envpin_containers(docker_client) if c.id not in before]

    try:
        await async_wait_for(lambda: not left(), timeout=timeout, what="the run's containers to go")
    except AssertionError:
        names = [
            f"{c.name} ({c.status}, {c.labels.get('envpin.role')}, {c.labels.get('envpin.kernel-id', '')})"
            for c in left()
        ]
        raise AssertionError(f"envpin containers left on the engine after {timeout:.0f} s: {names}") from None


# ---- finding 1: the server writes and mounts through a link the kernel planted -------------------


async def test_a_relinked_notebook_folder_is_never_written_mounted_or_read(realm, specs, server):
    """Finding 1: alice's kernel relinks her nested notebook folder; its kernel's pin, move and restarts.

    The kernel of ``alice/`` can rename ``alice/nb`` (a folder in its own) and
    put a link in its place: to a root-only folder, then to the host's
    ``/proc``.  The nested kernel's ``%use_image``, move and two restarts
    (the second takes the standby made after the first) must then be refused
    with a clear error or go on in the pinned folder: nothing written in the
    canary, its content never seen, and no other kernel's connection file
    reached through ``/proc/PID/root``.
    """
    parent = await server.start("alice", specs.alice, realm.alice / "top.ipynb")
    victim = await server.start("nested", specs.alice, realm.nested / "analysis.ipynb")
    bob = await server.start("bob", specs.bob, realm.bob / "b.ipynb")
    stolen = [parent.connection_file, bob.connection_file, str(realm.canary.secret_file)]
    refusals = []

    async def attempt(what: str, action) -> bool:
        """Run ``action`` on the victim: True when it went on (then check where it runs), False when refused."""
        try:
            res = await action()
        except Exception as exc:  # a refused restart: its message is checked
            refusals.append(f"{what}: {exc}")
            assert_clear_refusal(str(exc), realm.nested)
            return False
        if res is not None and res["status"] != "ok":
            refusals.append(f"{what}: {res['evalue']}")
            assert_clear_refusal(res["evalue"] or "", realm.nested)
            return False
        await victim.run(TOOLBOX)
        realm.assert_untouched()
        # Whatever it can read in its folder and through /proc is not the canary's, nor another kernel's key.
        await victim.run(
            "print([peek(n) for n in sorted(os.listdir('.'))[:100]]); print(json.dumps(steal(%r)))" % stolen
        )
        assert_no_leak(realm, [parent, victim, bob])
        assert_in_own_folder(realm, victim, await victim.probe())
        return True

    for target in (str(realm.canary.dir), "/proc"):
        res = await parent.run(f"print(relink('nb', {target!r}))")
        assert res["status"] == "ok", res
        # The pin: written in the pinned folder (the folder now moved aside), or refused.
        ok = await attempt("pin", lambda: victim.run(f"%load_ext envpin\n%use_image {PY311}", timeout=120))
        if ok:
            pinned = realm.find_folder(realm.inodes["nested"])
            assert pinned and os.path.isfile(os.path.join(pinned, ".envpin.json")), (
                "the pin is not in the pinned folder"
            )
        realm.assert_untouched()
        # A move (a new container), then two restarts (the first takes the standby made before the link,
        # the second the one made after it). A refused move leaves the kernel as it was: the restarts follow.
        await attempt("move", lambda: victim.run(f"%load_ext envpin\n%use_image {PY313} --restart", timeout=120))

        async def restart() -> None:
            await server.restart(victim)

        alive = True  # until a restart is refused: then the kernel is gone
        for i in range(2):
            alive = alive and await attempt(f"restart {i + 1}", restart)
        realm.assert_untouched()
        marks, stray = await asyncio.to_thread(realm.findings)
        assert not stray, f"a pin file was written outside the pinned folder: {stray}"
        # Put the folder back (as its user would) and start over with a fresh kernel of that notebook.
        await asyncio.to_thread(realm.restore)
        await server.shutdown(victim, now=True)
        victim = await server.start("nested", specs.alice, realm.nested / "analysis.ipynb")
    print(f"finding 1: refused: {refusals}")
    realm.assert_untouched()
    assert_no_leak(realm, server.kernels)


# ---- finding 2: code planted in a notebook folder runs in the next warm kernels ------------------


async def test_planted_packages_never_run_in_the_next_warm_kernels(realm, specs, server):
    """Finding 2: envpin/, ipykernel/, sitecustomize.py, a .pth ... planted where a kernel can write.

    Then every way a process starts from that folder: restarts (the standby
    made before the planting, then one made after), a move and back, new
    kernels of the folder (the pool's container, then one made after the
    planting), a kernel of the enclosing folder and one of bob.  None may
    import what was planted (it would leave a mark: a file, a variable).
    """
    first = await server.start("nested", specs.alice, realm.nested / "a.ipynb")
    # Planted in the notebook folder and in every folder above it the kernel can write (none, unless a
    # shared pool mounted more than the notebook folder).
    code = "\n".join(
        [
            "targets = [NB] + [d for d in (os.path.dirname(NB), os.path.dirname(os.path.dirname(NB))) if os.access(d, os.W_OK)]",
            "for T in targets:",
            *["    " + line for line in plant_everything("T").splitlines()],
            "print(targets)",
        ]
    )
    res = await first.run(code)
    assert res["status"] == "ok" and str(realm.nested) in res["stdout"], res
    assert (realm.nested / "envpin" / "entry" / "warm_kernel.py").exists() and (realm.nested / "zz-envpin.pth").exists()
    checked = []

    async def check(kernel: Kernel, how: str) -> None:
        probe = await kernel.probe()
        assert_in_own_folder(realm, kernel, probe)
        marks, _ = await asyncio.to_thread(realm.findings)
        assert not marks, f"planted code ran ({how}): {marks}"
        checked.append(how)

    for i in range(2):
        await server.restart(first)
        await check(first, f"restart {i + 1}")
    for image in (PY313, PY311):
        res = await first.run(f"%load_ext envpin\n%use_image {image} --restart", timeout=120)
        assert res["status"] == "ok", res
        await first.kc.wait_for_ready(timeout=60)
        await check(first, f"move into {image}")
    for i in range(2):
        second = await server.start("nested", specs.alice, realm.nested / f"b{i}.ipynb")
        await check(second, f"new kernel {i + 1} of the folder")
        await server.shutdown(second)
    await check(await server.start("alice", specs.alice, realm.alice / "top.ipynb"), "the enclosing folder's kernel")
    await check(await server.start("bob", specs.bob, realm.bob / "b.ipynb"), "bob's kernel")
    print(f"finding 2: nothing planted ran in: {checked}")
    realm.assert_untouched()


# ---- finding 3: one kernelspec's secrets in another's kernel --------------------------------------


async def test_a_kernelspec_s_environment_never_reaches_another_kernelspec_s_kernel(
    realm, install_kernelspec, server, docker_client
):
    """Finding 3: team A's kernelspec sets a password; team B's kernels (same user, image, folder) never see it."""
    password = f"TEAM-A-{uuid.uuid4().hex}"
    team_a = install_kernelspec(
        PY311, name="team-a", user=f"{ALICE}:{ALICE}", pool_size=1, environment={"TEAM_A_DB_PASSWORD": password}
    )
    team_b = install_kernelspec(PY311, name="team-b", user=f"{ALICE}:{ALICE}", pool_size=1)
    look = (
        "import glob, os\n"
        "found = {p: peek(p) for p in ['/proc/self/environ', '/proc/1/environ', *glob.glob('/proc/[0-9]*/environ')]}\n"
        "found['os.environ'] = repr(dict(os.environ))\n"
        "print(json.dumps(found))"
    )
    a = await server.start("nested", team_a, realm.nested / "a.ipynb")
    assert password in (await a.run(look))["stdout"]  # team A's kernels do get it

    def team_a_warm() -> list:
        """A warm container made with team A's environment, waiting (no kernel took it yet)."""
        return [
            c
            for c in containers(docker_client, role="pool", running=True)
            if "envpin.kernel-id" not in c.labels
            and any(e.startswith("TEAM_A_DB_PASSWORD=") for e in c.attrs["Config"]["Env"] or [])
        ]

    await async_wait_for(lambda: team_a_warm(), timeout=60, what="a warm container of team A's kernelspec")
    seen = []
    for i in range(2):
        b = await server.start("nested", team_b, realm.nested / f"b{i}.ipynb")
        seen.append((await b.run(look))["stdout"])
        await server.restart(b)  # its standby
        seen.append((await b.run(look))["stdout"])
    for text in seen:
        found = json.loads(text.strip().splitlines()[-1])
        assert "/proc/1/environ" in found and "os.environ" in found
        where = sorted(source for source, value in found.items() if password in value)
        assert not where, f"team B's kernel read team A's password in {where}"


# ---- finding 4: shutdown blocks the server ---------------------------------------------------------


async def test_a_flooded_channel_folder_neither_stalls_nor_breaks_the_shutdown(
    realm, specs, jupyter_env, docker_client
):
    """Finding 4: 300,000 files in the control folder and a 1,500-deep tree in sock/, then shutdown.

    The kernel manager runs in this event loop, as in jupyter_server: a
    ticker task in the same loop must never wait more than 0.2 s, cleanup
    must not raise, and the connection file (the key) is gone when the
    shutdown returns.  A quota may stop the kernel early: the figures say
    how far it got.
    """
    before = await envpin_container_ids(docker_client)
    km = AsyncKernelManager(kernel_name=specs.alice)
    env = {**os.environ, "JPY_SESSION_NAME": str(realm.nested / "a.ipynb")}
    await km.start_kernel(cwd=str(realm.nested), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        res = await run(kc, TOOLBOX + "print(json.dumps([CONTROL, fill(CONTROL, 300000), tree(SOCK, 1500)]))", 240)
        assert res["status"] == "ok", res
        control, files, depth = json.loads(res["stdout"].strip().splitlines()[-1])
    finally:
        kc.stop_channels()
    channel, key_file = os.path.dirname(control), km.connection_file
    print(f"finding 4: the kernel made {files} files in control/ and a {depth}-deep tree in sock/")
    assert os.path.exists(key_file)
    ticker = Ticker().start()
    started = time.monotonic()
    await km.shutdown_kernel(now=False)  # raises if cleanup raises
    took = time.monotonic() - started
    key_gone = not os.path.lexists(key_file)
    # The rest of the folder may go in the background: keep ticking while it does (bounded).
    deadline = time.monotonic() + 30
    while os.path.lexists(channel) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stall = await ticker.stop()
    await pools.close()
    await assert_nothing_left(docker_client, before)
    print(
        f"finding 4: shutdown took {took:.2f} s, "
        f"max event-loop stall {stall * 1000:.0f} ms over {ticker.ticks} ticks; channel folder "
        f"{'still there after 30 s' if os.path.lexists(channel) else 'removed'}"
    )
    assert files > 100 and depth > 10, "the kernel could not flood its folders at all: nothing was tested"
    assert key_gone, f"the connection file {key_file} (the kernel's key) outlived the shutdown"
    assert stall < STALL_LIMIT, f"the server's event loop stalled {stall:.2f} s at shutdown"


# ---- finding 5: standbys left behind ---------------------------------------------------------------


async def test_a_kernel_shut_down_as_it_starts_leaves_no_container(realm, specs, docker_client, jupyter_env):
    """Finding 5: shutdowns 0 to 0.3 s after a start (its standby being created): no container of it remains.

    Then the pool is emptied while it refills: a fill cancelled as its
    container is being created removes that container once creation returns.
    """
    before = await envpin_container_ids(docker_client)
    delays = [round(0.025 * i, 3) for i in range(13)]
    env = {**os.environ, "JPY_SESSION_NAME": str(realm.nested / "a.ipynb")}
    kernels = {}
    try:
        for delay in delays:
            km = AsyncKernelManager(kernel_name=specs.alice)
            await km.start_kernel(cwd=str(realm.nested), env=env)
            await asyncio.sleep(delay)
            await km.shutdown_kernel(now=True)
            kernels[delay] = km.kernel_id

        def remaining() -> dict:
            found = {d: containers(docker_client, kernel=kid) for d, kid in kernels.items()}
            return {d: [f"{c.name} ({c.status})" for c in cs] for d, cs in found.items() if cs}

        try:  # removal may finish in the background: bounded
            await async_wait_for(lambda: not remaining(), timeout=15, what="the kernels' containers to go")
        except AssertionError:
            pass
        left = remaining()
    finally:
        await pools.close()
    print(f"finding 5: shut down {len(delays)} kernels at {delays} s after their start; left behind: {left}")
    assert not left, f"containers of a kernel shut down as it started remain (by delay in s): {left}"
    await assert_nothing_left(docker_client, before)


# ---- the pooled fuzz ----------------------------------------------------------------------------


def _pooled_attack(rng: random.Random, kernel: Kernel, realm: Realm, keys_at: list[str]) -> tuple[str, str]:
    """One hostile action for ``kernel``, as (kind, kernel-side code)."""
    vault_paths = realm.secret_files
    link_targets = [str(v.dir) for v in realm.vaults] + ["/proc", "/", "/etc", str(realm.root), *keys_at]
    # Alice also plants in her nested notebook folder, never through a link she put there herself (that
    # would be her own write into her own vault, not the server's).
    nested = "(lambda d: NB if os.path.islink(d) else d)(os.path.join(NB, 'nb'))"
    folders = ["NB"] + ([nested] if kernel.label == "alice" else [])
    folder = rng.choice(folders)
    valid = uuid.UUID(int=rng.getrandbits(128)).hex
    kinds: dict[str, Any] = {
        "plant package": lambda: (
            "plant(%s, %r, %r)" % (folder, *rng.choice([(n, b) for n, b in PLANTED.items() if "/" in n]))
        ),
        "plant module": lambda: (
            "plant(%s, %r, %r)" % (folder, *rng.choice([(n, b) for n, b in PLANTED.items() if "/" not in n]))
        ),
        "plant .pth": lambda: "plant(%s, 'zz-%s.pth', %r)" % (folder, valid[:6], evil_pth(str(kernel.folder))),
        "fill control": lambda: f"print('made', fill(CONTROL, {rng.choice([200, 1000, 4000, 12000])}))",
        "fill sock": lambda: f"print('made', fill(SOCK, {rng.choice([200, 1000, 4000])}))",
        "tree": lambda: f"print('depth', tree({rng.choice(['CONTROL', 'SOCK'])}, {rng.choice([50, 400, 1100, 1500])}))",
        "link in channels": lambda: (
            "plant_link(%s, %r, %r)"
            % (
                rng.choice(["CONTROL", "SOCK"]),
                # Not at the names of its own five sockets (k-1 ... k-5): a kernel that swaps those is stopped
                # at the next poll (test_isolation), which would end this walk, not test it.
                rng.choice(["request.json", "k-9", "kernel.json", "evil", "go", f"response-{valid}.json"]),
                rng.choice(link_targets),
            )
        ),
        "pin link": lambda: (
            "plant_link(NB, '.envpin.json', %r); send({'id': %r, 'image': %r}); print(wait_answer(%r, 5))"
            % (rng.choice(vault_paths), valid, PY311, valid)
        ),
        "read": lambda: (
            "print(peek(%r))"
            % rng.choice(
                [
                    *vault_paths,
                    *keys_at,
                    "../vault/secret.txt",
                    "../../bob/vault/secret.txt",
                    "../../../canary/secret.txt",
                ]
            )
        ),
        "steal through /proc": lambda: "print(json.dumps(steal(%r)))" % (keys_at,),
        "rename own folder": lambda: "print(relink(NB, %r))" % rng.choice(link_targets),
        "request": lambda: rng.choice(
            [
                "send({'id': %r, 'image': %r}); print(wait_answer(%r, 5))" % (valid, PY311, valid),
                "[send({'id': uuid.uuid4().hex, 'image': 'x'}) for _ in range(10)]",
                "_put('request.json', b'{' * 5000)",
                "send({'id': %r, 'image': %r, 'notebook': %r})" % (valid, PY311, str(realm.canary.dir / "x.ipynb")),
            ]
        ),
    }
    if kernel.label == "alice":  # the nested notebook folder is a folder in hers: she can move it and link its name
        kinds["relink nested folder"] = lambda: "print(relink(os.path.join(NB, 'nb'), %r))" % rng.choice(link_targets)
        kinds["relink nested folder "] = kinds["relink nested folder"]  # twice as likely
    kind = rng.choice(sorted(kinds))
    return kind.strip(), kinds[kind]()


async def test_pooled_hostile_kernel_fuzz(realm, specs, server, docker_client):
    """A seeded random walk of 300+ hostile actions by three pooled kernels, across restarts, moves, new kernels.

    Replay one with ENVPIN_FUZZ_SEED=N.  Actions: folder renames and links
    (alice can move and relink her nested notebook folder), planted packages,
    ``sitecustomize.py`` and ``.pth`` files, files, trees and links in the
    control and socket folders, reads of vaults and of other kernels' keys
    (directly and through ``/proc``), hostile ``%use_image`` requests.
    Between rounds a restart, a move, a pin or a new kernel of a folder, with
    a relinked folder left in place most of the time (that kernel's restart or
    move must then be refused, or use its pinned folder).  Asserted
    throughout: no vault outside a kernel's own folder changes or is read, no
    kernel reads another's key, nothing planted runs, the event loop never
    stalls over 0.2 s; at the end nothing of the run is left on the engine.
    """
    seed = int(os.environ.get("ENVPIN_FUZZ_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"pooled hostile-kernel fuzz seed {seed} (replay: ENVPIN_FUZZ_SEED={seed})")
    before = await envpin_container_ids(docker_client)
    spec = {"alice": specs.alice, "nested": specs.alice, "bob": specs.bob}
    live: dict[str, Kernel] = {}
    for label in ("alice", "nested", "bob"):
        live[label] = await server.start(label, spec[label], realm.folders[label] / f"{label}.ipynb")
    ticker = Ticker().start()  # from here on, every start, restart, move and shutdown happens under its eye
    ticker.phase = "actions"
    figures: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    refusals: list[str] = []

    async def replace(label: str) -> None:
        """A new kernel for ``label``'s notebook (from the pool when one waits), its folder put back first."""
        await asyncio.to_thread(realm.restore)
        try:
            await server.shutdown(live[label], now=True)
        except Exception as exc:  # a kernel whose restart was refused may be half gone
            refusals.append(f"shutdown of a refused {label}: {type(exc).__name__}")
        live[label] = await server.start(
            label, spec[label], realm.folders[label] / f"{label}-{uuid.uuid4().hex[:4]}.ipynb"
        )
        figures["new kernels"] += 1

    async def lifecycle(label: str, event: str) -> None:
        kernel, displaced = live[label], realm.displaced(label)
        # A kernel that filled its own quota cannot bind its sockets or ask for a move: its own loss, not the
        # server's. It keeps some of its junk (1000 files, a deep tree) across the restart or move.
        # Its image now, from itself: a restart after its pin file was replaced starts it in the kernelspec's.
        res = await kernel.run("trim(CONTROL); trim(SOCK); print(sys.version_info[:2] == (3, 13))", timeout=60)
        assert res["status"] == "ok", res
        image = PY313 if res["stdout"].split()[-1] == "True" else PY311
        try:
            if event == "restart":
                await server.restart(kernel)
                res = None
            elif event == "move":
                target = PY313 if image == PY311 else PY311
                res = await kernel.run(f"%load_ext envpin\n%use_image {target} --restart", timeout=120)
                if res["status"] == "ok":
                    await kernel.kc.wait_for_ready(timeout=60)
                    await kernel.run(TOOLBOX)
            else:  # pin: the same image, recorded
                res = await kernel.run(f"%load_ext envpin\n%use_image {image}", timeout=120)
        except Exception as exc:  # allowed only for a kernel whose folder was moved: checked below
            assert displaced, f"{event} of {label} failed with its folder in place: {exc}"
            assert_clear_refusal(str(exc), realm.folders[label])
            refusals.append(f"{event} {label}: {str(exc)[:120]}")
            figures[f"{event}s refused"] += 1
            await replace(label)
            return
        if res is not None and res["status"] != "ok":
            assert displaced, f"{event} of {label} failed with its folder in place: {res}"
            assert_clear_refusal(res["evalue"] or "", realm.folders[label])
            refusals.append(f"{event} {label}: {(res['evalue'] or '')[:120]}")
            figures[f"{event}s refused"] += 1
            if event == "move":
                return  # refused before anything moved: the kernel goes on
            await replace(label)
            return
        figures[f"{event}s"] += 1
        assert_in_own_folder(realm, kernel, await kernel.probe())

    for _round in range(16):
        keys_at = [k.connection_file for k in live.values()]
        for label, kernel in list(live.items()):
            actions = [
                _pooled_attack(rng, kernel, realm, [p for p in keys_at if p != kernel.connection_file])
                for _ in range(9)
            ]
            kinds.update(kind for kind, _ in actions)
            figures["actions"] += len(actions)
            code = "\n".join(
                f"try:\n    {line}\nexcept Exception as exc:\n    print('refused', type(exc).__name__)"
                for _, line in actions
            )
            res = await kernel.run(code, timeout=180)
            assert res["status"] == "ok" and "refused NameError" not in res["stdout"], (seed, label, res)
        realm.assert_untouched()
        assert_no_leak(realm, server.kernels)
        marks, stray = await asyncio.to_thread(realm.findings)
        assert not marks and not stray, (seed, "planted code ran" if marks else "a pin file outside", marks, stray)
        # Between rounds: a hostile pin file a start would rightly refuse is cleared (tested elsewhere); a moved
        # folder is put back a quarter of the time, else left for the lifecycle events to meet.
        if rng.random() < 0.25:
            await asyncio.to_thread(realm.restore)
        await asyncio.to_thread(realm.clear_hostile_pins)
        labels = rng.sample(sorted(live), 2)
        moved = [lb for lb in sorted(live) if realm.displaced(lb)]
        if moved and rng.random() < 0.9:  # meet a moved folder more often than chance would
            labels[0] = rng.choice(moved)
        for label in dict.fromkeys(labels):
            event = rng.choice(["restart", "restart", "move", "move", "pin", "new"])
            if event != "new" and realm.displaced(label):
                figures["events on a moved folder"] += 1
            ticker.phase = event
            if event == "new":
                await replace(label)
                assert_in_own_folder(realm, live[label], await live[label].probe())
            else:
                await lifecycle(label, event)
            ticker.phase = "actions"
            realm.assert_untouched()
    # Every kernel, at the end, in its own folder with nothing planted run.
    await asyncio.to_thread(realm.restore)
    for kernel in live.values():
        assert_in_own_folder(realm, kernel, await kernel.probe())
    realm.assert_untouched()
    assert_no_leak(realm, server.kernels)
    ticker.phase = "final shutdown"
    await server.close()  # the shutdowns remove the flooded channel folders: still under the ticker
    stall = await ticker.stop()
    await assert_nothing_left(docker_client, before)
    print(
        f"pooled fuzz: {figures['actions']} hostile actions by {len(server.kernels)} kernels (2 users); "
        f"{figures['restarts']} restarts, {figures['moves']} moves, {figures['pins']} pins, "
        f"{figures['new kernels']} new kernels; {figures['events on a moved folder']} restarts/moves/pins met a moved folder, "
        f"refused: {sum(v for k, v in figures.items() if 'refused' in k)} "
        f"({refusals}); max event-loop stall {stall * 1000:.0f} ms over {ticker.ticks} ticks "
        f"(by phase, ms: { {k: round(v * 1000) for k, v in ticker.by_phase.items()} }); "
        f"actions by kind: {dict(kinds)}"
    )
    assert figures["actions"] >= 300
    assert stall < STALL_LIMIT, f"the server's event loop stalled {stall:.2f} s (seed {seed})"
