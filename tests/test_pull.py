"""Pulling: a real registry server (Debian's docker-registry) on 127.0.0.1 behind a slow link.

Nothing is faked: the engine pulls a freshly pushed image through a throttling
proxy, so the pull takes seconds and reports real progress events.
"""

from __future__ import annotations

import logging
import time

from testutils import PY311, program, slow_proxy
from testutils.kernels import PROBE, kernel, run, run_json


async def test_missing_image_is_pulled_with_progress_outside_the_launch_timeout(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir, caplog
):
    proxy, proxy_address = slow_proxy.start(registry.address, rate=4_000_000)  # 4 MB/s: about 4 s
    try:
        repo, tag = pushed_image
        reference = f"{proxy_address}/{repo}:{tag}"
        name = install_kernelspec(reference, launch_timeout=2)
        caplog.set_level(logging.INFO)
        started = time.monotonic()
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            elapsed = time.monotonic() - started
            probe = await run_json(kc, PROBE)
        assert elapsed > 3, "the pull was meant to take longer than launch_timeout"
        assert probe["dockerenv"] and probe["image"] == reference
        # ENVPIN_IMAGE_ID is the registry digest, the immutable name of what was pulled.
        digest = docker_client.images.get(reference).attrs["RepoDigests"]
        assert probe["image_id"] in digest and probe["image_id"].startswith(f"{proxy_address}/{repo}@sha256:")
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"envpin: pulling image {reference}") for m in messages), messages
        assert any("MiB" in m and "layers" in m for m in messages), "no progress was reported"
        assert any(m == f"envpin: pulled {reference}" for m in messages)
    finally:
        proxy.shutdown()


async def test_pull_policy_always_checks_the_registry(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir, caplog
):
    repo, tag = pushed_image
    reference = f"{registry.address}/{repo}:{tag}"
    docker_client.images.pull(f"{registry.address}/{repo}", tag=tag)
    name = install_kernelspec(reference, pull_policy="always")
    caplog.set_level(logging.INFO)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        assert (await run_json(kc, PROBE))["image"] == reference
    assert any(r.getMessage().startswith(f"envpin: pulling image {reference}") for r in caplog.records)


async def test_use_image_shows_pull_progress_in_the_cell(
    docker_client, registry, pushed_image, install_kernelspec, notebook_dir
):
    from testutils.kernels import run

    proxy, proxy_address = slow_proxy.start(registry.address, rate=4_000_000)
    try:
        repo, tag = pushed_image
        reference = f"{proxy_address}/{repo}:{tag}"
        name = install_kernelspec(PY311)
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            await run(kc, "%load_ext envpin")
            out, bars = [], []

            def hook(m):
                if m["msg_type"] == "stream":
                    out.append(m["content"]["text"])
                elif m["msg_type"] in ("display_data", "update_display_data"):
                    bars.append(m["content"]["data"])

            reply = await kc.execute_interactive(f"%use_image {reference}", timeout=120, output_hook=hook)
            assert reply["content"]["status"] == "ok"
            text = "".join(out)
            # A progress bar, updated in place while it pulled (text for terminals, HTML for notebooks).
            pulling = [b for b in bars if f"envpin: pulling {reference}:" in b.get("text/plain", "")]
            assert len(pulling) >= 3 and "MiB" in pulling[-1]["text/plain"]
            assert "<progress value=" in pulling[-1]["text/html"]
            # The progress line ends replaced by the outcome: the move, never "resolving" or "pulling".
            final = bars[-1]["text/plain"]
            assert f"envpin: moving this kernel into {reference}" in final, (text, final)
            assert (await run_json(kc, PROBE))["image"] == reference
    finally:
        proxy.shutdown()


def test_image_bases_come_from_a_registry_when_one_answers(docker_client, registry, monkeypatch):
    """tools.images pulls python:3.11-slim-bookworm where a registry answers, and bootstraps only where none does.

    The local registry stands in for Docker Hub: it serves the bootstrapped base under the name
    Docker Hub uses.  Then a registry that does not answer: the pull gives up fast.
    """
    import time

    from tools import images

    base = docker_client.images.get("envpin-base/bookworm:1")
    stand_in = f"{registry.address}/python"
    base.tag(stand_in, "3.11-slim-bookworm")
    for line in docker_client.images.push(stand_in, tag="3.11-slim-bookworm", stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(f"{stand_in}:3.11-slim-bookworm")
    monkeypatch.setenv("ENVPIN_BASE_REGISTRY", registry.address)
    monkeypatch.setattr(images, "_BASE_VERSION", "pulled-test")
    try:
        tag = images._base_image(docker_client, "bookworm")
        assert tag == "envpin-base/bookworm:pulled-test"
        assert docker_client.images.get(tag).id == base.id  # the very image the registry served

        monkeypatch.setenv("ENVPIN_BASE_REGISTRY", "127.0.0.1:9")  # nothing listens there
        started = time.monotonic()
        assert images._pull_base(docker_client, "bookworm", "envpin-base/bookworm:never") is False
        assert time.monotonic() - started < 30
    finally:
        for name in ("envpin-base/bookworm:pulled-test", f"{stand_in}:3.11-slim-bookworm"):
            try:
                docker_client.images.remove(name)
            except Exception:
                pass


async def test_by_digest_jobs_name_the_image_by_its_registry_digest(
    docker_client, registry, pushed_image, jupyter_env, tmp_path
):
    """--by-digest: YTsaurus, Ray and Flyte jobs get repo@sha256:... (a tag that moves cannot change them)."""
    from testutils.fake_yt import FakeYtProxy

    repo, tag = pushed_image
    reference = f"{registry.address}/{repo}:{tag}"
    with FakeYtProxy() as proxy:
        async with kernel("python3", cwd=tmp_path) as (km, kc):
            res = await run(kc, f"%load_ext envpin\n%use_image {reference} --by-digest", timeout=120)
            assert res["status"] == "ok", res
            code = program("by_digest_stamps", PROXY=proxy.url)
            res = await run(kc, code, timeout=120)
            assert res["status"] == "ok", res
            seen = await run_json(kc, "seen")
            refused = await run(kc, f"%use_image {PY311} --by-digest")
        yt_image = proxy.operations[-1]["spec"]["mapper"]["docker_image"]
    digest = next(d for d in docker_client.images.get(reference).attrs["RepoDigests"] if d.startswith(registry.address))
    assert seen == {"stamp": digest, "flyte": digest, "ray": digest} and yt_image == digest, (seen, yt_image)
    assert refused["ename"] == "UsageError" and "has no registry digest" in refused["evalue"], refused
