"""envpin's package volume on another machine's engine is envpin's files alone (issue 28, review 'hostile28').

The volume ``envpin-pkg-<digest>`` is mounted read-only into every later
kernel of that envpin version on that engine, whatever its image.  It is
filled through a created container of the first kernel's image.  An engine
copies an image's files at a volume's mount point into an empty volume
("copy-up", unless the mount says ``NoCopy``): an image with files at the
carrier's mount point (``/envpin-package``), a marker ``.envpin-complete``
among them, would make its own files every other image's envpin package.
"""

from __future__ import annotations

import io
import os

import pytest

from envpin import names
from testutils import PY311
from testutils.remote_host import RemoteHost

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the harness makes namespaces and a second dockerd (root only)"),
    pytest.mark.timeout(180),
]

PLANTING = "envpin-test/hostile28-copyup:latest"
DOCKERFILE = f"""FROM {PY311}
RUN mkdir /envpin-package && echo planted > /envpin-package/PLANTED && touch /envpin-package/.envpin-complete
"""


@pytest.fixture(scope="module")
def planting_image(docker_client):
    image, _ = docker_client.images.build(fileobj=io.BytesIO(DOCKERFILE.encode()), tag=PLANTING, rm=True)
    return image


@pytest.fixture(scope="module", params=["docker", "podman"])
def remote(request, docker_client, planting_image):
    podman = request.param == "podman"
    with RemoteHost("rhpod" if podman else "rhhost", podman=podman, images=[PY311, PLANTING]) as host:
        yield host, request.param


@pytest.fixture
def admin(remote):
    """A client of the engine kernels use there: its dockerd, or the remote user's rootless Podman."""
    from envpin_provisioner.remote import package_volume

    host, kind = remote
    client = host.docker_client("podman" if kind == "podman" else "admin")
    package_volume.reset()
    yield client
    package_volume.reset()
    client.close()


def _volume_files(client, volume: str) -> list[str]:
    """The names in ``volume``'s top folder, listed by a throwaway container of the test image."""
    out = client.containers.run(
        PY311, ["ls", "-A", "/v"], entrypoint=[], remove=True, network_disabled=True,
        mounts=[{"Target": "/v", "Source": volume, "Type": "volume", "ReadOnly": True}],
    )  # fmt: skip
    return out.decode().split()


def test_an_images_files_never_become_the_package_volume(remote, admin, planting_image):
    from envpin_provisioner.remote import package_volume

    name = package_volume.volume_name()
    for container in admin.containers.list(all=True, ignore_removed=True):
        container.remove(force=True)
    for volume in admin.volumes.list():
        if volume.name == name:
            volume.remove(force=True)
    image_id = admin.images.get(PLANTING if remote[1] == "docker" else f"localhost/{PLANTING}").id
    assert package_volume.ensure(admin, image_id) == name
    files = _volume_files(admin, name)
    assert "PLANTED" not in files, files
    assert "names.py" in files and "__init__.py" in files, files
    # The package in the volume is this envpin's, byte for byte (one file checked: names.py).
    out = admin.containers.run(
        PY311, ["cat", "/v/names.py"], entrypoint=[], remove=True, network_disabled=True,
        mounts=[{"Target": "/v", "Source": name, "Type": "volume", "ReadOnly": True}],
    )  # fmt: skip
    with open(os.path.join(names.PACKAGE_DIR, "names.py"), "rb") as f:
        assert out == f.read()
    # A kernel's mount of it says NoCopy too: nothing of a kernel's image is copied into it either.
    assert package_volume.mount(name).get("VolumeOptions") == {"NoCopy": True}
