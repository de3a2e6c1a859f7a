"""Build the images envpin's tests and quickstart run in, offline, and cache them.

No container registry is reachable from the machines envpin is developed and
tested on, so ``docker pull`` is not an option.  Instead:

1. ``debootstrap --variant=minbase --include=python3,python3-venv SUITE`` builds a
   Debian root filesystem from Debian's package mirror (bookworm gives Python
   3.11, trixie gives 3.13) and ``import_image`` turns it into a base image;
2. the wheels the image needs (ipykernel, cloudpickle and their dependencies)
   are fetched on the host with ``pip download`` for the image's Python and
   platform, because containers cannot reach the package index themselves;
3. a two-line Dockerfile ``FROM`` the base copies the wheels in and installs
   them into a venv with ``--no-index``.

Every image carries a label with a hash of its recipe; an image whose label
matches is reused, so a second run costs a few Docker API calls.  Run as
``python -m tools.images [NAME ...]``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from envpin.adapters.ray_compat import SUPPORTED as _RAY_SUPPORTED
from tools.docker_engine import ensure_debootstrap, ensure_engine

RAY_NEWEST = _RAY_SUPPORTED[1]

CACHE_DIR = Path(os.environ.get("ENVPIN_DEV_CACHE", Path.home() / ".cache" / "envpin-dev"))
RECIPE_LABEL = "envpin.test-recipe"

#: Debian suite -> the Python minor version it ships.
SUITES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}


@dataclass(frozen=True)
class ImageRecipe:
    """One image: a Debian suite, the wheels to install into /opt/python, and its tags."""

    tag: str
    suite: str
    packages: tuple[str, ...] = ()
    extra_tags: tuple[str, ...] = ()
    python: bool = True  # False: an image with no Python at all (for the error paths)
    notes: str = field(default="", compare=False)
    #: Dockerfile lines after the common recipe (same wheels + layers as a sibling image: Docker's cache reuses them)
    tail: str = ""
    #: False: built only when asked for by name (the full pickle matrix's Python 3.9), not by the test command
    default: bool = True
    #: wheels fetched without their dependencies into ``extra-wheels/`` of the build context, for a ``tail``
    #: that installs a release the main set's resolver would refuse (cloudpickle 2 under distributed)
    extra_wheels: tuple[str, ...] = ()

    def digest(self) -> str:
        text = repr((self.suite, self.packages, self.python, _DOCKERFILE, _BASE_VERSION)) + self.tail
        if self.extra_wheels:
            text += repr(self.extra_wheels)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_BASE_VERSION = "1"
_DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/python \\
 && /opt/python/bin/python -m pip install -q --no-index --find-links /tmp/wheels {packages} \\
 && rm -rf /tmp/wheels /root/.cache
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL {label}={digest}
"""

#: The Flyte tasks baked into envpin-test/flyte-code (base64: a Dockerfile line holds them without quoting).
_FLOWS_IN_IMAGE = base64.b64encode(
    b"import os\n\nfrom flytekit import task\n\n\n"
    b"@task\ndef shout(word: str) -> str:\n"
    b"    return word.upper() + ' from the image ' + os.environ.get('ENVPIN_IMAGE', '?')\n"
).decode()

#: The Flyte 2 project baked into envpin-test/flyte2-code (/opt/project), one text for the image and the tests
#: that import the same module on the host: its task says where it ran (the interpreter, the image id its pod
#: was given, a container marker, the file it was loaded from).
FLYTE2_PROJECT = {
    "flows2_in_image/__init__.py": "",
    "flows2_in_image/tasks.py": (
        "import json\nimport os\nimport sys\n\nimport flyte\n\n"
        'env = flyte.TaskEnvironment(name="flows2_in_image_env")\n\n\n'
        "@env.task\nasync def double(x: int) -> str:\n"
        "    return json.dumps({\n"
        '        "double": 2 * x, "python": sys.executable, "prefix": sys.prefix,\n'
        '        "image_id": os.environ.get("ENVPIN_IMAGE_ID"), "file": __file__,\n'
        '        "container": [p for p in ("/.dockerenv", "/run/.containerenv") if os.path.exists(p)],\n'
        "    })\n"
    ),
}
#: Flyte 2's SDK, the one release the Flyte 2 adapter is measured with.
FLYTE2_VERSION = "2.12.1"


def _files_tail(root: str, files: dict[str, str]) -> str:
    """A Dockerfile RUN line writing ``files`` under ``root`` (base64: a Dockerfile line holds them without quoting)."""
    lines = (
        f"mkdir -p {root}/{os.path.dirname(name) or '.'} && echo '{base64.b64encode(text.encode()).decode()}' "
        f"| base64 -d > {root}/{name}"
        for name, text in files.items()
    )
    return "RUN " + " && ".join(lines) + "\n"


#: A small uv project (its pyproject.toml and package), as a Ray user's images have one.
_UV_PROJECT = {
    "pyproject.toml": (
        '[project]\nname = "demoapp"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["cloudpickle"]\n\n[build-system]\nrequires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n'
    ),
    "demoapp/__init__.py": "VALUE = 42\n",
}
#: One list for every Ray image: driver (Ray Client, job SDK) and worker alike need the cluster's Ray,
#: which is the newest Ray envpin supports (ray_compat.SUPPORTED, the one place that version is written).
_RAY_PACKAGES = ("ipykernel", "cloudpickle", f"ray[default,client]=={RAY_NEWEST}")
_RAY_UV_PACKAGES = (*_RAY_PACKAGES, "uv", "hatchling", "editables")  # editables: hatchling builds editable installs
#: A Dask user's image: notebook kernel, scheduler and worker alike (bokeh: the scheduler's dashboard).
_DASK_PACKAGES = ("ipykernel", "cloudpickle", "numpy", "distributed", "bokeh")
#: The file only the Dask images have, with the image's own word in it (tasks report it).
DASK_MARKER = "/opt/envpin-dask-marker"


def _uv_sync_tail(install_project: bool) -> str:
    """Dockerfile lines that build the project's environment with real uv, offline, into /opt/python."""
    files = " && ".join(
        f"mkdir -p /opt/app/{os.path.dirname(name) or '.'} && echo {base64.b64encode(text.encode()).decode()} "
        f"| base64 -d > /opt/app/{name}"
        for name, text in _UV_PROJECT.items()
    )
    flag = "" if install_project else " --no-install-project"
    return (
        "COPY wheels /tmp/uv-wheels\n"
        f"RUN {files} && cd /opt/app && UV_PROJECT_ENVIRONMENT=/opt/python UV_NO_CACHE=1 /opt/python/bin/uv sync "
        f"--inexact --no-index --find-links /tmp/uv-wheels --python /opt/python/bin/python{flag} "
        "&& rm -rf /tmp/uv-wheels\n"
    )


RECIPES: dict[str, ImageRecipe] = {
    r.tag: r
    for r in (
        ImageRecipe(
            "envpin-test/py311:latest",
            "bookworm",
            ("ipykernel", "cloudpickle", "numpy"),
            extra_tags=("ubuntu-22.04-py3:latest",),
            notes="Python 3.11 with ipykernel, cloudpickle and numpy; also the demo image ubuntu-22.04-py3",
        ),
        ImageRecipe(
            "envpin-test/py313:latest",
            "trixie",
            ("ipykernel", "cloudpickle", "numpy"),
            notes="Python 3.13 with ipykernel, cloudpickle and numpy",
        ),
        ImageRecipe(
            "envpin-test/with-code:latest",
            "bookworm",
            ("ipykernel", "cloudpickle", "numpy"),
            notes="envpin-test/py311 plus a project's code, marked with ENVPIN_CODE_IN_IMAGE",
            tail=(
                "RUN mkdir -p /opt/project && printf 'def hello():\\n    return \"from the image\"\\n' "
                "> /opt/project/project_code.py\n"
                "ENV ENVPIN_CODE_IN_IMAGE=/opt/project PYTHONPATH=/opt/project\n"
            ),
        ),
        ImageRecipe(
            "envpin-test/yt:latest",
            "bookworm",
            ("ipykernel", "cloudpickle", "ytsaurus-client"),
            notes="Python 3.11 with ipykernel, cloudpickle and ytsaurus-client (a notebook image for YTsaurus users)",
        ),
        ImageRecipe(
            "envpin-test/yt313:latest",
            "trixie",
            ("ipykernel", "cloudpickle", "ytsaurus-client"),
            notes="Python 3.13 with ytsaurus-client: a cluster image of another Python, for the version check",
        ),
        ImageRecipe(
            "envpin-test/ray:latest",
            "bookworm",
            _RAY_PACKAGES,
            notes="Python 3.11 with ipykernel, cloudpickle and ray (a notebook image for Ray users)",
        ),
        ImageRecipe(
            "envpin-test/flyte:latest",
            "bookworm",
            ("ipykernel", "cloudpickle", "flytekit"),
            notes="Python 3.11 with ipykernel, cloudpickle and flytekit (a notebook image for Flyte users)",
        ),
        ImageRecipe(
            "envpin-test/flyte-code:latest",
            "bookworm",
            ("ipykernel", "cloudpickle", "flytekit"),
            notes="envpin-test/flyte plus the project's Flyte tasks in /opt/project, marked with ENVPIN_CODE_IN_IMAGE",
            tail=(
                "RUN mkdir -p /opt/project/flows_in_image && touch /opt/project/flows_in_image/__init__.py "
                f"&& echo {_FLOWS_IN_IMAGE} | base64 -d > /opt/project/flows_in_image/tasks.py\n"
                "ENV ENVPIN_CODE_IN_IMAGE=/opt/project PYTHONPATH=/opt/project\n"
            ),
        ),
        ImageRecipe(
            "envpin-test/flyte2-code:latest",
            "bookworm",
            ("cloudpickle", f"flyte=={FLYTE2_VERSION}"),
            notes="Python 3.11 with Flyte 2 (flyte) and a Flyte 2 project in /opt/project, marked with "
            "ENVPIN_CODE_IN_IMAGE: the image a Flyte 2 pod runs (no ipykernel: not a notebook image)",
            tail=_files_tail("/opt/project", FLYTE2_PROJECT)
            + "ENV ENVPIN_CODE_IN_IMAGE=/opt/project PYTHONPATH=/opt/project\n",
        ),
        ImageRecipe(
            "envpin-test/ray-b:latest",
            "bookworm",
            _RAY_PACKAGES,
            notes="envpin-test/ray plus a marker file: a second application's image on the same Ray cluster",
            tail="RUN echo b > /opt/envpin-marker\n",
        ),
        ImageRecipe(
            "envpin-test/ray-uv-project:latest",
            "bookworm",
            _RAY_UV_PACKAGES,
            notes="a Ray image built with `uv sync`, which installed the project itself into the image's venv",
            tail=_uv_sync_tail(install_project=True),
        ),
        ImageRecipe(
            "envpin-test/ray-uv:latest",
            "bookworm",
            _RAY_UV_PACKAGES,
            notes="the same built the recommended way: `uv sync --no-install-project` (dependencies only)",
            tail=_uv_sync_tail(install_project=False),
        ),
        ImageRecipe(
            "envpin-test/py311-cloudpickle311:latest",
            "bookworm",
            ("ipykernel", "cloudpickle==3.1.1", "numpy"),
            notes="envpin-test/py311 with cloudpickle 3.1.1: an image a cloudpickle patch release behind the host",
        ),
        ImageRecipe(
            "envpin-test/dask:latest",
            "bookworm",
            _DASK_PACKAGES,
            notes="Python 3.11 with ipykernel, cloudpickle and distributed (+ bokeh): a Dask user's image",
            tail=f"RUN echo dask-py311 > {DASK_MARKER}\n",
        ),
        ImageRecipe(
            "envpin-test/dask313:latest",
            "trixie",
            _DASK_PACKAGES,
            notes="Python 3.13 with distributed: a Dask cluster of another Python, which envpin refuses",
            tail=f"RUN echo dask-py313 > {DASK_MARKER}\n",
        ),
        ImageRecipe(
            "envpin-test/dask-cloudpickle2:latest",
            "bookworm",
            _DASK_PACKAGES,
            notes="envpin-test/dask with cloudpickle 2.2.1, which is measured not to load cloudpickle 3 pickles",
            extra_wheels=("cloudpickle==2.2.1",),
            tail=(
                "COPY extra-wheels /tmp/extra-wheels\n"
                "RUN /opt/python/bin/python -m pip install -q --no-index --no-deps --find-links /tmp/extra-wheels "
                f"cloudpickle==2.2.1 && rm -rf /tmp/extra-wheels && echo dask-cloudpickle2 > {DASK_MARKER}\n"
            ),
        ),
        ImageRecipe(
            "envpin-test/py39:latest",
            "bullseye",
            ("cloudpickle", "numpy"),
            default=False,
            notes="Python 3.9 with cloudpickle and numpy: the oldest Python of the pickle matrix (tools.pickle_matrix)",
        ),
        ImageRecipe("envpin-test/no-ipykernel:latest", "bookworm", (), notes="Python 3.11, no ipykernel"),
        ImageRecipe(
            "envpin-test/broken-ipykernel:latest",
            "bookworm",
            ("--no-deps", "ipykernel"),
            notes="Python 3.11, ipykernel without its dependencies: installed but cannot start",
        ),
        ImageRecipe("envpin-test/no-python:latest", "none", (), python=False, notes="no Python at all"),
    )
}

_locks: dict[str, threading.Lock] = {s: threading.Lock() for s in SUITES}


def _say(msg: str) -> None:
    print(f"[envpin images] {msg}", file=sys.stderr, flush=True)


def _image_recipe_digest(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return (client.images.get(tag).labels or {}).get(RECIPE_LABEL)
    except docker.errors.ImageNotFound:
        return None


#: Registry images that can stand in for a bootstrapped suite: Debian with python3 and its venv module.
REGISTRY_BASES = {
    "bullseye": "python:3.9-slim-bullseye",
    "bookworm": "python:3.11-slim-bookworm",
    "trixie": "python:3.13-slim-trixie",
}


def _pull_base(client: docker.DockerClient, suite: str, tag: str) -> bool:
    """Pull the suite's registry base (``$ENVPIN_BASE_REGISTRY/`` + REGISTRY_BASES) and tag it ``tag``.

    Where a registry answers, this is much faster than debootstrap.  Where none
    does (the machines envpin is developed on), the pull fails within seconds
    and the caller bootstraps.  ``ENVPIN_BASE_FROM_REGISTRY=0`` skips the try.
    """
    if os.environ.get("ENVPIN_BASE_FROM_REGISTRY", "1") == "0" or suite not in REGISTRY_BASES:
        return False
    prefix = os.environ.get("ENVPIN_BASE_REGISTRY", "").rstrip("/")
    reference = f"{prefix}/{REGISTRY_BASES[suite]}" if prefix else REGISTRY_BASES[suite]
    repo, _, version = reference.rpartition(":")
    quick = docker.from_env(timeout=120)  # its own timeout: a registry that hangs must not stall the build
    try:
        _say(f"pulling the base {reference} ...")
        image = quick.images.pull(repo, tag=version)
    except (docker.errors.APIError, docker.errors.DockerException, OSError) as exc:
        text = str(getattr(exc, "explanation", None) or exc).strip()
        first_line = text.splitlines()[0][:160] if text else type(exc).__name__
        _say(f"no registry answers for {reference} ({first_line}): bootstrapping from Debian packages instead")
        return False
    finally:
        quick.close()
    base_repo, _, base_version = tag.partition(":")
    image.tag(base_repo, base_version)
    _say(f"{tag} is {reference} (pulled)")
    return True


def _base_image(client: docker.DockerClient, suite: str) -> str:
    """A Debian ``suite`` with python3 and python3-venv: pulled where a registry answers, else bootstrapped."""
    tag = f"envpin-base/{suite}:{_BASE_VERSION}"
    with _locks[suite]:
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        if _pull_base(client, suite, tag):
            return tag
        ensure_debootstrap()
        _say(f"debootstrap {suite} (Debian minbase + python3): a few minutes, once ...")
        with tempfile.TemporaryDirectory(prefix=f"envpin-rootfs-{suite}-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            log = CACHE_DIR / f"debootstrap-{suite}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "wb") as fh:
                subprocess.run(
                    ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", suite, str(rootfs)],
                    check=True,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            # Trim what a kernel never needs: apt lists and caches, docs.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
                shutil.rmtree(rootfs / sub, ignore_errors=True)
            tarball = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
            repo, _, version = tag.partition(":")
            client.api.import_image_from_file(str(tarball), repository=repo, tag=version)
        _say(f"imported {tag}")
        return tag


def _wheels(python_version: str, packages: tuple[str, ...]) -> Path:
    """``pip download`` the wheels for ``packages`` for a Linux CPython ``python_version``."""
    key = hashlib.sha256(repr((python_version, packages)).encode()).hexdigest()[:12]
    dest = CACHE_DIR / f"wheels-py{python_version}-{key}"
    if (dest / ".complete").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    machine = platform.machine()
    platforms = [f"manylinux_2_{n}_{machine}" for n in (36, 34, 31, 28, 27, 26, 24, 17, 12, 5)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--python-version", python_version, "--implementation", "cp"]
    for p in platforms:
        cmd += ["--platform", p]
    _say(f"pip download {' '.join(packages)} for Python {python_version} ...")
    subprocess.run(cmd + list(packages), check=True)
    (dest / ".complete").touch()
    return dest


def _build_no_python(client: docker.DockerClient, recipe: ImageRecipe, digest: str) -> None:
    """An image holding a single file: starting Python in it fails like a typo'd image would."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"envpin test image without Python\n"
        info = tarfile.TarInfo("etc/envpin-no-python")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    repo, _, version = recipe.tag.partition(":")
    client.api.import_image_from_data(
        buf.getvalue(), repository=repo, tag=version, changes=[f"LABEL {RECIPE_LABEL}={digest}"]
    )


def build(name: str, client: docker.DockerClient | None = None) -> str:
    """Build (or reuse) the image ``name``; return its tag."""
    recipe = RECIPES[name]
    client = client or docker.from_env(timeout=600)
    digest = recipe.digest()
    if _image_recipe_digest(client, recipe.tag) == digest:
        _tag_extras(client, recipe)
        return recipe.tag
    if not recipe.python:
        _build_no_python(client, recipe, digest)
        return recipe.tag
    base = _base_image(client, recipe.suite)
    with tempfile.TemporaryDirectory(prefix="envpin-build-") as ctx:
        if recipe.packages:
            shutil.copytree(_wheels(SUITES[recipe.suite], recipe.packages), Path(ctx) / "wheels")
        else:
            (Path(ctx) / "wheels").mkdir()
        if recipe.extra_wheels:
            shutil.copytree(
                _wheels(SUITES[recipe.suite], ("--no-deps", *recipe.extra_wheels)), Path(ctx) / "extra-wheels"
            )
        dockerfile = _DOCKERFILE.format(
            base=base, packages=" ".join(recipe.packages) or "--upgrade pip", label=RECIPE_LABEL, digest=digest
        )
        if recipe.tail:  # before the label, so the sibling's layers up to the label are shared
            dockerfile = dockerfile.replace("LABEL ", recipe.tail + "LABEL ", 1)
        if not recipe.packages:
            # A venv only: Python is there, ipykernel is not.
            dockerfile = dockerfile.replace(
                "/opt/python/bin/python -m pip install -q --no-index --find-links /tmp/wheels --upgrade pip \\\n && ",
                "",
            )
        (Path(ctx) / "Dockerfile").write_text(dockerfile)
        _say(f"building {recipe.tag} ({recipe.notes}) ...")
        client.images.build(path=ctx, tag=recipe.tag, rm=True, forcerm=True)
    _tag_extras(client, recipe)
    _say(f"built {recipe.tag}")
    return recipe.tag


def _tag_extras(client: docker.DockerClient, recipe: ImageRecipe) -> None:
    image = client.images.get(recipe.tag)
    for extra in recipe.extra_tags:
        repo, _, version = extra.partition(":")
        try:
            if client.images.get(extra).id == image.id:
                continue
        except docker.errors.ImageNotFound:
            pass
        image.tag(repo, version)


def build_all(names: list[str] | None = None) -> list[str]:
    """Build the named images (by default all but the on-demand ones), the Debian suites in parallel."""
    ensure_engine()
    names = names or [n for n, r in RECIPES.items() if r.default]
    errors: list[BaseException] = []

    def run(n: str) -> None:
        try:
            build(n)
        except BaseException as exc:  # reported below, after the other builds finish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return names


if __name__ == "__main__":
    build_all(sys.argv[1:] or None)
