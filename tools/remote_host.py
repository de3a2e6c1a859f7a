"""Another machine, made on this one: a Docker engine reached over SSH or TCP+TLS, as a real remote host is.

envpin's remote-engine support (issue 28) needs a second engine that shares
nothing with the Jupyter server's machine but the wire.  Made here, as root,
with nothing from outside:

* its **network**: a network namespace ``envpin-rh-NAME`` and a veth pair on a
  private /30 (``10.231.N.1`` on this side, ``10.231.N.2`` on the remote's
  ``eth0``); no default route, so the remote host and its containers reach
  this machine's side of the pair and nothing else;
* its **files**: a private mount namespace (with its own PID, UTS and IPC
  namespaces, its own ``/proc``) in which this machine's ``/work``, ``/root``,
  ``/home``, ``/tmp``, ``/run``, ``/opt``, ..., the checkout and the venv are
  hidden under empty tmpfs mounts; ``/etc/passwd``, ``group`` and ``shadow``
  are private copies that add the remote user; ``/var/lib/docker`` is the
  remote engine's own data root (kept in the dev cache, so loaded images
  survive between runs);
* its **engine**: ``dockerd`` on ``unix:///run/docker.sock`` (inside) and
  ``tcp://10.231.N.2:2376`` with ``--tlsverify`` and certificates made here
  with ``openssl`` (a CA, a server certificate for the IP, a client
  certificate), its containers in their own cgroup parent;
* its **sshd**: Debian's openssh-server on ``10.231.N.2:22``, public keys only,
  for the user ``envpin-remote`` (member of that engine's ``docker`` group),
  who finds the docker CLI on PATH there: docker's SSH transport runs
  ``docker system dial-stdio`` on the remote host;
* with ``podman=True``, its user's **rootless Podman** as well: subordinate
  ids in a private ``/etc/subuid``/``subgid``, ``/run/user/UID``, storage in
  the cache (bound over ``/var/lib/containers``), and ``podman system service``
  as that user on ``/run/user/UID/podman/podman.sock``, which the client
  reaches as ``ssh://envpin-remote@ADDR/run/user/UID/podman/podman.sock``;
* the **client side**: a private folder laid out as a home (``.ssh/config``,
  ``id_ed25519``, ``known_hosts``; ``bin/ssh`` passing that config to OpenSSH,
  which reads the passwd home and ignores ``$HOME``) and ``tls/`` laid out
  for ``DOCKER_CERT_PATH``.  Nothing is written to this machine's ``~/.ssh``.

Everything is bounded (each start step has a deadline; a failure names the
log) and ``stop()`` leaves the machine as it was: containers removed, sshd and
dockerd stopped (then the namespace's init killed, which kills whatever is
left in it), the mount namespace gone with its last process, the netns and
veth deleted, the cgroup parent and the private folders removed.  Nothing
listens on an address of this machine: the listeners are inside the
namespace, on its end of the pair.

As a context manager (``with RemoteHost("rh0", images=[...]) as host:``) or by
hand: ``python -m tools.remote_host up`` (prints the environment to use, runs
until Ctrl-C) and ``python -m tools.remote_host down`` (clears one a killed
process left behind).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tools.docker_engine import apt_install

REPO = Path(__file__).resolve().parent.parent
#: Host-side private folders of each remote host (client keys and certificates, the remote's config, logs).
RUN_ROOT = Path("/run/envpin-remote-host")
#: The remote engines' data roots (images loaded once, reused): beside tools/images.py's cache.
CACHE_ROOT = Path(os.environ.get("ENVPIN_DEV_CACHE", Path.home() / ".cache" / "envpin-dev")) / "remote-host"
USER = "envpin-remote"
SSH_PORT = 22
TLS_PORT = 2376
#: This machine's folders the remote host must not see (those that exist are hidden under an empty tmpfs),
#: plus, at start, the checkout, the running Python's prefix (the venv) and $HOME wherever they are.
HIDDEN = ("/work", "/root", "/home", "/tmp", "/var/tmp", "/opt", "/srv", "/mnt", "/media", "/dev/shm")
#: The remote user's subordinate ids (``podman=True``): beside this machine's ranges in its private /etc/subuid.
SUBID_START, SUBID_COUNT = 400000, 65536
#: Where the remote user's rootless Podman keeps images (the cache's ``podman/`` is bound over this folder there).
PODMAN_ROOT = "/var/lib/containers"
_NAME = re.compile(r"^[a-z0-9]{1,8}$")


def _say(msg: str) -> None:
    print(f"[envpin remote host] {msg}", file=sys.stderr, flush=True)


class RemoteHostError(RuntimeError):
    """The remote host could not be made or stopped; the message names the step and its log."""


def _run(argv: Sequence[str], timeout: float = 30, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and done.returncode != 0:
        raise RemoteHostError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _deadline_loop(timeout: float, interval: float = 0.2) -> Iterator[None]:
    end = time.monotonic() + timeout
    while True:
        yield
        if time.monotonic() >= end:
            return
        time.sleep(interval)


class RemoteHost:
    """One simulated remote machine; see the module's docstring.

    ``name``: 1-8 of ``[a-z0-9]``; names the netns, the veth, the cgroup, the
    folders.  ``index`` (0-255) picks the /30 ``10.231.index.0`` (default: from
    the name).  ``images``: loaded from the local engine into the remote one
    at start (again only when the local id changed).  ``podman``: the remote
    user's rootless Podman too (``podman_url``), ``images`` loaded into it as well.
    """

    def __init__(
        self, name: str = "rh0", *, index: int | None = None, images: Iterable[str] = (), podman: bool = False
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"remote host name {name!r}: use 1-8 characters of a-z and 0-9")
        self.name = name
        self.index = zlib.crc32(name.encode()) % 200 + 20 if index is None else index
        if not 0 <= self.index <= 255:
            raise ValueError(f"index {index} is not 0-255")
        self.images = tuple(images)
        self.podman = podman  #: also rootless Podman for the remote user, its API socket at ``podman_socket``
        self.netns = f"envpin-rh-{name}"
        self.veth = f"rh-{name}"  # this machine's end; the remote's end is called eth0 inside
        self.address = f"10.231.{self.index}.2"
        self.host_address = f"10.231.{self.index}.1"
        self.hostname = f"envpin-remote-{name}"  # also the ssh config's Host alias
        self.cgroup_parent = f"/envpin-remote-{name}"
        self.run_dir = RUN_ROOT / name
        self.client_home = self.run_dir / "client"  #: a home for the client side: .ssh/, bin/ssh
        self.cert_path = self.client_home / "tls"  #: DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem
        self.log_dir = self.run_dir / "log"
        self.cache_dir = CACHE_ROOT / name
        self.data_root = self.cache_dir / "docker"
        self.podman_root = self.cache_dir / "podman"  #: bound over PODMAN_ROOT there; storage/ is the user's
        self._remote = self.run_dir / "remote"  # the remote's own files, copied in at start
        self._proc: subprocess.Popen | None = None
        self._init_pid: int | None = None  # the namespace's PID 1 (tini), as this machine numbers it
        self._lock_fd: int | None = None
        self._ns_ids: dict[str, str] = {}
        self._made_netns_mount = False
        self._uid: int | None = None

    # ---- what a client uses ----------------------------------------------------------------------

    @property
    def ssh_url(self) -> str:
        """``ssh://envpin-remote@10.231.N.2``: what ``DOCKER_HOST`` says for the SSH transport."""
        return f"ssh://{USER}@{self.address}"

    @property
    def tcp_url(self) -> str:
        """``tcp://10.231.N.2:2376``: the TLS endpoint (with ``DOCKER_TLS_VERIFY=1`` and ``DOCKER_CERT_PATH``)."""
        return f"tcp://{self.address}:{TLS_PORT}"

    @property
    def ssh_config(self) -> Path:
        return self.client_home / ".ssh" / "config"

    @property
    def ssh_bin(self) -> Path:
        """A ``ssh`` that reads ``ssh_config`` (put its folder first on PATH for ``use_ssh_client=True``)."""
        return self.client_home / "bin" / "ssh"

    def client_env(self, transport: str = "ssh") -> dict[str, str]:
        """Environment variables a client of this host sets, added to the caller's own.

        ``ssh``: ``DOCKER_HOST=ssh://...``, ``HOME`` (paramiko reads
        ``~/.ssh/config`` and ``known_hosts`` through it) and ``PATH`` with
        ``bin/ssh`` first (OpenSSH, which ignores ``$HOME``).  ``tls``:
        ``DOCKER_HOST=tcp://...:2376``, ``DOCKER_TLS_VERIFY=1``, ``DOCKER_CERT_PATH``.
        """
        if transport == "ssh":
            return {
                "DOCKER_HOST": self.ssh_url,
                "HOME": str(self.client_home),
                "PATH": f"{self.ssh_bin.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            }
        if transport == "tls":
            return {"DOCKER_HOST": self.tcp_url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.cert_path)}
        raise ValueError(f"transport {transport!r}: use 'ssh' or 'tls'")

    def tls_config(self) -> Any:
        """A ``docker.tls.TLSConfig`` with the client certificate, verifying the server against the CA."""
        import docker.tls

        return docker.tls.TLSConfig(
            client_cert=(str(self.cert_path / "cert.pem"), str(self.cert_path / "key.pem")),
            ca_cert=str(self.cert_path / "ca.pem"),
            verify=True,
        )

    def docker_client(self, transport: str = "admin", timeout: int = 60) -> Any:
        """A ``docker.DockerClient`` for this engine.

        ``admin``: its unix socket inside the namespace, through
        ``/proc/PID/root`` (for setup and inspection; not how a user reaches
        it); ``podman``: the same for the remote user's rootless Podman.  ``tls``: ``tcp://...:2376`` with ``tls_config()`` and
        ``trust_env`` off (see the comment there).  ``ssh`` /
        ``ssh-paramiko``: ``ssh://envpin-remote@...`` shelling out to OpenSSH /
        through paramiko; both need the environment of ``client_env("ssh")``
        in ``os.environ`` (docker-py reads it there), and docker-py needs
        paramiko importable for either (``docker[ssh]``).
        """
        import docker

        if transport == "admin":
            return docker.DockerClient(base_url=f"unix://{self.admin_socket}", timeout=timeout)
        if transport == "podman":
            if not self.podman:
                raise RemoteHostError(f"remote host {self.name} was made without podman=True")
            return docker.DockerClient(base_url=f"unix://{self.podman_admin_socket}", timeout=timeout)
        if transport == "tls":
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set on these machines) replace the session's CA
            # (docker/docker-py#2433): the engine's CA would be ignored, so trust_env goes off before the first
            # request; the client's first request is the version negotiation, hence the fixed version first.
            import docker.constants

            client = docker.DockerClient(
                base_url=self.tcp_url,
                tls=self.tls_config(),
                timeout=timeout,
                version=docker.constants.MINIMUM_DOCKER_API_VERSION,
            )
            client.api.trust_env = False
            client.api._version = client.api.version(api_version=False)["ApiVersion"]
            return client
        if transport in ("ssh", "ssh-paramiko"):
            return docker.DockerClient(base_url=self.ssh_url, use_ssh_client=transport == "ssh", timeout=timeout)
        raise ValueError(f"transport {transport!r}: use 'admin', 'podman', 'tls', 'ssh' or 'ssh-paramiko'")

    @property
    def pid(self) -> int:
        """A process (as this machine numbers it) in all of the remote host's namespaces: ``/proc/PID/...`` looks inside."""
        if self._proc is None:
            raise RemoteHostError(f"remote host {self.name} is not running")
        return self._proc.pid

    @property
    def admin_socket(self) -> str:
        return f"/proc/{self.pid}/root/run/docker.sock"

    @property
    def uid(self) -> int:
        """The remote user's uid (and gid) there."""
        if self._uid is None:
            raise RemoteHostError(f"remote host {self.name} is not running")
        return self._uid

    @property
    def podman_socket(self) -> str:
        """The remote user's rootless Podman API socket, as that host names it (``podman=True``)."""
        return f"/run/user/{self.uid}/podman/podman.sock"

    @property
    def podman_url(self) -> str:
        """``ssh://envpin-remote@10.231.N.2/run/user/UID/podman/podman.sock``: Podman's own URL form."""
        return f"{self.ssh_url}{self.podman_socket}"

    @property
    def podman_admin_socket(self) -> str:
        return f"/proc/{self.pid}/root{self.podman_socket}"

    def run(self, argv: Sequence[str], *, as_user: bool = True, timeout: float = 60, **kw: Any):
        """Run ``argv`` on the remote host (its namespaces; as ``envpin-remote`` unless ``as_user=False``).

        Not through SSH: this is the test's view from inside, e.g. to check
        which files the remote host sees.  Returns the CompletedProcess.
        """
        if self._init_pid is None:
            raise RemoteHostError(f"remote host {self.name} is not running")
        enter = ["nsenter", f"--target={self._init_pid}", "--mount", "--net", "--pid", "--uts", "--ipc", "--"]
        home = f"/home/{USER}" if as_user else "/root"
        env = ["env", "-i", f"HOME={home}", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG=C.UTF-8"]
        user = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"] if as_user else []
        return subprocess.run([*enter, *user, *env, *argv], timeout=timeout, **kw)

    # ---- start -----------------------------------------------------------------------------------

    def __enter__(self) -> RemoteHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> RemoteHost:
        """Make the host, start its engine and sshd, wait until both answer, load ``images``."""
        if os.geteuid() != 0:
            raise RemoteHostError("a remote host needs root (network and mount namespaces, a second dockerd)")
        wanted = [("openssh-server", "sshd"), ("tini", "tini"), ("openssl", "openssl")]
        if self.podman:
            wanted += [("podman", "podman"), ("uidmap", "newuidmap"), ("slirp4netns", "slirp4netns")]
        for package, command in wanted:
            self._install(package, command)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.cache_dir, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise RemoteHostError(
                f"remote host {self.name} is in use by another process (it holds a lock on {self.cache_dir})"
            ) from None
        try:
            clear(self.name)  # what a killed run of the same name left
            self._check_address_free()
            self._write_files()
            self._make_network()
            self._launch()
            self._wait_ready(timeout)
            self._fresh_engine()
            if self.images:
                self.load_images(self.images)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _install(package: str, command: str) -> None:
        """apt_install, with services kept from starting (Debian's openssh-server would listen on 0.0.0.0:22)."""
        if shutil.which(command):
            return
        policy = Path("/usr/sbin/policy-rc.d")
        made = not policy.exists()
        if made:
            policy.write_text(
                "#!/bin/sh\n# envpin tools/remote_host.py: no service starts during its install\nexit 101\n"
            )
            policy.chmod(0o755)
        try:
            apt_install(package, command)
        finally:
            if made:
                policy.unlink()

    def _check_address_free(self) -> None:
        shown = _run(["ip", "-o", "-4", "addr", "show"]).stdout
        if re.search(rf"\binet {re.escape(self.host_address)}/", shown):
            raise RemoteHostError(
                f"{self.host_address} is already on an interface of this machine (another remote host with "
                f"index {self.index}?): pick another index"
            )

    def _write_files(self) -> None:
        for d in (self.client_home / ".ssh", self.ssh_bin.parent, self.cert_path, self.log_dir, self._remote / "etc"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        ssh_dir = self.client_home / ".ssh"
        ssh_dir.chmod(0o700)
        remote = self._remote
        # keys: the client's (the test's) and the remote sshd's host key
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"envpin-test@{self.name}",
                "-f",
                str(ssh_dir / "id_ed25519"),
            ]
        )
        _run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                self.hostname,
                "-f",
                str(remote / "ssh_host_ed25519_key"),
            ]
        )
        host_key = (remote / "ssh_host_ed25519_key.pub").read_text().split()
        (ssh_dir / "known_hosts").write_text(f"{self.address},{self.hostname} {host_key[0]} {host_key[1]}\n")
        (remote / "authorized_keys").write_text((ssh_dir / "id_ed25519.pub").read_text())
        identity, known = ssh_dir / "id_ed25519", ssh_dir / "known_hosts"
        self.ssh_config.write_text(
            f"# envpin tools/remote_host.py: the client side of remote host {self.name}\n"
            f"Host {self.hostname} {self.address}\n"
            f"  HostName {self.address}\n  Port {SSH_PORT}\n  User {USER}\n"
            f"  IdentityFile {identity}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  ConnectTimeout 5\n  ServerAliveInterval 2\n  ServerAliveCountMax 3\n"
            "  ControlMaster no\n  LogLevel ERROR\n"
        )
        self.ssh_bin.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {shlex.quote(str(self.ssh_config))} "$@"\n')
        self.ssh_bin.chmod(0o755)
        self._write_accounts()  # the uid first: sshd's config names the user's runtime folder
        (remote / "sshd_config").write_text(
            f"ListenAddress {self.address}:{SSH_PORT}\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nPidFile /run/sshd.pid\n"
            "AuthenticationMethods publickey\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\n"
            + (
                f"SetEnv XDG_RUNTIME_DIR=/run/user/{self._uid}\n" if self.podman else ""
            )  # pam_systemd's, on a real host
            + f"AllowUsers {USER}\nAuthorizedKeysFile /etc/ssh/authorized_keys/%u\nStrictModes yes\n"
            "AllowTcpForwarding yes\nAllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n"
            "X11Forwarding no\nPrintMotd no\nLogLevel VERBOSE\n"
        )
        self._make_certificates()
        if self.podman:
            self._write_podman_files()

    def _write_podman_files(self) -> None:
        """Subordinate ids for the remote user, its Podman config, and its storage in the cache (kept for images).

        The storage is made for one uid and one subordinate range: when the
        accounts came out differently (another machine's passwd), it starts
        empty rather than with layers owned by ids that mean nothing now.
        """
        uid, etc = self.uid, self._remote / "etc"
        mine = f"{USER}:{SUBID_START}:{SUBID_COUNT}"
        for name in ("subuid", "subgid"):
            here = Path("/etc", name)
            lines = [
                ln for ln in (here.read_text().splitlines() if here.exists() else []) if not ln.startswith(f"{USER}:")
            ]
            (etc / name).write_text("\n".join([*lines, mine]) + "\n")
        config = self.podman_root / "config"  # (copied to the user's ~/.config/containers there)
        config.mkdir(parents=True, exist_ok=True)
        (config / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{PODMAN_ROOT}/storage"\nrunroot = "/run/user/{uid}/containers"\n'
        )
        # No systemd in there (as on a host without a user session): cgroupfs, and events in a file.
        (config / "containers.conf").write_text('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')
        Path(PODMAN_ROOT).mkdir(mode=0o700, exist_ok=True)  # Podman's own folder (the mount point there)
        stamp, want = self.podman_root / "owner", f"{uid} {mine}\n"
        if stamp.exists() and stamp.read_text() != want:
            shutil.rmtree(self.podman_root / "storage", ignore_errors=True)
        (self.podman_root / "storage").mkdir(parents=True, exist_ok=True)
        os.chmod(self.podman_root, 0o755)
        os.chown(self.podman_root / "storage", uid, uid)
        os.chmod(self.podman_root / "storage", 0o700)
        stamp.write_text(want)

    def _make_certificates(self) -> None:
        """A CA, a server certificate for the address (SAN IP), a client certificate; ECDSA P-256, two days."""
        tls = self._remote / "tls"
        tls.mkdir(exist_ok=True)
        key = ["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
        _run([*key, str(tls / "ca-key.pem")])
        _run(
            ["openssl", "req", "-x509", "-new", "-key", str(tls / "ca-key.pem"), "-sha256", "-days", "2"]
            + ["-subj", f"/CN=envpin remote host {self.name} CA"]
            + ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
            + ["-out", str(tls / "ca.pem")]
        )
        for who, cn, ext in (
            (
                "server",
                self.address,
                f"subjectAltName=IP:{self.address},DNS:{self.hostname}\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", f"envpin-test@{self.name}", "extendedKeyUsage=clientAuth\n"),
        ):
            _run([*key, str(tls / f"{who}-key.pem")])
            _run(
                [
                    "openssl",
                    "req",
                    "-new",
                    "-key",
                    str(tls / f"{who}-key.pem"),
                    "-subj",
                    f"/CN={cn}",
                    "-out",
                    str(tls / f"{who}.csr"),
                ]
            )
            (tls / f"{who}.ext").write_text(ext + "keyUsage=critical,digitalSignature\n")
            _run(
                ["openssl", "x509", "-req", "-in", str(tls / f"{who}.csr"), "-CA", str(tls / "ca.pem")]
                + ["-CAkey", str(tls / "ca-key.pem"), "-set_serial", str(int.from_bytes(os.urandom(8), "big"))]
                + ["-days", "2", "-sha256", "-extfile", str(tls / f"{who}.ext"), "-out", str(tls / f"{who}-cert.pem")]
            )
        shutil.copy(tls / "ca.pem", self.cert_path / "ca.pem")
        shutil.copy(tls / "client-cert.pem", self.cert_path / "cert.pem")
        shutil.copy(tls / "client-key.pem", self.cert_path / "key.pem")
        (self.cert_path / "key.pem").chmod(0o600)

    def _write_accounts(self) -> None:
        """Private passwd/group/shadow: this machine's, plus the remote user and its membership of ``docker``."""
        etc = self._remote / "etc"
        passwd = Path("/etc/passwd").read_text().splitlines()
        groups = Path("/etc/group").read_text().splitlines()
        used_uids = {int(line.split(":")[2]) for line in passwd if line.count(":") >= 6}
        used_gids = {int(line.split(":")[2]) for line in groups if line.count(":") >= 3}
        uid = next(i for i in range(4600, 60000) if i not in used_uids and i not in used_gids)
        passwd = [line for line in passwd if not line.startswith(f"{USER}:")]
        passwd.append(f"{USER}:x:{uid}:{uid}:envpin remote user:/home/{USER}:/bin/sh")
        out_groups, has_docker = [], False
        for line in groups:
            if line.startswith(f"{USER}:"):
                continue
            if line.startswith("docker:"):
                has_docker = True
                members = [m for m in line.split(":")[3].split(",") if m]
                line = ":".join(line.split(":")[:3] + [",".join([*members, USER])])
            out_groups.append(line)
        out_groups.append(f"{USER}:x:{uid}:")
        if not has_docker:
            gid = next(i for i in range(4700, 60000) if i not in used_gids and i != uid)
            out_groups.append(f"docker:x:{gid}:{USER}")
        shadow = [line for line in Path("/etc/shadow").read_text().splitlines() if not line.startswith(f"{USER}:")]
        shadow.append(f"{USER}:*:20000:0:99999:7:::")  # '*': no password, and not locked (sshd refuses '!')
        (etc / "passwd").write_text("\n".join(passwd) + "\n")
        (etc / "group").write_text("\n".join(out_groups) + "\n")
        (etc / "shadow").write_text("\n".join(shadow) + "\n")
        (etc / "shadow").chmod(0o640)
        self._uid = uid

    def _make_network(self) -> None:
        self._made_netns_mount = not _is_mountpoint("/run/netns")
        peer = f"{self.veth}-r"
        ns = ["ip", "-n", self.netns]
        for argv in (
            ["ip", "netns", "add", self.netns],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", peer, "netns", self.netns],
            [*ns, "link", "set", peer, "name", "eth0"],
            ["ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            [*ns, "addr", "add", f"{self.address}/30", "dev", "eth0"],
            [*ns, "link", "set", "eth0", "up"],
            [*ns, "link", "set", "lo", "up"],
        ):
            _run(argv)

    def _hidden(self) -> list[str]:
        """The folders to hide that exist, outermost only (a folder inside a hidden one is gone already)."""
        # A folder hidden under a tmpfs still exists (as an empty mount point), so for the checkout, the
        # venv and $HOME the hidden folder is the top-level one that holds them (``/check`` for a checkout
        # at ``/check/work/main``), or their parent when that top-level folder is the system's own.
        wanted = [
            *HIDDEN,
            *(_container_of(os.path.realpath(p)) for p in (str(REPO), sys.prefix, os.path.expanduser("~"))),
        ]
        chosen: list[str] = []
        for path in sorted({os.path.realpath(p) for p in wanted}, key=len):
            if path != "/" and os.path.isdir(path) and not any(path == c or path.startswith(c + "/") for c in chosen):
                chosen.append(path)
        return chosen

    def _init_script(self) -> str:
        """What PID 1's shell does in the new namespaces: lay out the remote's files, start dockerd and sshd.

        Runs with ``sh -c`` (nothing to read from a folder it is about to
        hide).  Order matters: everything taken from this machine (the data
        root, the private account files, the config) is bound or copied in
        before the folders that hold it are hidden.
        """
        q = shlex.quote
        r = q(str(self._remote))
        lines = [
            "set -eu",
            f"exec 3>>{q(str(self.log_dir / 'dockerd.log'))} 4>>{q(str(self.log_dir / 'sshd.log'))}"
            f" 5>>{q(str(self.log_dir / 'podman.log'))}",
            f"hostname {q(self.hostname)}",
            f"mount --bind {q(str(self.data_root))} /var/lib/docker",
            *(f"mount --bind {r}/etc/{f} /etc/{f}" for f in ("passwd", "group", "shadow")),
            *self._podman_binds(),
            "mount -t tmpfs -o mode=755 envpin-remote-etc /etc/ssh",
            f"cp {r}/sshd_config {r}/ssh_host_ed25519_key {r}/ssh_host_ed25519_key.pub /etc/ssh/",
            "chmod 600 /etc/ssh/ssh_host_ed25519_key && mkdir -m 755 /etc/ssh/authorized_keys",
            f"cp {r}/authorized_keys /etc/ssh/authorized_keys/{USER} && chmod 644 /etc/ssh/authorized_keys/{USER}",
            "mount -t tmpfs -o mode=755 envpin-remote-etc /etc/docker",
            f"cp {r}/tls/ca.pem {r}/tls/server-cert.pem {r}/tls/server-key.pem /etc/docker/ && echo '{{}}' > /etc/docker/daemon.json",
        ]
        if os.path.isdir("/var/lib/containerd"):
            lines.append("mount -t tmpfs -o mode=711 envpin-remote /var/lib/containerd")
        for path in self._hidden():
            mode = "1777" if path in ("/tmp", "/var/tmp", "/dev/shm") else "700" if path == "/root" else "755"
            lines.append(f"mount -t tmpfs -o mode={mode} envpin-remote-hidden {q(path)}")
        lines += [
            "mount -t tmpfs -o mode=755 envpin-remote-run /run && mkdir -m 755 /run/sshd",
            f"mkdir -m 755 /home/{USER} && chown {USER}:{USER} /home/{USER}",
            f"{self._dockerd_command()} >&3 2>&3 &",
            "d=$!",
            "/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config >&4 2>&4 &",
            "s=$!",
            *self._podman_start(),
            # SIGTERM from stop(): sshd, podman and dockerd first (dockerd stops its containerd), then PID 1 exits
            'trap \'kill -TERM "$s" "$d" ${p:-} 2>/dev/null; wait "$d"; exit 0\' TERM INT',
            "wait",
        ]
        return "\n".join(lines) + "\n"

    def _podman_binds(self) -> list[str]:
        """Before this machine's folders are hidden: the user's subordinate ids, and its storage from the cache."""
        if not self.podman:
            return []
        r = shlex.quote(str(self._remote))
        return [
            f"mount --bind {r}/etc/subuid /etc/subuid",
            f"mount --bind {r}/etc/subgid /etc/subgid",
            f"mount --bind {shlex.quote(str(self.podman_root))} {PODMAN_ROOT}",  # hides this machine's as well
        ]

    def _podman_start(self) -> list[str]:
        """After: the user's runtime folder and config, then ``podman system service`` as that user (log: podman.log)."""
        if not self.podman:
            return []
        uid, home = self.uid, f"/home/{USER}"
        runtime = f"/run/user/{uid}"
        env = f"HOME={home} USER={USER} LOGNAME={USER} PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR={runtime} LANG=C.UTF-8"
        return [
            f"mkdir -p {runtime}/podman && chown -R {uid}:{uid} /run/user/{uid} && chmod 700 {runtime}",
            f"mkdir -p {home}/.config && cp -r {PODMAN_ROOT}/config {home}/.config/containers",
            f"chown -R {uid}:{uid} {home}/.config",
            f"cd {home} && setpriv --reuid={uid} --regid={uid} --init-groups -- env -i {env}"
            f" podman system service --time=0 unix://{self.podman_socket} >&5 2>&5 &",
            "p=$!",
            "cd /",
        ]

    def _dockerd_command(self) -> str:
        return (
            "dockerd --data-root /var/lib/docker --exec-root /run/docker --pidfile /run/docker.pid"
            " --config-file /etc/docker/daemon.json --group docker"
            f" -H unix:///run/docker.sock -H tcp://{self.address}:{TLS_PORT} --tlsverify"
            " --tlscacert /etc/docker/ca.pem --tlscert /etc/docker/server-cert.pem --tlskey /etc/docker/server-key.pem"
            f" --cgroup-parent {shlex.quote(self.cgroup_parent)}"
        )

    def stop_engine(self, timeout: float = 30) -> None:
        """Stop the remote dockerd (its containers stop with it; sshd stays): "the engine went away"."""
        done = self.run(["cat", "/run/docker.pid"], as_user=False, capture_output=True, text=True)
        pid = done.stdout.strip()
        if not pid.isdigit():
            raise RemoteHostError(f"the remote dockerd of {self.name} is not running (no pid file)")
        self.run(["kill", pid], as_user=False)
        # Its socket goes first, the process later (it stops its containers): wait for the process, or a
        # dockerd started meanwhile finds the pid file and exits.
        for _ in _deadline_loop(timeout):
            if self.run(["kill", "-0", pid], as_user=False, capture_output=True).returncode != 0:
                return
        raise RemoteHostError(f"the remote dockerd of {self.name} did not stop within {timeout:.0f}s")

    def start_engine(self, timeout: float = 60) -> None:
        """Start the remote dockerd again (after :meth:`stop_engine`), and wait until it answers on both sockets."""
        # (its log folder is a path of this machine, hidden over there: the first dockerd had it as fd 3)
        log = "/run/envpin-dockerd-again.log"
        self.run(["sh", "-c", f"setsid {self._dockerd_command()} >{log} 2>&1 </dev/null &"], as_user=False)
        try:
            self._wait_ready(timeout)
        except RemoteHostError as exc:
            done = self.run(["tail", "-n", "15", log], as_user=False, capture_output=True, text=True)
            raise RemoteHostError(f"{exc}\nthe restarted dockerd said:\n{done.stdout}") from None

    def _launch(self) -> None:
        self.data_root.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "init.log", "ab")
        try:
            self._proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
                + [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                    "--uts",
                    "--ipc",
                ]
                + ["--kill-child", "--", "tini", "--", "/bin/sh", "-c", self._init_script()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # the test's Ctrl-C does not reach it: stop() ends it in order
            )
        finally:
            log.close()
        pid = self._proc.pid
        for _ in _deadline_loop(10, 0.05):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            try:
                found = children.read_text().split()
            except OSError:
                found = []
            if found:
                self._init_pid = int(found[0])
                break
            if self._proc.poll() is not None:
                break
        if self._init_pid is None:
            raise RemoteHostError(
                f"the remote host's namespaces did not start; {self.log_dir / 'init.log'}:\n{_tail(self.log_dir / 'init.log')}"
            )
        self._ns_ids = {kind: os.readlink(f"/proc/{self._init_pid}/ns/{kind}") for kind in ("mnt", "pid", "net")}

    def _wait_ready(self, timeout: float) -> None:
        """Each listener answers, within ``timeout`` for all: the admin socket, TLS, then SSH end to end."""
        import docker.errors
        import requests.exceptions

        end = time.monotonic() + timeout

        def pings(transport: str) -> Any:
            def probe() -> bool:
                client = self.docker_client(transport, timeout=3)
                try:
                    return bool(client.ping())
                finally:
                    client.close()

            return probe

        steps = (
            ("dockerd on its unix socket", "dockerd.log", pings("admin")),
            (f"dockerd over TLS on {self.tcp_url}", "dockerd.log", pings("tls")),
            (f"sshd on {self.address}:{SSH_PORT}", "sshd.log", self._ssh_answers),
        )
        if self.podman:
            steps += ((f"rootless podman on {self.podman_socket}", "podman.log", pings("podman")),)
        for what, log, probe in steps:
            last: BaseException | None = None
            while True:
                if self._proc is not None and self._proc.poll() is not None:
                    raise RemoteHostError(
                        f"the remote host {self.name} stopped while waiting for {what}; "
                        f"{self.log_dir / log}:\n{_tail(self.log_dir / log)}\ninit: {_tail(self.log_dir / 'init.log', 5)}"
                    )
                try:
                    if probe():
                        break
                except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
                    last = e
                if time.monotonic() > end:
                    raise RemoteHostError(
                        f"{what} did not answer within {timeout:.0f}s (last: {last}); "
                        f"{self.log_dir / log}:\n{_tail(self.log_dir / log)}"
                    )
                time.sleep(0.2)

    def _ssh_answers(self) -> bool:
        """``ssh alias docker version`` with the client config: key auth, known host and the engine behind it."""
        done = _run(
            [str(self.ssh_bin), self.hostname, "docker", "version", "--format", "{{.Server.Version}}"],
            timeout=15,
            check=False,
        )
        return done.returncode == 0 and bool(done.stdout.strip())

    def _fresh_engine(self) -> None:
        """The data roots are kept for their images: remove what an earlier run left in them (containers, volumes)."""
        for transport in ("admin", "podman") if self.podman else ("admin",):
            client = self.docker_client(transport, timeout=60)
            try:
                for c in client.containers.list(all=True, ignore_removed=True):
                    c.remove(force=True)
                client.volumes.prune()
                client.networks.prune()
            finally:
                client.close()

    def load_images(self, images: Iterable[str]) -> None:
        """Copy ``images`` from the local engine (``DOCKER_HOST`` as set) into this one, unless already there.

        ``docker save | docker load`` through the SDK, streamed; an image is
        loaded again only when its id differs (the data root is kept).
        """
        import docker
        import docker.errors

        local = docker.from_env(timeout=300)
        try:
            for transport in ("admin", "podman") if self.podman else ("admin",):
                remote = self.docker_client(transport, timeout=300)
                try:
                    for ref in images:
                        want = local.images.get(ref).id
                        try:
                            if remote.images.get(ref).id == want:
                                continue
                        except docker.errors.ImageNotFound:
                            pass
                        engine = "rootless podman" if transport == "podman" else "dockerd"
                        _say(f"loading {ref} into remote host {self.name}'s {engine} ...")
                        remote.images.load(local.api.get_image(ref))
                        if remote.images.get(ref).id != want:
                            raise RemoteHostError(f"{ref} was loaded into remote host {self.name} but its id differs")
                finally:
                    remote.close()
        finally:
            local.close()

    # ---- stop --------------------------------------------------------------------------------------

    def stop(self, timeout: float = 30) -> None:
        """Remove the remote engine's containers, stop dockerd and sshd, and undo everything ``start`` made."""
        import docker.errors
        import requests.exceptions

        try:
            if self._proc is not None and self._proc.poll() is None and self._init_pid is not None:
                try:
                    self._fresh_engine()
                except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
                    _say(f"remote host {self.name}: its containers could not be removed first ({e}); stopping it")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._init_pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    _say(f"remote host {self.name} did not stop within {timeout:.0f}s: killing its namespace")
            clear(self.name)
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(10)
            self._proc = None
            self._init_pid = None
            if self._made_netns_mount:
                _release_netns_dir()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def leftovers(self) -> list[str]:
        """What of this host is still on the machine after ``stop()`` (empty when nothing): for tests."""
        found = []
        if self._ns_ids:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                for kind, ident in self._ns_ids.items():
                    try:
                        if os.readlink(proc / "ns" / kind) == ident:
                            found.append(f"process {proc.name} in the remote host's {kind} namespace")
                            break
                    except OSError:
                        continue
        found += _residue(self.name)
        return found


# ---- clearing a remote host by name (stop(), and what a killed run left) -------------------------------


#: Top-level folders of the system itself: hiding one would take the remote host's programs away.
_SYSTEM_TOP = frozenset(
    {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys", "usr", "var"}
)


def _container_of(path: str) -> str:
    """The folder to hide so that ``path`` itself is gone (not merely empty) on the remote host."""
    parts = Path(path).parts
    if len(parts) < 2:
        return path
    if parts[1] not in _SYSTEM_TOP:
        return str(Path("/", parts[1])) if len(parts) > 2 else path
    return str(Path(path).parent)


def _is_mountpoint(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _release_netns_dir() -> None:
    """Undo iproute2's one-time ``/run/netns`` mount when it made it for us and no netns is left in it."""
    if _is_mountpoint("/run/netns") and not any(Path("/run/netns").iterdir()):
        _run(["umount", "/run/netns"], check=False)
        with contextlib.suppress(OSError):
            Path("/run/netns").rmdir()


def _cgroup_dirs(name: str) -> list[Path]:
    base = Path("/sys/fs/cgroup")
    return [p for p in [base / f"envpin-remote-{name}", *base.glob(f"*/envpin-remote-{name}")] if p.is_dir()]


def _residue(name: str) -> list[str]:
    """Everything named after remote host ``name`` that is on this machine (its processes are checked apart)."""
    found = []
    netns = f"envpin-rh-{name}"
    if Path("/run/netns", netns).exists():
        found.append(f"network namespace {netns}")
    if Path("/sys/class/net", f"rh-{name}").exists():
        found.append(f"interface rh-{name}")
    found += [f"cgroup {p}" for p in _cgroup_dirs(name)]
    if (RUN_ROOT / name).exists():
        found.append(f"folder {RUN_ROOT / name}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if (
            point.startswith(str(RUN_ROOT / name))
            or point == f"/run/netns/{netns}"
            or "envpin-remote" in line.split(" - ")[-1]
        ):
            found.append(f"mount {point}")
    return found


def clear(name: str, timeout: float = 20) -> None:
    """Remove remote host ``name`` from this machine, whatever state a stop or a crash left it in."""
    netns = f"envpin-rh-{name}"
    if Path("/run/netns", netns).exists():
        # every process in its network namespace: PID 1 (tini) first, which takes the PID namespace with it
        for _ in _deadline_loop(timeout):
            pids = _run(["ip", "netns", "pids", netns], check=False).stdout.split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        _run(["ip", "netns", "del", netns], check=False)
    if Path("/sys/class/net", f"rh-{name}").exists():
        _run(["ip", "link", "del", f"rh-{name}"], check=False)
    for group in _cgroup_dirs(name):  # the containers' cgroups (removed containers leave the parent)
        for _ in _deadline_loop(timeout):
            leaves = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            try:
                for leaf in [*leaves, group]:
                    leaf.rmdir()
                break
            except OSError:  # busy for a moment while the last processes exit
                continue
    shutil.rmtree(RUN_ROOT / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        RUN_ROOT.rmdir()  # only when no other remote host has a folder there


# ---- the command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.remote_host", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make a remote host and keep it until Ctrl-C (prints the environment to use)")
    up.add_argument("--name", default="rh0")
    up.add_argument("--index", type=int, default=None, help="the /30 is 10.231.INDEX.0 (default: from the name)")
    up.add_argument("--image", action="append", default=[], help="a local image to load into it (repeatable)")
    up.add_argument("--podman", action="store_true", help="also the remote user's rootless Podman")
    down = sub.add_parser("down", help="remove a remote host a killed process left behind")
    down.add_argument("--name", default="rh0")
    args = parser.parse_args(argv)
    if args.command == "down":
        clear(args.name)
        left = _residue(args.name)
        print("\n".join(left) if left else f"remote host {args.name}: nothing left")
        return 1 if left else 0
    stopping: list[int] = []

    def stop_now(signum: int, _frame: object) -> None:
        stopping.append(signum)

    with RemoteHost(args.name, index=args.index, images=args.image, podman=args.podman) as host:
        signal.signal(signal.SIGTERM, stop_now)
        signal.signal(signal.SIGINT, stop_now)
        ssh_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.client_env("ssh").items() if k != "PATH")
        tls_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.client_env("tls").items())
        print(f"remote host {host.name} ({host.hostname}) is up at {host.address}; Ctrl-C stops it.")
        print(f"  over SSH: PATH={host.ssh_bin.parent}:$PATH {ssh_env} docker info")
        print(f"  over TLS: {tls_env} docker info")
        print(f"  ssh:      {host.ssh_bin} {host.hostname}")
        if host.podman:
            print(f"  podman:   engine={host.podman_url} (with bin/ssh first on PATH)")
        print(f"  logs:     {host.log_dir}", flush=True)
        while not stopping and host._proc is not None and host._proc.poll() is None:
            time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
