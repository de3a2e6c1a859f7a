"""How envpin's container options change per engine (envpin.host.dialect), with stand-in clients: no engine.

The real thing runs in tests/podman/ (rootless Podman) and everywhere else (Docker).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from docker.types import DeviceRequest

from envpin.entry import boot
from envpin.host import dialect
from envpin.host.container_spec import base_options


class FakeResponse:
    ok = True

    def __init__(self, rootless: bool):
        self._rootless = rootless

    def json(self):
        return {"host": {"security": {"rootless": self._rootless}}}


def fake_client(name: str, rootless: bool = False, socket: str = "/run/fake.sock"):
    api = SimpleNamespace(
        base_url="http+docker://localhost",
        _custom_adapter=SimpleNamespace(socket_path=socket),
        _url=lambda path: path,
        get=lambda url: FakeResponse(rootless),
    )
    return SimpleNamespace(
        api=api,
        version=lambda: {"Version": "4.3.1" if "Podman" in name else "28.2.2", "Components": [{"Name": name}]},
    )


@pytest.fixture(autouse=True)
def _forget_engines():
    dialect.reset()


def kernel_options(**extra):
    options = base_options(image_id="sha256:x", reference="img", immutable="sha256:x", role="kernel", user="1000:1000")
    options.update(entrypoint=["/opt/python/bin/python"], command=["-m", "ipykernel_launcher"], **extra)
    return options


def test_docker_options_pass_unchanged():
    client = fake_client("Engine")
    options = kernel_options(device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])])
    assert dialect.adapt(client, options) == options
    assert dialect.kind(client).describe() == "Docker 28.2.2 at unix:///run/fake.sock"


def test_rootless_podman_keeps_the_users_id_and_owns_home_with_U():
    client = fake_client("Podman Engine", rootless=True, socket="/run/user/1000/podman/podman.sock")
    out = dialect.adapt(client, kernel_options())
    assert out["userns_mode"] == "keep-id" and out["user"] == "1000:1000"
    assert out["tmpfs"] == {"/tmp/envpin-home": "rw,exec,mode=0700,U"}
    assert out["init"] is True and out["entrypoint"] == ["/opt/python/bin/python"]  # until the engine refuses init
    assert dialect.kind(client).describe() == "Podman 4.3.1 (rootless) at unix:///run/user/1000/podman/podman.sock"


def test_rootful_podman_needs_no_user_namespace():
    out = dialect.adapt(fake_client("Podman Engine", rootless=False), kernel_options())
    assert "userns_mode" not in out and out["tmpfs"]["/tmp/envpin-home"].endswith(",U")


def test_an_engine_without_init_gets_envpins_own():
    client = fake_client("Podman Engine", rootless=True)
    dialect.kind(client)
    dialect.note_init_refused(client)
    out = dialect.adapt(client, kernel_options())
    assert out["init"] is False
    # the program's own Python runs the init (an image may have no python3 on PATH)
    assert out["entrypoint"] == [
        *boot.entrypoint("/opt/python/bin/python"),
        "envpin.entry.pid1",
        "/opt/python/bin/python",
    ]
    assert out["command"] == ["-m", "ipykernel_launcher"]


@pytest.mark.parametrize(
    ("request_", "devices"),
    [
        (DeviceRequest(count=-1, capabilities=[["gpu"]]), ["nvidia.com/gpu=all"]),
        (DeviceRequest(count=2, capabilities=[["gpu"]]), ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]),
        (DeviceRequest(device_ids=["1", "3"], capabilities=[["gpu"]]), ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]),
    ],
)
def test_gpus_become_cdi_devices_on_podman(request_, devices):
    out = dialect.adapt(fake_client("Podman Engine"), kernel_options(device_requests=[request_]))
    assert "device_requests" not in out and out["devices"] == devices


def test_pid1_forwards_signals_and_returns_the_programs_status(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "child.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "envpin.entry.pid1", sys.executable, str(script)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 7 and time.monotonic() - started < 5  # forwarded; the program's own exit status
