"""`%load_ext envpin` and `%use_image` in real kernels on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from testutils import NO_IPYKERNEL, PY311, PY313, containers, envpin_containers, flat
from testutils.kernels import PROBE, kernel, run, run_json

#: Every test here runs kernels or containers: each asks for the engine.
pytestmark = pytest.mark.usefixtures("docker_client")

WHERE = "import sys, os; print('where', sys.version_info[:2], os.environ.get('ENVPIN_IMAGE'), os.path.exists('/.dockerenv'))"


def _dump_diagnostics(nb) -> None:
    """On a failure, print what the kernels' containers said (pytest shows it with the failure)."""
    import docker

    for c in envpin_containers(docker.from_env()):
        print(
            f"--- container {c.short_id} {c.status} {c.labels.get('envpin.image')}\n{c.logs(tail=40).decode(errors='replace')}"
        )
    for i, cell in enumerate(nb.cells):
        print(f"--- cell {i}: {cell.source!r} -> {cell.get('outputs')}")


def execute(cells: list[str], kernel_name: str, folder, allow_errors=False) -> list[str]:
    """Run ``cells`` as a notebook in ``folder`` with nbclient; return each cell's text output."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=90,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(folder)}},
    )
    try:
        client.execute()
    except Exception:
        _dump_diagnostics(nb)
        raise
    texts = []
    for cell in nb.cells:
        parts = []
        for o in cell.outputs:
            parts.append(o.get("text") or o.get("data", {}).get("text/plain") or o.get("evalue") or "")
        texts.append("".join(parts))
    return texts


def test_headless_notebook_moves_then_starts_in_its_pin(install_kernelspec, notebook_dir, docker_client):
    name = install_kernelspec(PY313)  # the kernelspec says 3.13; the notebook wants 3.11
    cells = [WHERE, "%load_ext envpin", f"%use_image {PY311}", WHERE, "%use_image"]

    first = execute(cells, name, notebook_dir)
    assert "where (3, 13)" in first[0]  # no pin yet: the kernelspec's image
    assert f"moving this kernel into {PY311}" in first[2]
    assert f"where (3, 11) {PY311} True" in first[3]  # the cells after the move ran in the new image
    assert "jobs pinned to" in first[4] and PY311 in first[4]

    pin_file = json.loads((notebook_dir / ".envpin.json").read_text())
    pin = pin_file["notebooks"]["*"]  # nbclient does not name the notebook: the folder's pin
    assert pin["image"] == PY311 and pin["image_id"] == docker_client.images.get(PY311).id

    second = execute(cells, name, notebook_dir)
    assert f"where (3, 11) {PY311} True" in second[0]  # started directly in the pinned image
    assert "pinned to" in second[2] and "moving" not in second[2]


def test_a_headless_folder_pin_never_overrides_a_notebook_of_another_kernelspec(
    install_kernelspec, notebook_dir, docker_client
):
    """The newcomer's quickstart: a headless run pinned the folder ("*"); a notebook of that folder that names
    another kernelspec then ran in the pin's image, and nothing said so."""
    generic = install_kernelspec(PY313, name="generic")
    other = install_kernelspec(PY313, name="py313k", display_name="Python 3.13 (py313)")
    execute(["%load_ext envpin", f"%use_image {PY311}"], generic, notebook_dir)
    pin = json.loads((notebook_dir / ".envpin.json").read_text())["notebooks"]["*"]
    assert pin["image"] == PY311 and pin["kernelspec"] == "generic"  # the kernelspec the headless run used

    (out,) = execute([WHERE], other, notebook_dir)
    assert f"where (3, 13) {PY313} True" in out  # the notebook's own kernelspec decides
    assert "the folder pin '*'" in out and "was made in kernelspec 'generic'" in out  # and the kernel says why

    (out,) = execute([WHERE], generic, notebook_dir)
    assert f"where (3, 11) {PY311} True" in out  # the folder pin applies to its own kernelspec ...
    assert out.startswith(f"envpin: this kernel runs in '{PY311}', pinned by the folder pin '*' in {notebook_dir}")
    assert "%use_image IMAGE changes the pin" in out  # ... saying which pin, from where, how to change it


async def test_use_image_of_the_kernels_own_image_pins_without_moving(install_kernelspec, notebook_dir, docker_client):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        before = containers(docker_client, kernel=km.kernel_id, running=True)[0].id
        await run(kc, "%load_ext envpin\n%load_ext envpin")  # loading twice is harmless
        res = await run(kc, f"%use_image {PY311}")
        assert res["status"] == "ok", res
        pin = await run_json(kc, "__import__('dataclasses').asdict(__import__('envpin').current_pin())")
        assert pin["name"] == PY311 and pin["image_id"] == docker_client.images.get(PY311).id
        assert pin["python"].startswith("3.11.") and pin["mode"] == "kernel in image"
        after = containers(docker_client, kernel=km.kernel_id, running=True)[0].id
        assert after == before
        # Rich output for notebooks, text for terminals.
        status = await run(
            kc,
            "from envpin.notebook.display import Status; print(Status(envpin_pin := __import__('envpin').current_pin())._repr_html_())",
        )
        assert "<table" in status["stdout"] and PY311 in status["stdout"]


async def test_a_kernel_holding_state_refuses_to_move_without_restart(install_kernelspec, notebook_dir, docker_client):
    name = install_kernelspec(PY313)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, "%load_ext envpin\nresults = [1, 2, 3]")
        started = time.monotonic()
        res = await run(kc, f"%use_image {PY311}")
        assert res["status"] == "error" and res["ename"] == "UsageError"
        assert "holds state (results)" in res["evalue"] and f"%use_image {PY311} --restart" in res["evalue"]
        assert time.monotonic() - started < 10
        assert (await run_json(kc, PROBE))["python"] == [3, 13]  # still there, state intact
        assert not (notebook_dir / ".envpin.json").exists()

        res = await run(kc, f"%use_image {PY311} --restart")
        assert res["status"] == "ok", res
        assert (await run_json(kc, PROBE))["python"] == [3, 11]
        assert (await run(kc, "results"))["ename"] == "NameError"  # a new process: the state is gone
    # the moved kernel's container is removed at shutdown like any other (checked by the autouse fixture)


@pytest.mark.parametrize(
    "line,expected",
    [
        ("a b c", "%use_image takes one image and options, not 'a b c'"),
        ("Not_Valid/Ref!", "is not a valid Docker image reference"),
        ("envpin-test/absent:1", "could not be pulled"),
        (NO_IPYKERNEL, "has Python but not ipykernel"),
    ],
)
async def test_bad_use_image_calls_leave_the_kernel_where_it_was(install_kernelspec, notebook_dir, line, expected):
    name = install_kernelspec(PY313)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, "%load_ext envpin")
        started = time.monotonic()
        res = await run(kc, f"%use_image {line}")
        assert res["status"] == "error" and res["ename"] == "UsageError", res
        assert expected in res["evalue"]
        assert "Traceback" not in res["evalue"]
        assert time.monotonic() - started < 10
        assert (await run_json(kc, PROBE))["python"] == [3, 13]


async def test_a_damaged_pin_file_is_reported_and_kept(install_kernelspec, notebook_dir):
    name = install_kernelspec(PY313)
    (notebook_dir / ".envpin.json").write_text('{"notebooks": {"a.ipynb": {"image": ')
    from jupyter_client.manager import AsyncKernelManager

    from envpin.errors import PinFileError

    km = AsyncKernelManager(kernel_name=name)
    started = time.monotonic()
    with pytest.raises(PinFileError) as info:
        await km.start_kernel(cwd=str(notebook_dir))
    assert time.monotonic() - started < 10
    assert ".envpin.json is damaged (line 1)" in flat(info.value) and "will not overwrite" in flat(info.value)
    assert (notebook_dir / ".envpin.json").read_text() == '{"notebooks": {"a.ipynb": {"image": '


async def test_a_moved_tag_is_reported_and_the_pin_kept(install_kernelspec, notebook_dir, docker_client):
    """The pin says what the tag meant; when the tag moves, the kernel starts in the pinned id and says so."""
    tag = "envpin-test/moving:latest"
    docker_client.images.get(PY311).tag(tag)
    try:
        name = install_kernelspec(PY313)
        execute(["%load_ext envpin", f"%use_image {tag}"], name, notebook_dir)
        pinned = json.loads((notebook_dir / ".envpin.json").read_text())["notebooks"]["*"]["image_id"]
        assert pinned == docker_client.images.get(PY311).id
        docker_client.images.get(PY313).tag(tag)  # the tag moves to another image

        out = execute(
            [
                WHERE,
                "import os; print(os.environ.get('ENVPIN_IMAGE_LATEST_ID'))",
                "%load_ext envpin",
                f"%use_image {tag}",
                WHERE,
            ],
            name,
            notebook_dir,
        )
        assert "where (3, 11)" in out[0]  # started in the pinned id, not what the tag means now
        assert out[1].strip() == docker_client.images.get(PY313).id
        assert f"'{tag}' has moved since this notebook pinned it" in out[3]
        assert "where (3, 13)" in out[4]  # %use_image TAG means the tag as it is now
    finally:
        docker_client.images.remove(tag)


def test_aliases_show_the_name_the_user_wrote(install_kernelspec, notebook_dir, tmp_path, monkeypatch):
    aliases = tmp_path / "aliases.json"
    aliases.write_text(json.dumps({"py311": PY311}))
    monkeypatch.setenv("ENVPIN_ALIASES", str(aliases))
    name = install_kernelspec(PY313)
    out = execute(["%load_ext envpin", "%use_image py311", WHERE, "%use_image"], name, notebook_dir)
    assert f"where (3, 11) {PY311} True" in out[2]  # ENVPIN_IMAGE is the real reference ...
    assert "jobs pinned to  py311" in out[3] and f"reference       {PY311}" in out[3]  # ... the status the alias
    pin = json.loads((notebook_dir / ".envpin.json").read_text())["notebooks"]["*"]
    assert (pin["image"], pin["reference"]) == ("py311", PY311)


def test_unload_removes_the_magic(install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311)
    out = execute(
        ["%load_ext envpin", "%unload_ext envpin", f"%use_image {PY311}"], name, notebook_dir, allow_errors=True
    )
    assert "Line magic function `%use_image` not found" in out[2]


def test_plain_ipykernel_gets_the_fingerprint_warning(notebook_dir, jupyter_env):
    """A kernel on the host cannot move: jobs are pinned and the pickle-breaking differences shown."""
    started = time.monotonic()
    out = execute(["%load_ext envpin", f"%use_image {PY313}", "%use_image"], "python3", notebook_dir)
    assert time.monotonic() - started < 10 + 10  # kernel start plus at most 10 s for the warning
    assert "differs from it in ways that break pickles" in out[1]
    assert "python_minor: 3.11 vs 3.13  <- breaks pickles" in out[1]
    assert "jobs pinned to  " + PY313 in out[2] and "this host" in out[2]
    with pytest.raises(CellExecutionError) as info:
        execute(["%load_ext envpin", f"%use_image {PY313} --strict"], "python3", notebook_dir)
    assert "break pickles" in str(info.value)


def test_a_host_kernel_a_cloudpickle_patch_release_from_the_image_is_told_what_was_measured(notebook_dir, jupyter_env):
    """The policy in %use_image's comparison: measured to work passes quietly; --envelope strict says it refuses."""
    image = "envpin-test/py311-cloudpickle311:latest"
    out = execute(["%load_ext envpin", f"%use_image {image}"], "python3", notebook_dir)
    assert "break pickles" not in out[1] and "envpin warning" not in out[1]
    out = execute(["%load_ext envpin", f"%use_image {image} --envelope strict", "%use_image"], "python3", notebook_dir)
    assert "in ways that strict mode (--envelope strict / ENVPIN_ENVELOPE=strict) refuses" in out[1]
    assert "cloudpickle: " in out[1] and "vs 3.1.1" in out[1] and "(measured: " in out[1]
    with pytest.raises(CellExecutionError) as info:
        execute(["%load_ext envpin", f"%use_image {image} --envelope sloppy"], "python3", notebook_dir)
    assert "invalid choice: 'sloppy'" in str(info.value)


def test_fingerprint_and_compare(docker_client):
    import envpin

    here = envpin.fingerprint()
    there = envpin.fingerprint(image=PY313)
    assert here["python_minor"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert there["python_minor"] == "3.13" and there["image_id"] == docker_client.images.get(PY313).id
    assert there["cloudpickle"]
    diffs = envpin.compare(here, there)
    assert diffs[0].key == "python_minor" and diffs[0].breaks_pickles
    assert not envpin.compare(there, dict(there))
    # Cached by image id: the second call starts no container.
    from envpin.host import images

    def no_container(*args, **kwargs):
        raise AssertionError("a cached fingerprint started a container")

    original, images.run_python = images.run_python, no_container
    try:
        assert envpin.fingerprint(image=PY313) == there
    finally:
        images.run_python = original


def test_script_respawns_into_the_image(notebook_dir, docker_client):
    script = notebook_dir / "job.py"
    script.write_text(
        "import sys, os, envpin\n"
        f"envpin.use_image({PY313!r})\n"
        "print('in', sys.version_info[:2], os.environ['ENVPIN_RESPAWNED'], os.path.exists('/.dockerenv'), sys.argv[1:])\n"
        "print('read', sys.stdin.read().strip())\n"
        "print('to stderr', file=sys.stderr)\n"
        "open('made-in-container.txt', 'w').write('x')\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    out = subprocess.run(
        [sys.executable, "job.py", "7", "two words"], cwd=notebook_dir, input="piped in\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 7
    assert "in (3, 13) 1 True ['7', 'two words']" in out.stdout
    assert "read piped in" in out.stdout
    assert "to stderr" in out.stderr and "to stderr" not in out.stdout
    assert (notebook_dir / "made-in-container.txt").stat().st_uid == os.getuid()


def test_envpin_run_from_the_shell(notebook_dir):
    out = subprocess.run(
        [sys.executable, "-m", "envpin_provisioner", "run", "--image", PY311, "--",
         "python3", "-c", "import sys, os; print(sys.version_info[:2], os.getcwd()); sys.exit(5)"],
        cwd=notebook_dir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 5, out.stderr
    assert out.stdout.strip() == f"(3, 11) {notebook_dir}"


async def test_kernel_side_reports_what_the_image_lacks_in_one_line(install_kernelspec, notebook_dir):
    """The kernel has no engine (by design): fingerprinting another image says so, and what to do from there
    (it said "pip install docker", which would not help in a kernel)."""
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        res = await run(kc, f"import envpin; envpin.fingerprint(image={PY313!r})")
        assert res["ename"] == "EnvpinError" and "\n" not in res["evalue"]
        assert res["evalue"].startswith("This runs inside a container (a Containerized Python kernel, or a job)")
        assert f"Compare on the host: envpin.fingerprint(image={PY313!r})" in res["evalue"]
        assert f"%use_image {PY313}" in res["evalue"] and "pip install docker" not in res["evalue"]
        # envpin itself imported fine from the read-only mount, with nothing installed into the image.
        where = await run_json(
            kc, "[__import__('envpin').__file__, __import__('importlib.util').util.find_spec('docker') is None]"
        )
        assert where == ["/opt/envpin/python/envpin/__init__.py", True]


async def test_use_image_pull_goes_to_the_registry(install_kernelspec, notebook_dir):
    """--pull pulls even a present image (progress lines show under the cell while it runs)."""
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, "%load_ext envpin")
        out = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await kc.execute_interactive(f"%use_image {PY311} --pull", timeout=30, output_hook=hook)
        # No registry is reachable here, so the pull fails: the message says which image and why.
        assert reply["content"]["status"] == "error"
        evalue = reply["content"]["evalue"]
        assert f"Image '{PY311}' could not be pulled (pull policy 'always' or --pull)" in evalue
        assert "The local copy was not used" in evalue
        assert (await run_json(kc, PROBE))["python"] == [3, 11]  # the kernel is still there


async def test_use_image_in_a_script_returns_at_once_inside_the_image(install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        res = await run(
            kc,
            f"import envpin, time; t = time.monotonic(); envpin.use_image({PY311!r}); print(time.monotonic() - t < 0.1)",
        )
        assert res["stdout"].strip() == "True"  # no respawn: the process is in a container of that image


async def test_use_image_reports_a_damaged_pin_file_and_keeps_it(install_kernelspec, notebook_dir):
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        damaged = '{"notebooks": {"other.ipynb": {"image": "python:3.10"}}'  # hand-edited, a brace short
        (notebook_dir / ".envpin.json").write_text(damaged)
        started = time.monotonic()
        res = await run(kc, f"%load_ext envpin\n%use_image {PY311}")
        assert res["ename"] == "UsageError" and ".envpin.json is damaged" in res["evalue"]
        assert "will not overwrite it" in res["evalue"]
        assert time.monotonic() - started < 10
        assert (notebook_dir / ".envpin.json").read_text() == damaged  # the other notebook's pin is kept


async def test_by_digest_of_a_local_image_is_refused_before_any_move(install_kernelspec, notebook_dir):
    """Locally built images have no registry digest: --by-digest says so, and the kernel stays where it was."""
    name = install_kernelspec(PY311)
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await run(kc, "%load_ext envpin\nmarker = 1")
        for target in (PY311, PY313):
            res = await run(kc, f"%use_image {target} --by-digest --restart")
            assert res["status"] == "error" and "has no registry digest" in res["evalue"], res
        still = await run_json(kc, "[marker, __import__('sys').version_info[:2]]")
    assert still == [1, [3, 11]]
    assert not (notebook_dir / ".envpin.json").exists()
