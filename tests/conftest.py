"""Test harness: a real Docker engine for the tests that ask for it, the offline-built images, isolated Jupyter paths.

The engine is the session fixture ``docker_client``: a test that needs it asks
for it, by its arguments, through a fixture that needs it (``server``,
``executor``, ``registry``, ...) or with ``@pytest.mark.usefixtures("docker_client")``,
and is marked ``docker`` for that (``-m "not docker"`` runs the rest without
any engine).  A test that did not ask finds ``DOCKER_HOST`` pointing at nothing,
so one that reaches for an engine anyway fails at once instead of quietly
using whatever engine the machine has.

Nothing here fakes the engine.  When no engine answers, the session starts one
(installing Debian's docker.io first when root and it is missing) and builds
the test images from Debian packages (see tools/images.py); both are cached,
so a second run costs seconds.

After every test that used the engine no envpin container may remain: that
is asserted, then cleaned up so one failure does not cascade.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from testutils import PY311, envpin_containers, no_engine
from testutils.server import Server
from tools import docker_engine as dev_engine
from tools import images as dev_images
from tools.registry import LocalRegistry

#: The fixture that is the engine: a test whose fixtures include it is a ``docker`` test.
ENGINE_FIXTURE = "docker_client"


@pytest.fixture(scope="session")
def docker_client():
    """The Docker engine (started when none answers) with the test images built: a client of it."""
    dev_engine.ensure_engine()
    dev_images.build_all()
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.hookimpl(tryfirst=True)  # before -m selects on the mark
def pytest_collection_modifyitems(items):
    """Mark ``docker`` exactly the tests that ask for the engine; a hand-made mark without it is a mistake."""
    for item in items:
        asks = ENGINE_FIXTURE in getattr(item, "fixturenames", ())
        if asks:
            item.add_marker(pytest.mark.docker)
        elif item.get_closest_marker("docker"):
            raise pytest.UsageError(
                f"{item.nodeid} is marked docker but does not ask for the engine: add the {ENGINE_FIXTURE} "
                f'fixture (or @pytest.mark.usefixtures("{ENGINE_FIXTURE}")) instead of the mark.'
            )


@pytest.fixture(scope="session", autouse=True)
def channel_folders_cleared(request):
    """Tests that SIGKILL a server on purpose leave its kernels' channel folders (and, as root, their quota
    tmpfs mounts) behind, as a real crash would (envpin gc removes containers, not folders): clear the ones
    this session made, so the machine is as it was.

    A session of unit tests only makes none, and must not clear any: an engine run going on beside it
    (another checkout's) creates folders during those seconds that are not this session's.
    """
    if all("unit" in item.path.parts for item in request.session.items):
        yield
        return
    import glob
    import shutil
    import tempfile

    from envpin_provisioner.kernel import quota

    pattern = os.path.join(tempfile.gettempdir(), "envpin-*")
    before = set(glob.glob(pattern))
    yield
    for path in set(glob.glob(pattern)) - before:
        for sub in ("sock", "control"):
            quota.release(os.path.join(path, sub))
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def engine_only_when_asked(request, monkeypatch):
    """No engine for a test that did not ask for one; for one that did, no envpin container left behind."""
    if ENGINE_FIXTURE not in request.fixturenames:
        with no_engine(monkeypatch):
            yield
        return
    docker_client = request.getfixturevalue(ENGINE_FIXTURE)
    before = {c.id for c in envpin_containers(docker_client)}
    yield
    # A warm container whose creation was under way when its kernel or pool went is removed once the engine
    # returns it (engine.create_owned): give that a bounded moment before calling anything left behind.
    deadline = time.monotonic() + 20
    while (left := [c for c in envpin_containers(docker_client) if c.id not in before]) and time.monotonic() < deadline:
        time.sleep(0.5)
    for c in left:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:  # its disposal finished just now
            pass
    if left and not getattr(request.node, "_envpin_failed", False):
        pytest.fail(f"envpin containers left behind: {[c.short_id + ' ' + str(c.labels) for c in left]}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._envpin_failed = True


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
    """Private JUPYTER_PATH / runtime / config dirs, so tests see only the kernelspecs they install."""
    data = tmp_path / "jupyter-data"
    runtime = tmp_path / "jupyter-runtime"
    config = tmp_path / "jupyter-config"
    for d in (data, runtime, config):
        d.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.delenv("ENVPIN_IMAGE", raising=False)
    return {"data": data, "runtime": runtime, "config": config}


@pytest.fixture
def install_kernelspec(jupyter_env):
    """``install_kernelspec(image, name=..., **config)`` writes a kernelspec under the private JUPYTER_PATH."""
    from envpin_provisioner.cli import kernelspec

    def install(image, name=None, display_name=None, **config):
        path = kernelspec.install(image, name=name, display_name=display_name, user=True, config=config)
        return Path(path).name

    return install


@pytest.fixture
def executor(docker_client):
    """``executor(*args, **kwargs)`` makes a ContainerExecutor; every one made is shut down at the end."""
    from envpin import ContainerExecutor

    made = []

    def make(*args, **kwargs):
        ex = ContainerExecutor(*args, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown()


@pytest.fixture
def notebook_dir(tmp_path):
    d = tmp_path / "notebooks" / "project one"  # a space: paths are passed through, not split
    d.mkdir(parents=True)
    return d


@pytest.fixture
def server(jupyter_env, tmp_path, docker_client):
    """``server(*args)`` starts a real jupyter_server (``testutils.server.Server``) on a private root; all stop at the end."""
    root = tmp_path / "root"
    root.mkdir()
    servers = []

    def start(*extra_args):
        s = Server(root, dict(os.environ), extra_args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


# ---- JupyterLab with envpin's extension, and the browser that drives it (testutils.browser) ------------


@pytest.fixture(scope="module")
def chromium():
    from testutils.browser import CHROMIUM

    if not os.path.exists(CHROMIUM):
        from tools.docker_engine import apt_install

        apt_install("chromium", "chromium")
    return CHROMIUM


@pytest.fixture
def lab(jupyter_env, tmp_path):
    """JupyterLab (the shared test server, with its pages and this tree's envpin extension) on 127.0.0.1.

    Yields ``(url, root folder, server)``.
    """
    from testutils.browser import install_extension, start_lab

    root = tmp_path / "lab"
    root.mkdir()
    install_extension(jupyter_env)
    srv, url = start_lab(root)
    yield url, root, srv
    srv.stop()


# ---- a real registry on 127.0.0.1 (Debian's docker-registry), for pulls ------------------------


@pytest.fixture(scope="module")
def registry(docker_client, tmp_path_factory):
    with LocalRegistry(root=tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def pushed_image(docker_client, registry):
    """A new image (py311 plus a 16 MB random layer) in the registry, absent from the engine."""
    tag = uuid.uuid4().hex[:8]
    repo = f"{registry.address}/envpin/pulltest"
    dockerfile = f"FROM {PY311}\nRUN head -c 16000000 /dev/urandom > /opt/random.bin\n"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=f"{repo}:{tag}", rm=True)
    for line in docker_client.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(image.id, force=True)
    yield "envpin/pulltest", tag
    for img in docker_client.images.list(name="*/envpin/pulltest"):
        docker_client.images.remove(img.id, force=True)
