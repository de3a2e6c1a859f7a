"""Engine adapters against the real client libraries (ytsaurus-client, ray, flytekit).

The notebook side is real: a real ipykernel (the host's ``python3`` kernel,
where the three libraries are installed) loads envpin and pins
``envpin-test/py311``, then uses each library as a user would.  What is
faked, and only where there is no cluster here:

* YTsaurus: the cluster's HTTP proxy (``tests/testutils/fake_yt.py``), which answers
  the calls the real client makes and records the ``start_operation`` specs;
* Ray: nothing is faked.  A real local Ray runs tasks (``env_vars`` mode), and
  a real local head with the job server records ``submit_job``'s
  ``runtime_env``; that job then fails for want of podman, which proves the
  server really tried to start it in the image;
* Flyte: no cluster is involved; tasks and workflows are serialized offline
  by flytekit's own serializer, which is what registration uploads.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from testutils import program
from testutils.kernels import kernel, run, run_json

IMAGE = "envpin-test/py311"
TESTS = os.path.dirname(os.path.abspath(__file__))
PIN = f"%load_ext envpin\n%use_image {IMAGE}"

#: Every test here runs kernels and pins an image of the engine: each asks for the engine.
pytestmark = pytest.mark.usefixtures("docker_client")


async def _ok(kc, code: str, timeout: float = 60) -> str:
    res = await run(kc, code, timeout)
    assert res["status"] == "ok", res
    return res["stdout"]


async def _image_id(docker_client) -> str:
    return docker_client.images.get(IMAGE).id


# --------------------------------------------------------------------------------------
# YTsaurus
# --------------------------------------------------------------------------------------

YT_SETUP = program("yt_client", "setup", TESTS=TESTS)


async def test_ytsaurus_every_user_job_runs_in_the_pinned_image(jupyter_env, tmp_path, docker_client):
    image_id = await _image_id(docker_client)
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, YT_SETUP)
        await _ok(kc, PIN)
        await _ok(kc, program("yt_client", "operations"), timeout=120)
        await _ok(kc, program("yt_client", "report"))
        report = await run_json(kc, "report")
        payloads = await run_json(kc, "payloads")
        assert await run_json(kc, "proxy.errors") == []
        # the pickler is cloudpickle (the client's default is dill), and the job function really loads and runs
        loaded = await run_json(
            kc,
            "[list(fn({'a': 1})) for fn, _ in (pickle.loads(d) for d in proxy.files.values() "
            "if b'cloudpickle' in d and b'mapper' in d)][:1]",
        )
        # a client created while pinned that asks for dill keeps it (and still gets the image)
        await _ok(
            kc,
            "dill_client = yt.YtClient(proxy=proxy.url, config={'pickling': {'framework': 'dill'}})\n"
            "dill_client.run_map(mapper, '//tmp/in', '//tmp/out', sync=False)",
            timeout=120,
        )
        explicit = await run_json(
            kc,
            "[dill_client.config['pickling']['framework'], proxy.operations[-1]['spec']['mapper']['docker_image']]",
        )
        # unpinning gives every configuration back what it had: the global one, the template, old and new clients
        await _ok(kc, "%unload_ext envpin")
        restored = await run_json(
            kc,
            "[(c['pickling']['framework'], c['user_job_spec_defaults'].get('docker_image'), "
            "c['pickling']['check_python_version']) for c in (yt.config.config, early.config, client.config, "
            "yt.YtClient(proxy=proxy.url).config)]",
        )
    assert [op["type"] for op in report] == ["map", "reduce", "map_reduce", "vanilla", "map", "map"]
    seen = 0
    for op in report:
        for name, job in op["jobs"].items():
            seen += 1
            assert job["image"] == IMAGE, (op["type"], name, job)
            assert job["env"]["YT_JOB_DOCKER_IMAGE"] == IMAGE
            assert job["env"]["ENVPIN_IMAGE"] == IMAGE
            assert job["env"]["ENVPIN_IMAGE_ID"] == image_id
            assert job["command"].startswith("python3 ")  # a host kernel: the image's own python3
    assert seen == 7  # map, reduce, map+reduce, vanilla task, global-config map, pre-pin client's map
    assert any(p == ["cloudpickle.cloudpickle"] or "cloudpickle.cloudpickle" in p for p in payloads), payloads
    assert loaded == [[{"a": 1}]]
    assert restored == [["dill", None, False]] * 4, restored
    assert explicit == ["dill", IMAGE]


async def test_ytsaurus_from_a_host_kernel_refuses_an_image_its_pickles_break_in(jupyter_env, tmp_path):
    """The engines' preflight: the measured matrix says 3.11 pickles crash 3.13, so nothing is submitted."""
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, YT_SETUP)
        await _ok(kc, "%load_ext envpin\n%use_image envpin-test/yt313:latest")
        started = time.monotonic()
        res = await run(kc, program("yt_client", "one-map"), 60)
        operations = await run_json(kc, "len(proxy.operations)")
    assert res["status"] == "error" and res["ename"] == "EnvelopeMismatch", res
    text = res["evalue"]
    assert text.startswith("Refusing to submit this YTsaurus operation: its mapper job's function")
    assert "measured: pickles made under Python 3.11 with cloudpickle" in text and "fail under Python 3.13" in text
    assert "the loading process crashed" in text
    assert "Nothing was submitted" in text and "\n" not in text  # one paragraph
    assert operations == 0 and time.monotonic() - started < 30


async def test_ytsaurus_job_with_its_own_image_keeps_it_with_a_warning(jupyter_env, tmp_path, docker_client):
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, YT_SETUP)
        await _ok(kc, PIN)
        out = await _ok(kc, program("yt_client", "own-image"))
        mapper = await run_json(kc, "proxy.operations[-1]['spec']['mapper']")
        # strict mode refuses before anything is submitted
        await _ok(kc, f"%use_image {IMAGE} --strict")
        res = await run(kc, "client.run_operation(own, sync=False)")
        count = await run_json(kc, "len(proxy.operations)")
    assert "ImageConflictWarning: YTsaurus mapper job names image 'registry.example/Team/other:2'" in out
    assert mapper["docker_image"] == "registry.example/Team/other:2"  # kept exactly: not lowercased
    assert mapper["environment"]["MINE"] == "1"
    assert "ENVPIN_IMAGE" not in mapper["environment"]  # the variables describe the pin, which it does not run
    assert res["status"] == "error" and res["ename"] == "ImageConflict", res
    assert count == 1


async def test_ytsaurus_from_a_kernel_running_in_the_image(install_kernelspec, notebook_dir, docker_client):
    """The product's own path: the notebook's kernel runs in the image that has ytsaurus-client.

    Its jobs get that image and the very interpreter the kernel runs
    (``pickling.python_binary``).  The kernel container shares the host's
    network here so that it reaches the fake proxy on 127.0.0.1.
    """
    from testutils.fake_yt import FakeYtProxy

    name = install_kernelspec("envpin-test/yt", network_mode="host")
    with FakeYtProxy() as proxy:
        async with kernel(name, cwd=notebook_dir) as (km, kc):
            await _ok(kc, "%load_ext envpin\n%use_image envpin-test/yt")
            await _ok(
                kc,
                "import yt.wrapper as yt\n"
                f"client = yt.YtClient(proxy={proxy.url!r})\n"
                "def mapper(row):\n    yield row\n"
                "client.run_map(mapper, '//tmp/in', '//tmp/out', sync=False)",
                timeout=120,
            )
            inside = await run_json(
                kc,
                "{'exe': __import__('sys').executable, 'dockerenv': __import__('os').path.exists('/.dockerenv'), 'image': __import__('os').environ['ENVPIN_IMAGE']}",
            )
        mapper = proxy.operations[-1]["spec"]["mapper"]
    assert inside["dockerenv"] is True and inside["exe"].startswith("/opt/python/")
    assert mapper["docker_image"] == inside["image"]
    assert mapper["environment"]["ENVPIN_IMAGE_ID"] == docker_client.images.get("envpin-test/yt").id
    assert mapper["command"].startswith(inside["exe"] + " ")  # the job runs the kernel's own interpreter


# --------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------


async def test_ray_local_cluster_env_vars_mode_reaches_the_tasks(jupyter_env, tmp_path, docker_client):
    image_id = await _image_id(docker_client)
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, f"%load_ext envpin\n%use_image {IMAGE} --ray-mode env_vars")
        status = await _ok(kc, "%use_image")
        await _ok(kc, program("ray_local_tasks"), timeout=180)
        result = await run_json(kc, "result")
    assert "ray: runtime_env env_vars (nodes run the image)" in status
    assert result["task"] == {
        "ENVPIN_IMAGE": IMAGE,
        "ENVPIN_IMAGE_ID": image_id,
        "YT_JOB_DOCKER_IMAGE": IMAGE,
        "MINE": None,
    }
    assert result["options"]["MINE"] == "1" and result["options"]["ENVPIN_IMAGE"] == "theirs"  # the user's win
    assert result["options"]["ENVPIN_IMAGE_ID"] == image_id  # merged, not replaced
    assert result["actor"] == IMAGE
    assert result["job"]["ENVPIN_IMAGE"] == IMAGE and result["job"]["ENVPIN_IMAGE_ID"] == image_id


async def test_ray_job_submission_records_image_uri(jupyter_env, tmp_path, docker_client):
    # The head runs on this host (Python 3.11.7) and the image has Ray on 3.11.2: Ray Client's own level of
    # Python match (minor) lets envpin's preflight through; the job is then recorded with the image.
    async with kernel("python3", cwd=tmp_path, env={"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor"}) as (km, kc):
        # the local head itself runs on this host: start it before pinning in image_uri mode
        await _ok(kc, program("ray_job_submission", "head"), timeout=180)
        await _ok(kc, "%load_ext envpin\n%use_image envpin-test/ray")
        await _ok(kc, program("ray_job_submission", "submit"), timeout=120)
        recorded = await run_json(kc, "recorded")
        outcome = await run_json(kc, "outcome")
        await _ok(kc, "ray.shutdown()")
    assert recorded["image_uri"] == "envpin-test/ray"
    assert recorded["env_vars"]["ENVPIN_IMAGE"] == "envpin-test/ray" and recorded["env_vars"]["MINE"] == "1"
    # the job server really tried to start the job in the image: it needs podman, which is not here
    assert outcome["status"] == "FAILED" and "podman" in outcome["message"], outcome


async def test_ray_local_cluster_in_a_kernel_running_in_the_image(install_kernelspec, notebook_dir, docker_client):
    """The notebook's kernel runs in an image with Ray; ray.init() starts a cluster inside that container.

    Its workers run the pinned image already, so the default image_uri mode
    stamps env_vars only (no podman needed) and says so.
    """
    name = install_kernelspec("envpin-test/ray")
    async with kernel(name, cwd=notebook_dir) as (km, kc):
        await _ok(kc, "%load_ext envpin\n%use_image envpin-test/ray")
        said = await _ok(
            kc,
            "import ray\nray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
            "@ray.remote\ndef where():\n    import os, sys\n"
            "    return {'image': os.environ.get('ENVPIN_IMAGE'), 'dockerenv': os.path.exists('/.dockerenv'),"
            " 'python': sys.executable}\n"
            "inside = ray.get(where.remote())\nray.shutdown()",
            timeout=180,
        )
        inside = await run_json(kc, "inside")
        kernel_image = await run_json(kc, "__import__('os').environ['ENVPIN_IMAGE']")
    assert "stamping env_vars only (image_uri is for remote clusters)" in said
    assert inside["image"] == kernel_image and inside["dockerenv"] is True, inside
    assert inside["python"].startswith("/opt/python/bin/python"), inside  # the image's interpreter


async def test_ray_local_cluster_from_a_host_kernel_without_podman_is_refused(jupyter_env, tmp_path, docker_client):
    # A host without podman: the kernel's PATH has none (the Ray e2e tests install podman on this machine).
    no_podman = {"PATH": os.path.dirname(sys.executable)}
    async with kernel("python3", cwd=tmp_path, env=no_podman) as (km, kc):
        await _ok(kc, PIN)
        started = time.monotonic()
        res = await run(kc, "import ray\nray.init(num_cpus=1, include_dashboard=False)", timeout=60)
        elapsed = time.monotonic() - started
        initialized = await run_json(kc, "ray.is_initialized()")
    assert res["ename"] == "RuntimeEnvConflict" and "podman, which is not installed here" in res["evalue"], res
    assert "--ray-mode env_vars" in res["evalue"]
    assert initialized is False and elapsed < 15


async def test_ray_pip_with_image_uri_is_refused_before_submission(jupyter_env, tmp_path, docker_client):
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, PIN)
        await _ok(kc, "import ray\n@ray.remote(runtime_env={'pip': ['requests']})\ndef f():\n    return 1")
        res = await run(kc, "f.remote()", timeout=30)  # no ray.init: refused before Ray would start a cluster
        res_job = await run(
            kc,
            "from ray.job_submission import JobSubmissionClient\n"
            "JobSubmissionClient.__new__(JobSubmissionClient).submit_job(entrypoint='python x.py', "
            "runtime_env={'uv': ['numpy']})",
        )
        started = await run_json(kc, "ray.is_initialized()")
    assert res["status"] == "error" and res["ename"] == "RuntimeEnvConflict", res
    assert "'pip'" in res["evalue"] and "image_uri" in res["evalue"] and "--ray-mode env_vars" in res["evalue"]
    assert "uv sync --no-install-project" in res["evalue"]
    assert "_ray_commit" not in res["evalue"]
    assert res_job["ename"] == "RuntimeEnvConflict" and "'uv'" in res_job["evalue"], res_job
    assert started is False


# --------------------------------------------------------------------------------------
# Flyte
# --------------------------------------------------------------------------------------


async def test_flyte_tasks_serialize_with_the_pinned_image(jupyter_env, tmp_path, docker_client):
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, PIN)
        await _ok(kc, program("flyte_serialize"), timeout=120)
        flyte = await run_json(kc, "flyte")
        await _ok(kc, "%unload_ext envpin")
        after = await run_json(kc, "os.environ.get('FLYTE_INTERNAL_IMAGE')")
    images = flyte["images"]
    assert set(images) == {"double", "fan", "own"}, images
    for name in ("double", "fan"):
        assert images[name]["image"] == IMAGE + ":latest"
        assert images[name]["env"]["ENVPIN_IMAGE"] == IMAGE
    assert images["own"]["image"] == "registry.example/other:3" and "ENVPIN_IMAGE" not in images["own"]["env"]
    assert any("Flyte task" in w and "registry.example/other:3" in w for w in flyte["warnings"]), flyte
    assert any("spec_task names image 'ImageSpec(gpu)'" in w for w in flyte["warnings"]), flyte
    assert flyte["default"] == IMAGE + ":latest"
    assert after is None  # unloading puts FLYTE_INTERNAL_IMAGE back


async def test_pyflyte_from_the_notebook_packages_with_the_pinned_image(jupyter_env, tmp_path, docker_client):
    """`!pyflyte package` run from a pinned notebook that never imported flytekit: FLYTE_INTERNAL_IMAGE reaches it."""
    package = tmp_path / "flows"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pipeline.py").write_text(
        "from flytekit import task, workflow\n\n"
        "@task\ndef double(x: int) -> int:\n    return 2 * x\n\n"
        "@workflow\ndef wf(x: int) -> int:\n    return double(x=x)\n"
    )
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, PIN)
        imported = await run_json(kc, "'flytekit' in __import__('sys').modules")
        out = await _ok(
            kc,
            "import os, subprocess, sys\n"
            "pyflyte = os.path.join(os.path.dirname(sys.executable), 'pyflyte')\n"
            "done = subprocess.run([pyflyte, '--pkgs', 'flows', 'package', '--output', 'flows.tgz', '--force'],"
            " capture_output=True, text=True)\n"
            "print(done.returncode, done.stderr[-2000:])",
            timeout=120,
        )
    assert imported is False
    assert out.startswith("0"), out
    import tarfile

    from flyteidl.admin.task_pb2 import TaskSpec

    with tarfile.open(tmp_path / "flows.tgz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("flows.pipeline.double_1.pb"))
        spec = TaskSpec.FromString(tar.extractfile(member).read())
    assert spec.template.container.image == IMAGE + ":latest"


async def test_flyte_image_with_the_code_says_its_tasks_need_no_bundle(jupyter_env, tmp_path, docker_client):
    """The marker: the image sets ENVPIN_CODE_IN_IMAGE; the status says its tasks are registered without a bundle."""
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, "%load_ext envpin\n%use_image envpin-test/with-code")
        status = await _ok(kc, "import flytekit\n%use_image")
    assert "the image contains the code (/opt/project)" in status
    assert "registered without a code bundle" in status


FLYTE2_TASKS = """\
import flyte

env = flyte.TaskEnvironment(name="code_env")


@env.task
async def double(x: int) -> int:
    return 2 * x
"""


async def test_flyte2_environments_serialize_with_the_pin_and_no_bundle_when_the_image_has_the_code(
    jupyter_env, tmp_path, docker_client
):
    """A host kernel pinned to an image that holds the project (its package ``flows_in_image`` is in
    /opt/project there, as in this checkout): Flyte 2's run, serialized by the real SDK, names the pin,
    carries the variables and no bundle; a module the image lacks is refused by asking the image; local
    mode here (outside the image) is warned about. Not run here: the task itself (its pod command runs in a
    container of an image with ``flyte`` 2 in tests/test_flyte2_e2e.py)."""
    pytest.importorskip("flyte")
    for package, module in (("flows_in_image", "tasks"), ("notinimage", "tasks")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / f"{module}.py").write_text(FLYTE2_TASKS.replace("code_env", f"{package}_env"))
    image_id = docker_client.images.get("envpin-test/flyte-code").id
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        status = await _ok(kc, "%load_ext envpin\n%use_image envpin-test/flyte-code\nimport flyte\n%use_image")
        said = await _ok(kc, program("flyte2_dry_run", MODULE="flows_in_image.tasks"), timeout=120)
        good = await run_json(kc, "flyte2")
        await _ok(kc, "import shutil; shutil.rmtree('bundle')")
        await _ok(kc, program("flyte2_dry_run", MODULE="notinimage.tasks"), timeout=120)
        bad = await run_json(kc, "flyte2")
        local = await _ok(
            kc,
            "import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
            "    r = flyte.with_runcontext(mode='local').run(tasks.double, x=4)\n"
            "print(r.outputs()[0], [type(x.message).__name__ for x in w])",
            timeout=120,
        )
    assert "flyte 2: image and env_vars of new TaskEnvironments" in status
    assert "copy_style='none'" in status and "local runs would be outside the image (warned)" in status
    assert good["image"] == "envpin-test/flyte-code:latest" and good["env"]["ENVPIN_IMAGE_ID"] == image_id
    assert good["bundle"] == [] and "--tgz" not in good["args"] and good["refused"] is None, good
    assert good["args"][good["args"].index("mod") + 1] == "flows_in_image.tasks"
    assert said.count("copy_style='none'") == 1
    assert bad["refused"].startswith("CodeNotInImage: Module 'notinimage.tasks' is not in image"), bad
    assert bad["bundle"] == []  # refused before Flyte bundled anything
    assert local.startswith("8 ") and "LocalRunWarning" in local


# --------------------------------------------------------------------------------------
# arming
# --------------------------------------------------------------------------------------


async def test_adapters_wait_for_their_library_import(jupyter_env, tmp_path, docker_client):
    """%use_image does not import Ray or flytekit; each adapter installs when the user imports its library."""
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, PIN)
        before = await run_json(
            kc, "sorted(m for m in ('ray', 'flytekit', 'yt.wrapper') if m in __import__('sys').modules)"
        )
        status_before = await _ok(kc, "%use_image")
        await _ok(kc, "import ray")
        status_after = await _ok(kc, "%use_image")
        wrapped = await run_json(kc, "hasattr(ray.init, '__envpin_original__')")
        await _ok(kc, "%unload_ext envpin")
        unwrapped = await run_json(kc, "hasattr(ray.init, '__envpin_original__')")
    assert before == []
    assert "ray: runtime_env image_uri + env_vars (on import ray)" in status_before
    assert "ray: runtime_env image_uri + env_vars\n" in status_after + "\n"
    assert wrapped is True and unwrapped is False


# --------------------------------------------------------------------------------------
# how envpin errors look in a notebook
# --------------------------------------------------------------------------------------


async def _tracebacks(kc, code: str) -> tuple[dict, list[str]]:
    shown: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "error":
            shown.append("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
            shown.append(msg["content"]["text"])  # how ipykernel shows a UsageError

    reply = await kc.execute_interactive(code, timeout=60, output_hook=hook, allow_stdin=False)
    return reply["content"], shown


async def test_envpin_errors_are_one_paragraph_and_tb_shows_the_rest(jupyter_env, tmp_path, docker_client):
    async with kernel("python3", cwd=tmp_path) as (km, kc):
        await _ok(kc, PIN)
        await _ok(
            kc, "import ray\n@ray.remote(runtime_env={'conda': {'dependencies': ['numpy']}})\ndef f():\n    return 1"
        )
        reply, shown = await _tracebacks(kc, "f.remote()")
        _, full = await _tracebacks(kc, "%tb")
        usage, usage_shown = await _tracebacks(kc, "%use_image envpin-test/does-not-exist")
        _, usage_full = await _tracebacks(kc, "%tb")
    assert reply["status"] == "error" and reply["ename"] == "RuntimeEnvConflict"
    short = shown[0]
    assert "'conda'" in short and "%tb shows the full traceback" in short
    assert "Traceback" not in short and "File " not in short and len(short.splitlines()) == 2, short
    assert "ray_adapter.py" in full[0] and "stamp_runtime_env" in full[0]  # the whole story, on demand
    assert usage["ename"] == "UsageError" and "could not be pulled" in usage["evalue"]
    assert len(usage_shown) == 1 and len(usage_shown[0].strip().splitlines()) == 2, usage_shown
    assert "%tb shows the full traceback" in usage_shown[0]
    assert "The above exception was the direct cause" in usage_full[0] and "magics.py" in usage_full[0]
