"""The documentation builds with warnings as errors, and its reference covers everything a user can meet.

The site (``docs/``) is built once, into a temporary folder, exactly as ``scripts/docs`` builds it:
``-W --keep-going -n``, so a broken reference, a missing page, an error class without a ``Fix:``
paragraph or an undocumented variable fails here.  The reference pages are generated from the code by
``docs/_ext/envpin_docs.py``; the checks below list what must be there *independently* of that
generator (from the traitlets, the parser, the error classes themselves), so a generator that skipped
something cannot pass by agreeing with itself.
"""

from __future__ import annotations

import argparse
import html
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs-html")
    doctrees = tmp_path_factory.mktemp("docs-doctrees")
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q", "-d", str(doctrees)]
        + [str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, f"the documentation does not build cleanly:\n{run.stderr}\n{run.stdout}"
    return out


def page(site: Path, name: str) -> str:
    return (site / name).read_text()


def ids(text: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', text))


def html_id(label: str) -> str:
    """The HTML id docutils makes of a label (``option-pool_size`` -> ``option-pool-size``)."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def test_every_option_has_its_section(site):
    from envpin_provisioner.provisioner import EnvpinProvisioner

    text = page(site, "reference/options.html")
    options = EnvpinProvisioner.class_traits(config=True)
    assert len(options) >= 20
    missing = [name for name in options if html_id(f"option-{name}") not in ids(text)]
    assert not missing, f"options without a section in the reference: {missing}"
    shown = html.unescape(text)
    for name, trait in options.items():  # each shows its own help
        first_words = " ".join(trait.help.split()[:6])
        assert first_words in shown, f"option {name}: its help ({first_words!r}...) is not on the page"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                nested = _commands(sub, (*words, word))
                found += nested or [(*words, word)]
    return found


def test_every_cli_command_and_argument_is_in_the_reference(site):
    from envpin_provisioner.cli.main import build_parser

    text = html.unescape(page(site, "reference/cli.html"))
    commands = _commands(build_parser())
    assert ("kernelspec", "install") in commands and ("gc",) in commands
    for words in commands:
        assert "cli-" + "-".join(words) in ids(text), f"no section for 'envpin {' '.join(words)}'"
        assert "envpin " + " ".join(words) in text
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices["run"]._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help"):
                assert option in text, option


def test_every_use_image_flag_is_in_the_reference(site):
    from envpin.notebook.magics import EnvpinMagics
    from envpin.session import options

    text = html.unescape(page(site, "reference/use-image.html"))
    flags = [o for a in EnvpinMagics.use_image.parser._actions for o in a.option_strings if o not in ("-h", "--help")]
    assert "--restart" in flags and "--pull" in flags
    for flag in flags:
        assert flag in text, flag
    for option in options.OPTIONS:
        assert option.env in text, option.env


def _all_error_classes() -> list[type]:
    from envpin.errors import EnvpinError

    for top in ("envpin", "envpin_provisioner"):
        package = importlib.import_module(top)
        for info in pkgutil.walk_packages(package.__path__, top + "."):
            if ".entry." not in info.name and not info.name.endswith("__main__"):
                importlib.import_module(info.name)
    found, todo = {EnvpinError}, [EnvpinError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.split(".")[0] in ("envpin", "envpin_provisioner") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: c.__name__)


def test_every_error_class_is_in_troubleshooting_with_its_fix(site):
    text = page(site, "troubleshooting.html")
    classes = _all_error_classes()
    assert len(classes) >= 20
    anchors = ids(text)
    missing = [c.__name__ for c in classes if f"error-{c.__name__.lower()}" not in anchors]
    assert not missing, f"error classes missing from troubleshooting: {missing}"
    sections = re.split(r'<section id="error-', text)[1:]
    without_fix = [s.split('"', 1)[0] for s in sections if "<strong>Fix:</strong>" not in s]
    assert not without_fix, f"errors shown without a fix: {without_fix}"


def test_troubleshooting_quotes_the_messages_envpin_raises(site):
    """A message from the source is on the page, with its computed parts as '…'."""
    text = html.unescape(page(site, "troubleshooting.html"))
    assert "is not a valid Docker image reference." in text
    assert "Image '…' has Python but not ipykernel, so the kernel could not start." in text  # via readiness.died
    assert "No Docker engine answers at …, so envpin cannot start a container." in text  # a returned error


def test_generated_pages_follow_the_data(site):
    import json

    from envpin.compat import policy

    data = json.loads(Path(policy.DATA_FILE).read_text())
    text = html.unescape(page(site, "reference/pickle-matrix.html"))
    assert f"{len(data['pairs'])} pairs" in text
    assert data["generated"] in text
    env_text = html.unescape(page(site, "reference/environment.html"))
    for var in ("ENVPIN_IMAGE_ID", "ENVPIN_POOL_SIZE", "ENVPIN_ALLOWED_IMAGES", "YT_JOB_DOCKER_IMAGE"):
        assert var in env_text, var


def test_the_site_opens_offline(site):
    """index.html and the pages load nothing from the network: every script and stylesheet is local."""
    for name in ("index.html", "reference/options.html", "troubleshooting.html"):
        text = page(site, name)
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', text)
        assert not remote, f"{name} loads {remote}"
    assert (site / "_static").is_dir() and (site / "search.html").is_file()


def test_every_cli_argument_of_every_command_is_in_the_reference(site):
    """Not only `envpin run`'s: `gc --engine`, `doctor --engine`, `kernelspec install --config` ... each appear."""
    from envpin_provisioner.cli.main import build_parser

    text = html.unescape(page(site, "reference/cli.html"))

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    yield from walk(sub, (*words, word))
            else:
                for option in action.option_strings:
                    if option not in ("-h", "--help"):
                        yield words, option

    found = list(walk(build_parser()))
    assert (("doctor",), "--engine") in found and (("gc",), "--engine") in found
    missing = [f"envpin {' '.join(words)} {option}" for words, option in found if option not in text]
    assert not missing, f"CLI options missing from the reference: {missing}"


def test_every_public_name_is_in_the_python_api_reference(site):
    """`envpin.__all__` is what a user may call: each name has its entry (DaskCluster included)."""
    import envpin

    text = html.unescape(page(site, "reference/python-api.html"))
    assert "DaskCluster" in envpin.__all__
    missing = [name for name in envpin.__all__ if not re.search(rf'id="envpin\.[\w.]*\b{name}"', text)]
    assert not missing, f"public names without an entry in the Python API reference: {missing}"


def test_the_readme_links_only_to_pages_that_exist_and_names_each_guide():
    """The README is the docs' front door: every relative link resolves, and each user-guide page is linked."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    relative = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert len(relative) > 20
    broken = [t for t in relative if not (ROOT / t).exists()]
    assert not broken, f"README links to missing files: {broken}"
    guide = sorted(p.relative_to(ROOT).as_posix() for p in (DOCS / "guide").rglob("*.md") if p.name != "index.md")
    unlinked = [g for g in guide if g not in relative]
    assert not unlinked, f"user-guide pages the README does not link to: {unlinked}"


def test_the_kubernetes_design_is_linked_from_the_remote_guide(site):
    remote = page(site, "guide/remote.html")
    assert 'href="kubernetes.html' in remote
    design = html.unescape(page(site, "guide/kubernetes.html"))
    for piece in ("image", "channels", "connection file", "package", "working folder", "ownerReference", "test"):
        assert piece in design, piece
