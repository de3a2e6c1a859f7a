"""``allowed_images`` from every entry point, and pin files that name an image nobody chose.

Real engine, real kernels, a real registry on 127.0.0.1 (``registry`` /
``pushed_image`` from conftest) for the images that could be pulled.  Each
refusal must come before any pull or container: the engine is checked for
both afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from testutils import PY311, PY313, envpin_containers, flat, image_absent
from testutils.kernels import PROBE, kernel, run, run_json

ONLY_311 = "envpin-test/py311*"

#: Every test here runs kernels or containers: each asks for the engine.
pytestmark = pytest.mark.usefixtures("docker_client")


def write_pin(folder, image, notebook="*"):
    (folder / ".envpin.json").write_text(json.dumps({"version": 1, "notebooks": {notebook: {"image": image}}}))


async def test_a_pin_file_never_pulls_an_image_the_engine_lacks(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir
):
    """A cloned folder's .envpin.json names a pullable image: refused with the way to accept it; no pull."""
    repo, tag = pushed_image
    reference = f"{registry.address}/{repo}:{tag}"
    write_pin(notebook_dir, reference)
    name = install_kernelspec(PY311)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        async with kernel(name, cwd=notebook_dir):
            pass
    message = flat(info.value)
    assert time.monotonic() - started < 20
    assert ".envpin.json pins this notebook to image" in message and f"docker pull {reference}" in message
    assert image_absent(docker_client, reference)  # nothing was pulled on the pin file's word
    assert not envpin_containers(docker_client)
    # Accepting it is one command: then the notebook starts in the pinned image.
    docker_client.images.pull(reference)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
    assert probe["dockerenv"] and probe["image"] == reference


async def test_a_pin_naming_the_configured_image_still_pulls(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir
):
    """The kernelspec's own image was chosen by whoever installed it: a pin naming it may pull it."""
    repo, tag = pushed_image
    reference = f"{registry.address}/{repo}:{tag}"
    write_pin(notebook_dir, reference)
    name = install_kernelspec(reference)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        probe = await run_json(kc, PROBE)
    assert probe["image"] == reference


async def test_allowed_images_refuses_the_kernelspec_image_before_any_pull(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir
):
    repo, tag = pushed_image
    reference = f"{registry.address}/{repo}:{tag}"
    name = install_kernelspec(reference, allowed_images=[ONLY_311])
    with pytest.raises(Exception) as info:
        async with kernel(name, cwd=notebook_dir):
            pass
    message = flat(info.value)
    assert f"envpin will not run image '{reference}'" in message
    assert "kernel's configuration" in message and repr(ONLY_311) in message and "allowed_images" in message
    assert image_absent(docker_client, reference)


async def test_allowed_images_refuses_a_pinned_image_and_a_use_image(install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311, allowed_images=[ONLY_311])
    write_pin(notebook_dir, PY313)  # present on the engine, but not allowed
    with pytest.raises(Exception) as info:
        async with kernel(name, cwd=notebook_dir):
            pass
    assert f"image '{PY313}', named by the pin file {notebook_dir}/.envpin.json" in flat(info.value)
    (notebook_dir / ".envpin.json").unlink()
    async with kernel(name, cwd=notebook_dir) as (km, kc):  # the allowed one runs
        res = await run(kc, f"%load_ext envpin\n%use_image {PY313} --restart", timeout=60)
        assert res["status"] == "error" and "named by %use_image" in res["evalue"], res
        assert (await run_json(kc, PROBE))["python"] == [3, 11]  # the kernel did not move


async def test_allowed_images_from_the_servers_environment(install_kernelspec, notebook_dir, monkeypatch):
    monkeypatch.setenv("ENVPIN_ALLOWED_IMAGES", "registry.example.com/*, envpin-test/py313*")
    name = install_kernelspec(PY311)
    with pytest.raises(Exception) as info:
        async with kernel(name, cwd=notebook_dir):
            pass
    assert "'registry.example.com/*', 'envpin-test/py313*'" in flat(info.value)


def _host_python(code: str, cwd, allowed: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ENVPIN_ALLOWED_IMAGES=allowed)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_allowed_images_in_host_entry_points(docker_client, notebook_dir):
    """envpin run, envpin launch, envpin.use_image(), ContainerExecutor, fingerprint(image=): refused at once."""
    cases = {
        "envpin run": [
            sys.executable,
            "-m",
            "envpin_provisioner",
            "run",
            "--image",
            PY313,
            "--",
            "python3",
            "-c",
            "pass",
        ],
        "envpin launch": [
            sys.executable,
            "-m",
            "envpin_provisioner",
            "launch",
            "--image",
            PY313,
            "-f",
            str(notebook_dir / "k.json"),
        ],
    }
    (notebook_dir / "k.json").write_text(json.dumps({"transport": "tcp", "ip": "127.0.0.1", "key": "x"}))
    env = dict(os.environ, ENVPIN_ALLOWED_IMAGES=ONLY_311)
    for what, argv in cases.items():
        out = subprocess.run(argv, cwd=notebook_dir, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and f"envpin will not run image '{PY313}'" in out.stderr, (what, out)
        assert what in out.stderr, (what, out.stderr)
    script = notebook_dir / "job.py"
    script.write_text(f"import envpin\nenvpin.use_image({PY313!r})\nprint('still on the host')\n")
    out = subprocess.run(
        [sys.executable, "job.py"], cwd=notebook_dir, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "envpin will not run image" in out.stderr and "still on the host" not in out.stdout
    for code in (
        f"import envpin; envpin.ContainerExecutor({PY313!r}, mode='container')",
        f"import envpin; envpin.fingerprint(image={PY313!r})",
    ):
        out = _host_python(code, notebook_dir, ONLY_311)
        assert "ImageNotAllowed" in out.stderr and f"'{PY313}'" in out.stderr, (code, out.stderr)
    # The allowed image goes through the same entry point.
    out = _host_python(
        f"import envpin; print(envpin.ContainerExecutor({PY311!r}, mode='container').submit(abs, -3).result(60))",
        notebook_dir,
        ONLY_311,
    )
    assert out.stdout.strip() == "3", out.stderr
    assert not envpin_containers(docker_client)
