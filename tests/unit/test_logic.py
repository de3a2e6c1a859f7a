"""Unit tier: envpin's pure logic, without any Docker engine (``DOCKER_HOST`` points at nothing here).

Options and their validation, image references, the pickle envelope,
fingerprint comparison, aliases, the session pin and its stamp, and how each
adapter stamps a job where its client library can do it offline.  Each test
asserts a value a user would see, or the message they would read.
"""

from __future__ import annotations

import json

import pytest

from envpin.compat import fingerprints
from envpin.errors import EnvpinError
from envpin.images import references
from envpin.jobs import envelope, worker_hosts
from envpin.session import aliases, stamping, state

# ---- provisioner options -------------------------------------------------------------------------


def _check(config):
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, config, None)
    return str(info.value)


def test_an_unknown_option_is_named_with_the_closest_known_one():
    message = _check({"imgae": "python:3.11"})
    assert "unknown option 'imgae' (did you mean 'image'?)" in message and "rename 'imgae' to 'image'" in message
    message = _check({"frobnicate": 1})  # nothing close: every known option is listed
    assert "Known options:" in message and "pull_policy" in message and "remove 'frobnicate'" in message


def test_impossible_values_are_refused_where_they_are_written():
    """The newcomer's values: each installed fine, then failed at the start in docker-py's words."""
    message = _check(
        {"mem_limit": "lots", "shm_size": "huge", "network_mode": "no net", "gpus": "many", "mounts": ["/data"]}
    )
    for key in ("mem_limit", "shm_size", "network_mode", "gpus", "mounts"):
        assert f"option '{key}' has the wrong type or value" in message, key
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, {"netwrok_mode": "none"}, None, where="install")
    assert info.value.fix.startswith("Fix the command: --config network_mode=") and "Nothing was installed" in str(
        info.value
    )
    check_options(
        ProvisionerOptions,
        {
            "mem_limit": "4g",
            "shm_size": "",
            "network_mode": "container:db",
            "gpus": "device=0,1",
            "mounts": ["/d:/d:ro"],
        },
        None,
    )


def test_impossible_values_from_jupyter_config_and_environment_are_refused(monkeypatch):
    from traitlets import TraitError
    from traitlets.config import Config

    from envpin_provisioner.options import ProvisionerOptions

    with pytest.raises(TraitError, match="mem_limit"):
        ProvisionerOptions(config=Config({"ProvisionerOptions": {"mem_limit": "lots"}}))
    monkeypatch.setenv("ENVPIN_SHM_SIZE", "huge")
    with pytest.raises(TraitError, match="shm_size"):
        ProvisionerOptions().shm_size  # noqa: B018


def test_a_start_error_reads_fix_first_in_short_lines():
    """JupyterLab's start dialog keeps line breaks and does not wrap: the fix must be on top, lines short."""
    from envpin.errors import DIALOG_WIDTH, dialog_text
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, check_options

    class Spec:
        display_name, resource_dir = "Typo kernel", "/home/me/.local/share/jupyter/kernels/typo"

    with pytest.raises(ConfigError) as info:
        check_options(ProvisionerOptions, {"image": "x:1", "netwrok_mode": "none"}, Spec())
    assert "\n" not in str(info.value)  # a paragraph for terminals and logs
    text = dialog_text(info.value)
    lines = text.splitlines()
    assert lines[0].startswith("Fix: rename 'netwrok_mode' to 'network_mode' in")
    assert "/home/me/.local/share/jupyter/kernels/typo/kernel.json" in " ".join(lines[:2])
    assert all(len(line) <= DIALOG_WIDTH for line in lines) and len(lines) <= 8


def test_an_ill_typed_option_says_what_was_expected():
    message = _check({"launch_timeout": "soon", "pull_policy": "sometimes"})
    assert "option 'launch_timeout' has the wrong type or value 'soon'" in message
    assert "option 'pull_policy'" in message


def test_valid_options_pass_and_config_keys_of_jupyter_client_are_ignored():
    from envpin_provisioner.options import ProvisionerOptions, check_options

    check_options(ProvisionerOptions, {"image": "x:1", "kernel_id": "k", "mem_limit": "2g", "gpus": "all"}, None)


def test_every_option_reads_its_environment_variable(monkeypatch):
    from envpin_provisioner.options import ProvisionerOptions

    monkeypatch.setenv("ENVPIN_IMAGE", "from-env:1")
    monkeypatch.setenv("ENVPIN_PULL_POLICY", "never")
    monkeypatch.setenv("ENVPIN_LAUNCH_TIMEOUT", "7")
    monkeypatch.setenv("ENVPIN_ALLOWED_IMAGES", "a/*, b:1")
    options = ProvisionerOptions()
    assert (options.image, options.pull_policy, options.launch_timeout) == ("from-env:1", "never", 7.0)
    assert options.allowed_images == ["a/*", "b:1"]


def test_config_beats_the_environment(monkeypatch):
    from traitlets.config import Config

    from envpin_provisioner.options import ProvisionerOptions

    monkeypatch.setenv("ENVPIN_IMAGE", "from-env:1")
    config = Config()
    config.ProvisionerOptions.image = "from-config:1"
    assert ProvisionerOptions(config=config).image == "from-config:1"


@pytest.mark.parametrize(
    "value, expected",
    [("", []), ("all", [(-1, None)]), ("2", [(2, None)]), ("device=0,1", [(0, ["0", "1"])])],
)
def test_gpus_take_docker_run_syntax(value, expected):
    from envpin_provisioner.kernel.container import parse_gpus

    found = [(r.get("Count", 0), r.get("DeviceIDs") or None) for r in parse_gpus(value)]
    assert found == expected


def test_gpus_in_another_syntax_are_refused_with_the_three_forms():
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.kernel.container import parse_gpus

    with pytest.raises(ConfigError, match="use 'all', a count like '2', or 'device=0,1'"):
        parse_gpus("nvidia")


@pytest.mark.parametrize(
    "setting, mem_limit, engine_memory, expected",
    [
        ("", None, 8 * 2**30, None),  # Docker's default
        ("2g", None, None, "2g"),  # as given
        ("auto", None, 8 * 2**30, 4 * 2**30),  # half the engine's memory
        ("auto", "1g", 8 * 2**30, 2**29),  # half the container's limit
        ("auto", "64m", None, 64 * 2**20),  # never below Docker's default
        ("auto", None, None, None),  # an engine that will not say
    ],
)
def test_shm_size_auto_is_half_the_memory_the_kernel_may_use(setting, mem_limit, engine_memory, expected):
    from envpin_provisioner.kernel.container import shm_size_for

    assert shm_size_for(setting, mem_limit, engine_memory) == expected


# ---- image references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference, repository",
    [
        ("localhost:5000/img", "localhost:5000/img"),  # the port is not a tag
        ("localhost:5000/img:1.2", "localhost:5000/img"),
        ("registry.example.com/ml/py@sha256:" + "a" * 64, "registry.example.com/ml/py"),
        ("python:3.11-slim", "python"),
    ],
)
def test_the_repository_of_a_reference(reference, repository):
    assert references.repository(reference) == repository


def test_the_server_reads_references_with_the_same_parser():
    from envpin_provisioner.images import pulling

    assert pulling._split("localhost:5000/img") == ("localhost:5000/img", "latest")
    assert pulling._split("localhost:5000/img:2") == ("localhost:5000/img", "2")


def test_an_invalid_reference_is_refused_by_name():
    from envpin_provisioner.errors import InvalidImageReference
    from envpin_provisioner.images.pulling import check_reference

    with pytest.raises(InvalidImageReference, match="Python:3.11"):
        check_reference("Python:3.11")


# ---- the pickle envelope -------------------------------------------------------------------------


def _frames_reader(frames):
    data = b"".join(bytes(f) for f in frames)
    position = 0

    def read(n):
        nonlocal position
        chunk, position = data[position : position + n], position + n
        return chunk

    return read


def test_an_envelope_round_trips_a_closure_and_its_numpy_array_out_of_band():
    import numpy as np

    factor = 3
    array = np.arange(50_000, dtype=np.float64)
    frames = envelope.dumps((lambda v: v * factor, array), "job")
    header, payload, buffers = envelope.read_frames(_frames_reader(frames))
    assert header["kind"] == "job" and header["env"]["pickler"] == "cloudpickle"
    assert len(buffers) == 1 and len(payload) < 10_000  # the array travelled out of band, not inside the pickle
    fn, back = envelope.loads(header, payload, buffers, "job")
    assert fn(2) == 6 and np.array_equal(back, array)


def test_control_frames_are_plain_json_any_python_can_read():
    header, payload, buffers = envelope.read_frames(_frames_reader(envelope.control_frames({"kind": "probe"})))
    assert header == {"kind": "probe"} and not payload and buffers == []


def test_a_payload_from_another_python_minor_is_refused_naming_both_sides():
    here = envelope.sender_environment()
    sent = {**here, "python_minor": "3.10", "python": "3.10.14"}
    with pytest.raises(envelope.EnvelopeMismatch) as info:
        envelope.check(sent, here, "job")
    assert "made under CPython 3.10.14" in str(info.value)
    assert f"Python 3.10 -> {here['python_minor']}" in str(info.value)  # not measured; every measured minor pair broke
    assert "%use_image" in str(info.value)


def test_a_payload_from_the_same_environment_passes():
    here = envelope.sender_environment()
    envelope.check(dict(here), here, "job")


# ---- fingerprints --------------------------------------------------------------------------------


def test_compare_puts_pickle_breaking_differences_first_and_skips_absent_engine_clients():
    a = {"python_minor": "3.11", "python_version": "3.11.2", "cloudpickle": "3.1.1", "ray": "2.60.0", "platform": "x"}
    b = {"python_minor": "3.13", "python_version": "3.13.5", "cloudpickle": "3.1.1", "platform": "y"}
    diffs = fingerprints.compare(a, b)
    assert [d.key for d in diffs] == ["python_minor", "platform"]  # python_version already said; ray absent there
    assert diffs[0].breaks_pickles and "<- breaks pickles (measured: " in str(diffs[0])


def test_identical_fingerprints_have_no_difference():
    here = fingerprints.local_fingerprint()
    assert fingerprints.compare(here, dict(here)) == []


# ---- aliases ---------------------------------------------------------------------------------------


def test_aliases_expand_and_unknown_names_stay(tmp_path, monkeypatch):
    path = tmp_path / "aliases.json"
    path.write_text(json.dumps({"py311": "registry.example.com/ml/python:3.11"}))
    monkeypatch.setenv("ENVPIN_ALIASES", str(path))
    assert aliases.expand("py311") == "registry.example.com/ml/python:3.11"
    assert aliases.expand("python:3.13") == "python:3.13"


def test_a_broken_aliases_file_names_itself_and_the_format(tmp_path, monkeypatch):
    path = tmp_path / "aliases.json"
    path.write_text("{not json")
    monkeypatch.setenv("ENVPIN_ALIASES", str(path))
    with pytest.raises(EnvpinError, match=f"{path} cannot be read.*JSON object like"):
        aliases.expand("py311")


# ---- the session pin, its stamp, and the adapters' activation ------------------------------------


class _RecordingAdapter:
    name = "recording"

    def __init__(self):
        self.stamps = []

    def available(self):
        return True

    def activate(self, stamp):
        self.stamps.append(stamp)

    def deactivate(self):
        self.stamps.append(None)


@pytest.fixture
def recording_adapter(monkeypatch):
    monkeypatch.setattr(stamping, "_registry", {})
    monkeypatch.setattr(stamping, "_active", {})
    adapter = _RecordingAdapter()
    stamping.register(adapter)
    yield adapter
    stamping.unpin_session()


def _pin(**kw):
    base = dict(name="py311", reference="reg.example/py:3.11", image_id="reg.example/py@sha256:" + "b" * 64)
    base.update(python="3.11.2", cloudpickle="3.1.1", mode="host")
    base.update(kw)
    return state.Pin(**base)


def test_pinning_activates_every_adapter_with_the_stamp(recording_adapter):
    assert stamping.pin_session(_pin()) == ["recording"]
    stamp = recording_adapter.stamps[-1]
    assert stamp.image == "reg.example/py:3.11" and stamp.env["YT_JOB_DOCKER_IMAGE"] == "reg.example/py:3.11"
    assert state.current_pin().name == "py311"
    stamping.unpin_session()
    assert recording_adapter.stamps[-1] is None and state.current_pin() is None


def test_by_digest_needs_a_registry_digest_and_changes_nothing_when_refused(recording_adapter):
    with pytest.raises(EnvpinError, match="has no registry digest"):
        stamping.pin_session(_pin(image_id="sha256:" + "c" * 64, by_digest=True))
    assert state.current_pin() is None and recording_adapter.stamps == []


def test_by_digest_writes_the_digest_into_jobs(recording_adapter):
    stamping.pin_session(_pin(by_digest=True))
    assert stamping.stamp({"image": None})["image"] == "reg.example/py@sha256:" + "b" * 64


def test_a_job_naming_its_own_image_keeps_it_with_a_warning_or_is_refused_when_strict(recording_adapter):
    stamping.pin_session(_pin())
    with pytest.warns(stamping.ImageConflictWarning, match="names image 'other:1'"):
        job = stamping.stamp({"image": "other:1", "env": {"MINE": "1"}})
    assert job["image"] == "other:1" and job["env"]["MINE"] == "1" and job["env"]["ENVPIN_IMAGE"]
    with pytest.raises(stamping.ImageConflict):
        stamping.stamp({"image": "other:1"}, strict=True)


def test_stamp_before_a_pin_says_what_to_do():
    with pytest.raises(EnvpinError, match="pin the session first with %use_image"):
        stamping.stamp()


def test_runs_in_image_matches_any_name_the_provisioner_gave(monkeypatch):
    monkeypatch.setenv("ENVPIN_IMAGE", "reg.example/py:3.11")
    monkeypatch.setenv("ENVPIN_IMAGE_NAME", "py311")
    monkeypatch.delenv("ENVPIN_IMAGE_ID", raising=False)
    assert state.runs_in_image("py311") and state.runs_in_image("reg.example/py:3.11")
    assert not state.runs_in_image("reg.example/py:3.13")
    monkeypatch.delenv("ENVPIN_IMAGE")
    monkeypatch.delenv("ENVPIN_IMAGE_NAME")
    assert not state.runs_in_image("py311")


@pytest.mark.parametrize(
    "death, says",
    [
        (worker_hosts.Death(1), "exited with code 1"),
        (worker_hosts.Death(137), "was killed (out of memory, or from outside)"),
        (worker_hosts.Death(137, oom=True), "ran out of memory"),
    ],
)
def test_a_dead_worker_is_described_in_words(death, says):
    assert says in death.describe()


# ---- adapters, offline ---------------------------------------------------------------------------


def _stamp(**kw):
    return stamping.Stamp(image="reg.example/py:3.11", image_id="sha256:" + "d" * 64, **kw)


def test_ray_runtime_env_gets_image_uri_and_env_vars_and_the_users_values_win():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    env = stamp_runtime_env({"env_vars": {"ENVPIN_IMAGE": "mine"}}, _stamp(), "image_uri", "task f")
    assert env["image_uri"] == "reg.example/py:3.11"
    assert env["env_vars"]["ENVPIN_IMAGE"] == "mine" and env["env_vars"]["YT_JOB_DOCKER_IMAGE"]


def test_ray_env_vars_mode_stamps_only_env_vars():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    env = stamp_runtime_env(None, _stamp(), "env_vars", "task f")
    assert "image_uri" not in env and env["env_vars"]["ENVPIN_IMAGE"] == "reg.example/py:3.11"


def test_ray_refuses_pip_beside_the_pinned_image_and_says_what_to_do():
    from envpin.adapters.ray_adapter import RuntimeEnvConflict, stamp_runtime_env

    with pytest.raises(RuntimeEnvConflict) as info:
        stamp_runtime_env({"pip": ["requests"]}, _stamp(), "image_uri", "Ray task f")
    assert "'pip'" in str(info.value) and "--ray-mode env_vars" in str(info.value)
    assert "Nothing was submitted" in str(info.value)


def test_ray_keeps_a_task_s_own_image_uri_with_a_warning():
    from envpin.adapters.ray_adapter import stamp_runtime_env

    with pytest.warns(stamping.ImageConflictWarning):
        env = stamp_runtime_env({"image_uri": "other:2"}, _stamp(), "image_uri", "Ray task f")
    assert env == {"image_uri": "other:2"}


def test_ray_compat_resolves_every_entry_point_of_the_installed_ray():
    from envpin.adapters import ray_compat

    assert ray_compat.missing() == [] and ray_compat.unsupported() is None


def test_ray_preflight_dashboard_address_follows_the_cluster(monkeypatch):
    from envpin.adapters.ray_adapter import _dashboard_for

    monkeypatch.delenv("ENVPIN_RAY_DASHBOARD", raising=False)
    assert _dashboard_for("ray://10.1.2.3:10001") == "http://10.1.2.3:8265"
    monkeypatch.setenv("ENVPIN_RAY_DASHBOARD", "http://dash:1")
    assert _dashboard_for("ray://10.1.2.3:10001") == "http://dash:1"


def test_yt_jobs_carry_the_image_and_a_chain_of_config_patches():
    import yt.yson as yson

    from envpin.adapters.yt_adapter import NESTING_DEPTH, job_environment

    env = job_environment(_stamp(), "reg.example/py:3.11", {"framework": "cloudpickle"})
    assert env["YT_BASE_LAYER"] == "reg.example/py:3.11" and env["ENVPIN_IMAGE"] == "reg.example/py:3.11"
    depth, patch = 0, env["YT_CONFIG_PATCHES"]
    while patch:
        level = yson.loads(patch.encode())
        assert level["user_job_spec_defaults"]["docker_image"] == "reg.example/py:3.11"
        assert level["pickling"]["framework"] == "cloudpickle"
        patch, depth = level["user_job_spec_defaults"]["environment"].get("YT_CONFIG_PATCHES"), depth + 1
    assert depth == NESTING_DEPTH


def test_yt_base_layer_is_left_out_for_an_uppercase_reference_the_client_would_lowercase():
    from envpin.adapters.yt_adapter import job_environment

    env = job_environment(_stamp(), "Reg.example/Py:3.11", {})
    assert "YT_BASE_LAYER" not in env


@pytest.mark.parametrize(
    "reference, flyte",
    [
        ("py", "py:latest"),
        ("localhost:5000/py", "localhost:5000/py:latest"),
        ("py:1", "py:1"),
        ("p@sha256:x", "p@sha256:x"),
    ],
)
def test_flyte_images_always_carry_a_tag(reference, flyte):
    from envpin.images.references import with_tag

    assert with_tag(reference) == flyte
