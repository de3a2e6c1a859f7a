"""Issue 31, findings 2 to 5: every image a kernel can name follows one rule, and the pulls it causes are bounded.

Real engine, real kernels, a real registry on 127.0.0.1 (``registry`` from
conftest: Debian's docker-registry; the engine pulls from loopback registries
over plain HTTP, so no traffic leaves the machine).  Requests are written
into the control folder from inside the kernel, as a hostile kernel would
(the same toolbox as test_hostile_kernel).  When the tests run as root, the
kernel runs as uid 4242 and owns its notebook folder, as in the findings.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pytest

from testutils import PY311, PY313, envpin_containers, flat, hostile, image_absent, program
from testutils.kernels import PROBE, kernel, run, run_json

KERNEL_UID = 4242
ONLY_311 = "envpin-test/py311*"

#: The shared attacker's toolbox (send, wait_answer, ...) and a %use_image request in one call.
TOOLBOX = hostile.TOOLBOX + program("hostile", "ask")


@pytest.fixture
def setup(install_kernelspec, notebook_dir, docker_client):
    """``setup(**config)``: a PY311 kernelspec (kernels as uid 4242 when root, on the engine) and its start environment."""

    def make(**config):
        if os.getuid() == 0:
            os.chown(notebook_dir, KERNEL_UID, KERNEL_UID)
            config.setdefault("user", f"{KERNEL_UID}:{KERNEL_UID}")
        name = install_kernelspec(PY311, **config)
        return name, {"JPY_SESSION_NAME": str(notebook_dir / "analysis.ipynb")}

    return make


def push_tags(docker_client, registry, repo: str, tags: list[str]) -> dict[str, str]:
    """Push a tiny distinct image per tag to ``registry`` (absent from the engine afterwards); {tag: digest}."""
    digests = {}
    full = f"{registry.address}/{repo}"
    for tag in tags:
        dockerfile = f"FROM {PY311}\nRUN echo {tag}-{uuid.uuid4().hex} > /opt/which\n"
        image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{full}:{tag}", rm=True)
        for line in docker_client.images.push(full, tag=tag, stream=True, decode=True):
            assert "error" not in line, line
            digest = (line.get("aux") or {}).get("Digest")
            if digest:
                digests[tag] = digest
        docker_client.images.remove(image.id, force=True)
    return digests


@pytest.fixture
def team(docker_client, registry):
    """``team(repo, tags)`` pushes tiny images; every image of those repositories is removed at the end."""
    repos = []

    def make(repo, tags):
        repos.append(repo)
        return f"{registry.address}/{repo}", push_tags(docker_client, registry, repo, tags)

    yield make
    for repo in repos:
        for img in docker_client.images.list(name=f"{registry.address}/{repo}"):
            docker_client.images.remove(img.id, force=True)


# ---- finding 2: a pin's reference is what is checked, and what decides whether it may pull ----------


@pytest.mark.parametrize("allowed", [[], [ONLY_311]], ids=["no-patterns", "pattern-for-the-configured-image"])
async def test_a_pin_naming_the_configured_image_with_another_reference_pulls_nothing(
    docker_client, registry, pushed_image, setup, notebook_dir, allowed
):
    repo, tag = pushed_image
    other = f"{registry.address}/{repo}:{tag}"
    pin = {"image": PY311, "reference": other}
    (notebook_dir / ".envpin.json").write_text(json.dumps({"version": 1, "notebooks": {"*": pin}}))
    name, env = setup(allowed_images=allowed)
    with pytest.raises(Exception) as info:
        async with kernel(name, cwd=notebook_dir, env=env):
            pass
    message = flat(info.value)
    if allowed:
        assert f"envpin will not run image '{PY311}' ({other})" in message, message
    else:
        assert ".envpin.json pins this notebook to image" in message and f"docker pull {other}" in message, message
    assert image_absent(docker_client, other)  # nothing pulled on the pin's word
    assert not envpin_containers(docker_client)


# ---- finding 3: pulls a kernel causes are bounded, and a refused request leaves nothing behind --------


async def test_refused_pulls_are_removed_and_counted(docker_client, registry, team, setup, notebook_dir):
    base, _ = team("envpin/team", ["t0", "t1", "t2", "t3"])
    docker_client.images.pull(base, tag="t0")  # on the engine before: a refused request must leave it
    before_t0 = docker_client.images.get(f"{base}:t0").id
    name, env = setup(
        allowed_images=[ONLY_311, f"{registry.address}/envpin/*"], max_pulls_per_kernel=3, pull_interval=0
    )
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        assert (await run(kc, TOOLBOX))["status"] == "ok"
        answers = await run_json(kc, f"[ask({base!r} + ':' + t, pull=True) for t in ('t0', 't1', 't2', 't3')]", 240)
        assert [a["status"] for a in answers] == ["refused", "refused", "refused", "error"], answers
        assert "max_pulls_per_kernel=3" in answers[3]["message"], answers[3]
        assert (await run_json(kc, PROBE))["image"] == PY311  # still where it was
    assert docker_client.images.get(f"{base}:t0").id == before_t0
    for t in ("t1", "t2", "t3"):
        assert image_absent(docker_client, f"{base}:{t}"), t


async def test_a_pull_past_the_byte_bound_is_cancelled_and_pulls_are_spaced(
    docker_client, registry, pushed_image, team, setup, notebook_dir
):
    repo, tag = pushed_image  # a 16 MB random layer
    big = f"{registry.address}/{repo}:{tag}"
    base, _ = team("envpin/small", ["s1"])
    name, env = setup(allowed_images=[ONLY_311, f"{registry.address}/envpin/*"], max_pull_bytes="4m", pull_interval=600)
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        assert (await run(kc, TOOLBOX))["status"] == "ok"
        first = await run_json(kc, f"ask({big!r}, pull=True, restart=True)", 120)
        assert first["status"] == "error" and "cancelled the pull" in first["message"], first
        second = await run_json(kc, f"ask({base + ':s1'!r}, pull=True)", 60)
        assert second["status"] == "error" and "pull_interval" in second["message"], second
        assert (await run_json(kc, PROBE))["image"] == PY311
    assert image_absent(docker_client, big) and image_absent(docker_client, f"{base}:s1")


# ---- finding 4: a digest is matched as a digest, never by the tag written beside it --------------------


async def test_a_digest_beside_an_allowed_tag_is_refused(docker_client, registry, team, setup, notebook_dir):
    base, digests = team("envpin/app", ["3.11", "evil"])
    name, env = setup(allowed_images=[ONLY_311, f"{base}:3.11*", f"{base}@{digests['3.11']}"])
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        assert (await run(kc, TOOLBOX))["status"] == "ok"
        evil = f"{base}:3.11@{digests['evil']}"
        answer = await run_json(kc, f"ask({evil!r}, pull=True, restart=True)")
        assert answer["status"] == "error" and "will not run image" in answer["message"], answer
        assert image_absent(docker_client, f"{base}@{digests['evil']}") and image_absent(docker_client, f"{base}:evil")
        # The digest the patterns name moves the kernel, into exactly that digest (the tag beside it ignored).
        good = f"{base}:3.11@{digests['3.11']}"
        res = await run(kc, f"%load_ext envpin\n%use_image {good} --restart", timeout=120)
        assert res["status"] == "ok", res
        probe = await run_json(kc, PROBE)
        assert probe["image"] == f"{base}@{digests['3.11']}"
        assert (await run_json(kc, "open('/opt/which').read()")).startswith("3.11-")


# ---- finding 5: the aliases file is read once per request, never a FIFO or a link ---------------------


async def test_an_aliases_fifo_does_not_block_and_a_flipped_alias_never_passes(
    setup, notebook_dir, monkeypatch, tmp_path
):
    aliases_path = notebook_dir / "aliases.json"  # a site that put it where the kernel can write
    monkeypatch.setenv("ENVPIN_ALIASES", str(aliases_path))
    secret = tmp_path / "secret-aliases.json"
    secret.write_text(json.dumps({"py": "SECRET-CANARY/x:1"}))
    secret.chmod(0o600)
    name, env = setup(allowed_images=[ONLY_311])
    async with kernel(name, cwd=notebook_dir, env=env) as (km, kc):
        assert (await run(kc, TOOLBOX))["status"] == "ok"
        # A FIFO: answered at once (the server neither waits on it nor blocks its event loop).
        answer = await run_json(kc, f"os.mkfifo({str(aliases_path)!r}) or ask('py', timeout=15)")
        assert answer is not None and answer["status"] == "error", answer
        assert "not a plain file" in answer["message"], answer
        # A link to a file the kernel cannot read: refused without its content.
        answer = await run_json(
            kc,
            f"os.unlink({str(aliases_path)!r}) or os.symlink({str(secret)!r}, {str(aliases_path)!r}) or ask('py', timeout=15)",
        )
        assert answer["status"] == "error" and "not a plain file" in answer["message"], answer
        assert "SECRET-CANARY" not in json.dumps(answer)
        # Flipping the alias between an allowed and a refused image while asking: every answer is about the
        # reference that was checked (allowed: 'same'; refused: an error), never a refused image resolved.
        code = program("hostile", "flip-alias", ALIASES=str(aliases_path), ALLOWED=PY311, REFUSED=PY313)
        res = await run(kc, code, timeout=300)
        assert res["status"] == "ok", res
        answers = json.loads(res["stdout"].strip().splitlines()[-1])
        statuses = {a["status"] for a in answers}
        assert statuses <= {"same", "error"}, answers
        for a in answers:
            if a["status"] == "same":
                assert a["reference"] == PY311, a
            else:
                assert "will not run image" in a["message"] and PY313 in a["message"], a
        assert (await run_json(kc, PROBE))["python"] == [3, 11]
