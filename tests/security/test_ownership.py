"""envpin acts only on containers it made (issue 31, finding 8).

A container inherits its image's labels: an image built with ``LABEL
envpin.role=kernel`` (or ``envpin.role=job`` and this host as
``envpin.owner-host``) made every plain ``docker run`` of it look like an
orphan of envpin's, and ``envpin gc`` removed it, running.  Here real
look-alikes run on the real engine next to real envpin containers whose owner
is gone, and every path that finds containers is run for real: ``envpin gc``
(the command), a server's start-up collection, doctor's warm-container count,
a kernel's sweep of its stale containers at a restart, a restarted server's
adoption.  The look-alikes survive all of them; the real orphans do not.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import uuid

import docker.errors
import pytest

from envpin import names
from envpin.host import docker_client as envpin_docker_client
from envpin.host import labels
from testutils import PY311, program
from testutils.kernels import kernel

SLEEP = ["python3", "-c", "import time; time.sleep(600)"]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def dead_owner() -> dict[str, str]:
    """Owner labels of a process of this host and boot that is gone: what an orphan of envpin's carries."""
    return {
        names.LABEL_OWNER_HOST: socket.gethostname(),
        names.LABEL_OWNER_BOOT: labels.boot_id(),
        names.LABEL_OWNER_PID: str(dead_pid()),
        names.LABEL_OWNER_START: "1",
        names.LABEL_OWNER_UID: str(os.getuid()),
    }


def build_labelled(client, image_labels: dict[str, str], tag: str) -> str:
    dockerfile = f"FROM {PY311}\n" + "".join(
        f"LABEL {json.dumps(k)}={json.dumps(v)}\n" for k, v in image_labels.items()
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    return image.id


def real_orphan(client, role: str, kernel_id: str = ""):
    """A container made by envpin's own code (``container_spec.base_options``) in a process that has exited."""
    out = subprocess.run(
        [sys.executable, "-c", program("envpin_create"), PY311, role, kernel_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return client.containers.get(out.stdout.strip().splitlines()[-1])


def exists(client, container) -> bool:
    try:
        client.containers.get(container.id)
    except docker.errors.NotFound:
        return False
    return True


@pytest.fixture
def lookalikes(docker_client):
    """Running containers that are not envpin's but carry its labels every way an outsider can."""
    made, images = [], []
    suffix = uuid.uuid4().hex[:8]

    def run(image: str, name: str | None = None, **container_labels: str):
        c = docker_client.containers.run(
            image, SLEEP, detach=True, labels=container_labels or None, name=name, network_mode="none"
        )
        made.append(c)
        return c

    def image(image_labels: dict[str, str], kind: str) -> str:
        tag = f"envpin-test/lookalike-{kind}:{suffix}"
        build_labelled(docker_client, image_labels, tag)
        images.append(tag)
        return tag

    yield run, image
    for c in made:
        c.remove(force=True)
    for tag in images:
        docker_client.images.remove(tag, force=True)


def test_gc_and_the_startup_collection_spare_lookalikes_and_collect_real_orphans(docker_client, lookalikes):
    from envpin_provisioner import engine
    from envpin_provisioner.cli import doctor
    from envpin_provisioner.kernel import ownership

    run, image = lookalikes
    # The two images of the finding: LABEL envpin.role=kernel; LABEL envpin.role=job with this host as owner.
    kernel_image = image({names.LABEL_ROLE: "kernel", **dead_owner()}, "kernel")
    job_image = image({names.LABEL_ROLE: "job", names.LABEL_OWNER_HOST: socket.gethostname()}, "job")
    from_kernel_image = run(kernel_image)
    from_job_image = run(job_image)
    # docker run --label ... with a forged proof (and a nonce), a dead owner, and a warm-container name.
    forged = {
        names.LABEL_ROLE: "kernel",
        **dead_owner(),
        names.LABEL_NONCE: uuid.uuid4().hex,
        names.LABEL_PROOF: "v1;envpin.nonce,envpin.role;" + "ab" * 32,
    }
    with_forged_proof = run(PY311, **forged)
    fake_warm = run(PY311, name=f"envpin-warm-handoff-{uuid.uuid4().hex[:6]}", **{**forged, names.LABEL_ROLE: "pool"})
    # Real containers of envpin's whose owner is gone ...
    orphan_job = real_orphan(docker_client, "job")
    orphan_kernel = real_orphan(docker_client, "kernel", kernel_id=str(uuid.uuid4()))
    # ... and an image that copied one of them, valid proof included: its containers are not envpin's either.
    replayed = run(image(dict(orphan_job.labels), "replay"))
    assert labels.proof_holds(replayed.labels)  # the copy carries a proof that holds ...
    outsiders = [from_kernel_image, from_job_image, with_forged_proof, fake_warm, replayed]
    assert not any(ownership.owned(docker_client, c) for c in outsiders)  # ... yet none of them is envpin's
    assert ownership.owned(docker_client, orphan_job) and ownership.owned(docker_client, orphan_kernel)

    # Doctor counts no warm container: the only one named and labelled like one is an outsider.
    assert "no warm containers" in doctor._warm_pool(docker_client).text

    dry = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "gc", "--dry-run"], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    for c in outsiders:
        assert c.short_id not in dry.stdout, (c.labels, dry.stdout)
    assert orphan_job.short_id in dry.stdout and orphan_kernel.short_id in dry.stdout, dry.stdout

    # A server's start-up collection (the first kernel start of each server runs exactly this).
    import logging

    engine.Engine(envpin_docker_client.engine_address(), docker_client).collect_garbage_once(logging.getLogger("test"))
    assert not exists(docker_client, orphan_job) and not exists(docker_client, orphan_kernel)
    gc = subprocess.run([sys.executable, "-m", "envpin_provisioner", "gc"], capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    for c in outsiders:
        c.reload()
        assert c.status == "running", c.labels


def test_a_lookalike_costs_no_engine_call_and_images_are_looked_at_once(docker_client, lookalikes, monkeypatch):
    """The hot paths: a container without a valid proof is judged from its labels alone; image labels are cached."""
    from docker.models.images import ImageCollection

    from envpin_provisioner.kernel import ownership

    run, _image = lookalikes
    forged = run(
        PY311,
        **{
            names.LABEL_ROLE: "job",
            names.LABEL_NONCE: "n",
            names.LABEL_PROOF: "v1;envpin.nonce,envpin.role;" + "00" * 32,
        },
    )
    orphans = [real_orphan(docker_client, "job") for _ in range(2)]
    calls = []
    real_get = ImageCollection.get
    monkeypatch.setattr(ImageCollection, "get", lambda self, name: calls.append(name) or real_get(self, name))
    ownership.reset()
    assert not ownership.owned(docker_client, forged) and calls == []
    assert all(ownership.owned(docker_client, c) for c in orphans)
    assert len(calls) == 1  # two containers of one image: one look at the image
    for c in orphans:
        c.remove(force=True)


async def test_a_kernel_sweep_and_an_adoption_leave_lookalikes_alone(docker_client, install_kernelspec, lookalikes):
    """A restart sweeps the kernel's stale containers (by its kernel id); a look-alike with that id stays.

    A restarted server adopts the container its saved info names: a look-alike is neither adopted nor removed.
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import KernelProvisionerFactory

    run, image = lookalikes
    name = install_kernelspec(PY311)
    async with kernel(name) as (km, _kc):
        kid = km.kernel_id
        forged = {
            names.LABEL_ROLE: "kernel",
            names.LABEL_KERNEL_ID: kid,
            names.LABEL_NONCE: "n",
            names.LABEL_PROOF: "v1;envpin.kernel-id,envpin.nonce,envpin.role;" + "cd" * 32,
        }
        with_forged_proof = run(PY311, **forged)
        from_image = run(image({names.LABEL_ROLE: "kernel", names.LABEL_KERNEL_ID: kid, **dead_owner()}, "kid"))
        stale = real_orphan(docker_client, "kernel", kernel_id=kid)  # envpin's own, left by an earlier start
        await km.restart_kernel()
        assert not exists(docker_client, stale)  # the sweep still works ...
        for c in (with_forged_proof, from_image):  # ... and spares what is not envpin's
            c.reload()
            assert c.status == "running"

        info = await km.provisioner.get_provisioner_info()
        km2 = AsyncKernelManager(kernel_name=name)
        km2.kernel_id = kid
        prov = KernelProvisionerFactory.instance().create_provisioner_instance(kid, km2.kernel_spec, km2)
        await prov.load_provisioner_info({**info, "container_id": with_forged_proof.id, "channel_dir": None})
        assert not prov.has_process  # not adopted: cleanup has nothing to remove
        await prov.cleanup(restart=False)
        with_forged_proof.reload()
        assert with_forged_proof.status == "running"


def test_the_proof_covers_every_envpin_label_and_the_key_is_private(tmp_path, monkeypatch):
    """Unit level: a changed label breaks the proof; a key file someone else could read or swap is refused."""
    monkeypatch.setattr(labels, "key_path", lambda: str(tmp_path / "state" / "owner.key"))
    labels.reset()
    signed = labels.signed({names.LABEL_ROLE: "job", **labels.owner_labels()})
    key_file = tmp_path / "state" / "owner.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert labels.made_by_envpin(signed, {"maintainer": "x", "envpin.test-recipe": "r"})  # labels it did not set
    for key, value in ((names.LABEL_ROLE, "kernel"), (names.LABEL_OWNER_PID, "1"), (names.LABEL_NONCE, "x")):
        assert not labels.proof_holds({**signed, key: value}), key
    assert not labels.proof_holds({k: v for k, v in signed.items() if k != names.LABEL_OWNER_UID})
    scheme, covered, mac = signed[names.LABEL_PROOF].split(";")
    fewer = ",".join(n for n in covered.split(",") if n != names.LABEL_OWNER_PID)
    assert not labels.proof_holds({**signed, names.LABEL_PROOF: f"{scheme};{fewer};{mac}"})  # the names are signed too
    for claimed in (
        names.LABEL_ROLE,
        names.LABEL_OWNER_PID,
        names.LABEL_NONCE,
        names.LABEL_PROOF,
    ):  # an image that sets envpin's labels
        assert not labels.made_by_envpin(signed, {claimed: signed[claimed]}), claimed
    assert not labels.made_by_envpin(signed, None)  # an image that is gone

    labels.reset()
    key_file.chmod(0o644)
    with pytest.raises(labels.OwnerKeyError, match="readable by nobody else"):
        labels.owner_key(create=False)
    assert not labels.proof_holds(signed)  # a verifier never trusts it
    key_file.chmod(0o600)
    elsewhere = tmp_path / "other.key"
    key_file.rename(elsewhere)
    key_file.symlink_to(elsewhere)
    with pytest.raises(labels.OwnerKeyError, match="symbolic link"):
        labels.owner_key(create=True)
    unsigned = labels.signed({names.LABEL_ROLE: "job"})  # no usable key: made without a proof, never collected
    assert names.LABEL_PROOF not in unsigned and not labels.proof_holds(unsigned)
