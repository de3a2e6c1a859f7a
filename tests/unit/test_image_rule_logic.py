"""The image rules without an engine: references, allowed_images on the parsed reference, aliases, pull budgets.

The engine-side half (pins, %use_image, pulls from a registry) is in
tests/security/test_image_rules.py.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from envpin.errors import EnvpinError
from envpin.images import allowlist, references
from envpin.session import aliases

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    "text, repository, tag, digest, engine_name",
    [
        ("python", "python", None, None, "python"),
        ("python:3.11", "python", "3.11", None, "python:3.11"),
        ("localhost:5000/team/app", "localhost:5000/team/app", None, None, "localhost:5000/team/app"),
        ("localhost:5000/team/app:3.11", "localhost:5000/team/app", "3.11", None, "localhost:5000/team/app:3.11"),
        # The engine ignores a tag beside a digest: so does envpin, in what it checks and what it asks for.
        (f"localhost:5000/team/app:3.11@{D1}", "localhost:5000/team/app", None, D1, f"localhost:5000/team/app@{D1}"),
        (f"app@{D1}", "app", None, D1, f"app@{D1}"),
        ("sha256:" + "a" * 64, None, None, None, "sha256:" + "a" * 64),
        ("abcdef012345", None, None, None, "abcdef012345"),
    ],
)
def test_references_parse_into_what_the_engine_uses(text, repository, tag, digest, engine_name):
    ref = references.parse(text)
    assert (ref.repository, ref.tag, ref.digest, ref.engine_name) == (repository, tag, digest, engine_name)


@pytest.mark.parametrize(
    "text", ["", "Python:3", "a b", "app:", "app@sha256:xyz", "-x", "a" * 300, "app:3.11@evil", "app\n:1"]
)
def test_references_refuse_what_is_no_reference(text):
    with pytest.raises(references.BadReference):
        references.parse(text)


APP = "localhost:5000/team/app"


@pytest.mark.parametrize(
    "reference, patterns, ok",
    [
        # tags: as before
        (f"{APP}:3.11", [f"{APP}:3.11*"], True),
        (f"{APP}:3.11-slim", [f"{APP}:3.11*"], True),
        (f"{APP}:evil", [f"{APP}:3.11*"], False),
        (APP, [f"{APP}:latest"], True),
        (APP, [APP], True),
        (f"{APP}:1", [APP], False),  # a bare repository pattern means REPO:latest
        (f"{APP}:1", ["localhost:5000/team/*"], True),
        # finding 4: a digest never matches by text on the tag written beside it
        (f"{APP}:3.11@{D1}", [f"{APP}:3.11*"], False),
        (f"{APP}:3.11@{D1}", [f"{APP}:3.11"], False),
        (f"{APP}@{D1}", [f"{APP}:3.11*"], False),
        (f"{APP}@{D1}", [APP], False),  # REPO means REPO:latest: it does not allow every tag's content
        # ... but a pattern naming that digest, or allowing every tag of the repository, does
        (f"{APP}:3.11@{D1}", [f"{APP}@{D1}"], True),
        (f"{APP}@{D1}", [f"{APP}@{D2}"], False),
        (f"{APP}@{D1}", [f"{APP}@*"], True),
        (f"{APP}@{D1}", [f"{APP}:*"], True),
        (f"{APP}@{D1}", ["localhost:5000/team/*"], True),
        (f"{APP}@{D1}", ["localhost:5000/*:*"], True),
        (f"{APP}@{D1}", ["*"], True),
        (f"{APP}@{D1}", ["localhost:5000/other/*"], False),
        (f"{APP}@{D1}", [f"{APP}?sha256:*"], False),  # a wildcard is no digest pattern
        (f"localhost:5000/team/appx@{D1}", [f"{APP}:*"], False),
        # other spellings of the same image are refused, never widened
        ("docker.io/library/python:3.11", ["python:3.11*"], False),
        ("python:3.11", ["docker.io/library/python:*"], False),
        # ids match as written
        ("sha256:" + "a" * 64, ["envpin-test/*"], False),
        ("sha256:" + "a" * 64, ["sha256:" + "a" * 64], True),
        # no reference: nothing matches once patterns are set; no patterns: everything is allowed
        ("Python:3.11", ["*"], False),
        ("not a reference", [], True),
    ],
)
def test_allowed_images_match_the_parsed_reference(reference, patterns, ok):
    assert allowlist.allowed(reference, patterns) is ok
    assert allowlist.allowed(references.parse(reference), patterns) is ok if references.is_valid(reference) else True


def test_a_digest_refusal_says_which_patterns_would_allow_it():
    with pytest.raises(allowlist.ImageNotAllowed) as info:
        allowlist.check(f"{APP}:3.11@{D1}", [f"{APP}:3.11*"], "%use_image in this kernel")
    message = str(info.value)
    assert f"'{APP}:3.11@{D1}'" in message and "REPO@sha256:" in message and "REPO:*" in message


# ---- aliases: read once, never through a link or a FIFO ------------------------------------------


@pytest.fixture
def aliases_file(tmp_path, monkeypatch):
    path = tmp_path / "aliases.json"
    monkeypatch.setenv("ENVPIN_ALIASES", str(path))
    return path


def test_aliases_refuse_a_fifo_without_blocking(aliases_file):
    os.mkfifo(aliases_file)
    done = []

    def load():
        try:
            aliases.load()
        except EnvpinError as exc:
            done.append(str(exc))

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5)
    assert done and "not a plain file" in done[0] and str(aliases_file) in done[0]


def test_aliases_refuse_a_link_and_a_huge_file(aliases_file, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"py": "SECRET/image"}))
    aliases_file.symlink_to(secret)
    with pytest.raises(EnvpinError, match="not a plain file") as info:
        aliases.load()
    assert "SECRET" not in str(info.value)
    aliases_file.unlink()
    aliases_file.write_text(json.dumps({"x": "y" * (aliases.MAX_ALIASES_BYTES + 1)}))
    with pytest.raises(EnvpinError, match="not a plain file"):
        aliases.load()
    aliases_file.unlink()
    assert aliases.load() == {}


def test_the_checked_reference_is_the_one_resolved(aliases_file, monkeypatch):
    """Finding 5: the policy check and the resolution read the aliases file separately; now once."""
    from envpin_provisioner.images import selection

    aliases_file.write_text(json.dumps({"py": "envpin-test/py311:latest"}))
    real_load, reads = aliases.load, []

    def load_then_flip():
        table = real_load()
        reads.append(table)
        aliases_file.write_text(json.dumps({"py": "envpin-test/py313:latest"}))  # flipped after each read
        return table

    monkeypatch.setattr(aliases, "load", load_then_flip)
    ref = selection.checked_reference("py", ["envpin-test/py311*"], "%use_image in this kernel")
    assert ref.engine_name == "envpin-test/py311:latest" and len(reads) == 1
    with pytest.raises(allowlist.ImageNotAllowed):  # the next request reads the flipped file, and is refused
        selection.checked_reference("py", ["envpin-test/py311*"], "%use_image in this kernel")


# ---- pull budgets -------------------------------------------------------------------------------


def test_a_pull_budget_bounds_count_bytes_and_rate():
    from envpin_provisioner.images.pull_budget import PullBudget, PullRefused

    budget = PullBudget(max_pulls=2, max_bytes=1000, interval=0)
    assert budget.admit("a:1") == 1000
    budget.charge(600)
    assert budget.admit("a:2") == 400
    with pytest.raises(PullRefused, match="max_pulls_per_kernel=2"):
        budget.admit("a:3")
    budget = PullBudget(max_pulls=5, max_bytes=1000, interval=0)
    budget.admit("a:1")
    budget.charge(1000)
    with pytest.raises(PullRefused, match="max_pull_bytes"):
        budget.admit("a:2")
    budget = PullBudget(max_pulls=5, max_bytes=1000, interval=30)
    budget.admit("a:1")
    started = time.monotonic()
    with pytest.raises(PullRefused, match="pull_interval"):
        budget.admit("a:2")
    assert time.monotonic() - started < 1  # refused at once, not waited for
    assert PullBudget(max_pulls=0, max_bytes=1000, interval=0).pulls == 0
    with pytest.raises(PullRefused):
        PullBudget(max_pulls=0, max_bytes=1000, interval=0).admit("a:1")


def test_pull_options_are_validated_with_defaults_and_environment(monkeypatch):
    from envpin_provisioner.errors import ConfigError
    from envpin_provisioner.options import ProvisionerOptions, byte_count, check_options

    options = ProvisionerOptions()
    assert (options.max_pulls_per_kernel, options.max_pull_bytes, options.pull_interval) == (10, "20g", 10.0)
    assert byte_count(options.max_pull_bytes, "max_pull_bytes") == 20 * 2**30
    monkeypatch.setenv("ENVPIN_MAX_PULLS_PER_KERNEL", "3")
    monkeypatch.setenv("ENVPIN_MAX_PULL_BYTES", "500m")
    monkeypatch.setenv("ENVPIN_PULL_INTERVAL", "2.5")
    options = ProvisionerOptions()
    assert (options.max_pulls_per_kernel, options.max_pull_bytes, options.pull_interval) == (3, "500m", 2.5)
    monkeypatch.setenv("ENVPIN_PULL_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="ENVPIN_PULL_INTERVAL"):
        ProvisionerOptions().pull_interval  # noqa: B018
    with pytest.raises(ConfigError) as info:
        check_options(
            ProvisionerOptions, {"max_pull_bytes": "lots", "max_pulls_per_kernel": -1, "pull_interval": "x"}, None
        )
    message = str(info.value)
    assert "'max_pull_bytes'" in message and "'max_pulls_per_kernel'" in message and "'pull_interval'" in message
    check_options(ProvisionerOptions, {"max_pull_bytes": 10**9, "max_pulls_per_kernel": 0, "pull_interval": 0}, None)
