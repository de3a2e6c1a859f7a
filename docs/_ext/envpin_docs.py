"""Sphinx extension: envpin's reference pages, generated from the code at build time.

Each fact a reader finds in the reference has one source in the code, and
these directives read it there, so the pages cannot drift from what envpin does:

* ``envpin-precedence``: the configuration precedence (``envpin_provisioner/options.py``'s docstring);
* ``envpin-options``: every provisioner option, from its traitlet: name, type, default, the
  ``ENVPIN_<OPTION>`` variable the server reads for it (found by setting it and looking), help;
* ``envpin-cli``: every ``envpin`` command, from the argparse parser of ``envpin_provisioner.cli.main``;
* ``envpin-use-image``: ``%use_image``'s arguments, from the magic's own parser, and the session
  options (``envpin.session.options.OPTIONS``);
* ``envpin-environment``: the environment variables, from ``envpin.names`` (its ``#:`` comments),
  the session options and the options' variables;
* ``envpin-pickle-matrix``: the measured pickle compatibility, from ``envpin/compat/pickle_matrix.json``;
* ``envpin-errors`` / ``envpin-warnings``: every ``EnvpinError`` subclass of both packages (and every
  warning class envpin issues), from their docstrings, with every message the code raises them with
  (read from the source's ``raise`` statements).

The directives write MyST Markdown and parse it in place, so their output is an
ordinary part of the page (headings, anchors, cross-references).  Anything
undocumented (an error class without a ``Fix:`` paragraph, a variable without
a comment, an option without help) is a build warning, which the test build
turns into an error.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import string
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

#: The two import packages, by name: the kernel side and the server side.
PACKAGES = ("envpin", "envpin_provisioner")


# ---- helpers ---------------------------------------------------------------------------------------


def escape(text: str) -> str:
    """``text`` shown literally in Markdown: every ASCII punctuation mark escaped (CommonMark allows it)."""
    return "".join("\\" + ch if ch in string.punctuation else ch for ch in text)


def cell(text: str) -> str:
    """Markdown for a table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def code(text: str) -> str:
    """An inline code span holding ``text`` whatever backticks it has."""
    ticks = "`"
    while ticks in text:
        ticks += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


_RST_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


def rst_to_md(text: str) -> str:
    """A docstring's light rST as Markdown: roles become code, ``double`` backticks stay (valid CommonMark)."""
    return _RST_ROLE.sub(lambda m: code(m.group(1)), text)


def paragraphs(doc: str | None) -> list[str]:
    """A docstring's paragraphs, each on one line."""
    text = inspect.cleandoc(doc or "")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def import_all() -> list[str]:
    """Import every module of both packages, so every error class is defined; the modules' names.

    ``envpin.entry.*`` and ``__main__`` modules are skipped: they are programs that run when
    imported (inside images, or as ``python -m``), and define no error of their own.
    """
    done = []
    for top in PACKAGES:
        package = importlib.import_module(top)
        for info in pkgutil.walk_packages(package.__path__, top + "."):
            if ".entry." in info.name or info.name.endswith(".__main__"):
                continue
            importlib.import_module(info.name)
            done.append(info.name)
    return done


def package_files() -> Iterator[tuple[str, Path]]:
    """(module name, path) of every source file of both packages, the entry programs included."""
    for top in PACKAGES:
        package = importlib.import_module(top)
        root = Path(package.__path__[0])
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


# ---- the directive base: Markdown in, nodes out ----------------------------------------------------


class MarkdownDirective(SphinxDirective):
    """A directive whose output is MyST Markdown made by :meth:`markdown`, parsed as part of the page."""

    has_content = False
    required_arguments = 0
    optional_arguments = 0
    option_spec = {"level": directives.positive_int}

    @property
    def h(self) -> str:
        """The Markdown heading mark of the directive's sections (``:level:``, default 2: under the page title)."""
        return "#" * self.options.get("level", 2)

    def markdown(self) -> str:
        raise NotImplementedError

    def warn(self, message: str) -> None:
        log.warning(message, location=(self.env.docname, self.lineno), type="envpin", subtype="undocumented")

    def run(self) -> list[nodes.Node]:
        text = self.markdown()
        # The page depends on the code it was made from: a changed docstring or option re-reads it.
        for _, path in package_files():
            self.env.note_dependency(str(path))
        from envpin.compat import policy

        self.env.note_dependency(str(policy.DATA_FILE))
        lines = text.splitlines()
        headings = [i for i, line in enumerate(lines) if re.match(r"#+ ", line)]
        if headings and any(line.strip() and not line.startswith("{#") for line in lines[: headings[0]]):
            # MyST attaches the sections to the page as it parses them, and what comes before the first
            # heading is returned after them: it would land at the end of the page.  (A heading's label is
            # written as a block attribute, "{#label}", which MyST puts on the heading itself.)
            self.warn(f"{self.name} writes text before its first heading; start it with a heading")
        holder = nodes.Element()
        self.state.nested_parse(StringList(lines, source=f"<{self.name}>"), 0, holder, match_titles=True)
        return list(holder.children)


# ---- options ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: removed), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _probe_value(trait: Any, default: Any) -> str | None:
    """A valid value of ``trait``'s type, different from ``default``, as an environment variable would give it."""
    kind = type(trait).__name__
    if kind == "CaselessStrEnum":
        return next((v for v in trait.values if v != default), None)
    if kind in ("Int", "Integer", "Float"):
        return "7"
    if kind == "ByteSize":
        return "7m"
    if kind in ("Unicode", "List"):
        return "envpin-docs-probe"
    return None  # Bool, Dict, Union: no variable would be read as one


def option_facts() -> list[dict[str, Any]]:
    """Every provisioner option: name, type, default, variable, help (the variable found by setting it)."""
    from envpin_provisioner.options import ProvisionerOptions
    from envpin_provisioner.provisioner import EnvpinProvisioner

    traits = EnvpinProvisioner.class_traits(config=True)
    option_vars = {f"ENVPIN_{name.upper()}": None for name in traits}
    with environment(**option_vars):
        clean = ProvisionerOptions()
        defaults = {name: getattr(clean, name) for name in traits}
    facts = []
    for name, trait in sorted(traits.items()):
        var = f"ENVPIN_{name.upper()}"
        probe = _probe_value(trait, defaults[name])
        reads_var = False
        if probe is not None:
            with environment(**{**option_vars, var: probe}):
                reads_var = getattr(ProvisionerOptions(), name) != defaults[name]
        facts.append(
            {
                "name": name,
                "type": trait_type(trait),
                "default": trait.metadata.get("doc_default") or repr(defaults[name]),
                "env": var if reads_var else None,
                "help": " ".join(inspect.cleandoc(trait.help or "").split()),
            }
        )
    return facts


def trait_type(trait: Any) -> str:
    kind = type(trait).__name__
    if kind == "CaselessStrEnum":
        return "one of " + ", ".join(code(v) for v in trait.values)
    if kind == "List":
        return "list of strings"
    if kind == "Dict":
        return "mapping"
    return {
        "Unicode": "string",
        "Int": "integer",
        "Integer": "integer",
        "Float": "number",
        "Bool": "true/false",
        "ByteSize": "size (bytes or `'20g'`)",
        "Union": "size (bytes or `'4g'`) or none",
    }.get(kind, trait.info())


class PrecedenceDirective(MarkdownDirective):
    """The configuration precedence, as ``envpin_provisioner.options`` states it."""

    def markdown(self) -> str:
        from envpin_provisioner import options

        doc = inspect.cleandoc(options.__doc__ or "")
        match = re.search(r"^(1\..*?)(?:\n\s*\n|\Z)", doc, re.S | re.M)
        if not match:
            self.warn("envpin_provisioner/options.py's docstring no longer lists the precedence (1. ... 5.)")
            return ""
        return rst_to_md(match.group(1))


class OptionsDirective(MarkdownDirective):
    """Every option of ``EnvpinProvisioner``: a summary table, then one section each."""

    def markdown(self) -> str:
        facts = option_facts()
        out = [
            f"{self.h} Summary",
            "",
            "| option | type | default | server variable |",
            "|---|---|---|---|",
        ]
        for f in facts:
            env = code(f["env"]) if f["env"] else ""
            out.append(
                f"| {{ref}}`{f['name']} <option-{f['name']}>` | {cell(f['type'])} | {cell(code(f['default']))} | {env} |"
            )
        out.append("")
        for f in facts:
            if not f["help"]:
                self.warn(f"option {f['name']} has no help text")
            out += [
                f"{{#option-{f['name']}}}",
                f"{self.h} `{f['name']}`",
                "",
                f"{f['type'][:1].upper() + f['type'][1:]}; default {code(f['default'])}"
                + (f"; the server's {code(f['env'])} sets the default." if f["env"] else "."),
                f'Kernelspec: `"{f["name"]}": ...` in `metadata.kernel_provisioner.config`;'
                f" Jupyter config: `c.EnvpinProvisioner.{f['name']}`.",
                "",
                escape(f["help"]),
                "",
            ]
        return "\n".join(out)


# ---- argparse parsers: the CLI and %use_image ------------------------------------------------------


def _argument_name(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            if action.choices:
                name += " " + "|".join(str(c) for c in action.choices)
            else:
                name += " " + (action.metavar or action.dest.upper())
        return name
    return str(action.metavar or action.dest.upper())


def arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        meaning = action.help or ""
        if action.required and action.option_strings:
            meaning += " (required)"
        default = action.default
        if default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
            meaning += f" (default: {default})"
        rows.append(f"| {cell(code(_argument_name(action)))} | {cell(escape(meaning))} |")
    if not rows:
        return ["No arguments.", ""]
    return ["| argument | meaning |", "|---|---|", *rows, ""]


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage lines, without argparse's "usage: " (or IPython's "::" literal-block marker)."""
    with environment(COLUMNS="100"):
        text = parser.format_usage()
    text = re.sub(r"^\s*(usage: |::\s*\n)", "", text)
    return textwrap.dedent(text).strip()


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """(command words, help, parser) of every command that takes no further sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for word, sub in action.choices.items():
                words = (*path, word)
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from leaf_commands(sub, words)
                else:
                    yield words, helps.get(word) or "", sub


class CliDirective(MarkdownDirective):
    """Every ``envpin`` command, from the parser ``envpin_provisioner.cli.main.build_parser`` builds."""

    def markdown(self) -> str:
        from envpin_provisioner.cli.main import build_parser

        parser = build_parser()
        out = [f"{self.h} `envpin`", "", escape(parser.description or ""), "", "```text", usage(parser), "```", ""]
        for words, help_text, sub in leaf_commands(parser):
            command = " ".join(("envpin", *words))
            if not help_text:
                self.warn(f"the command '{command}' has no help text")
            label = "cli-" + "-".join(words)
            out += [
                f"{{#{label}}}",
                f"{self.h} `{command}`",
                "",
                escape(help_text[:1].upper() + help_text[1:]) + ".",
                "",
            ]
            out += ["```text", usage(sub), "```", ""]
            out += arguments_table(sub)
        return "\n".join(out)


class UseImageDirective(MarkdownDirective):
    """``%use_image``'s arguments, from the magic's own parser."""

    def markdown(self) -> str:
        from envpin.notebook.magics import EnvpinMagics

        parser = EnvpinMagics.use_image.parser
        summary = paragraphs(parser.description)[0]  # the magic's docstring (IPython rewrites __doc__)
        return "\n".join([escape(summary), "", "```text", usage(parser), "```", "", *arguments_table(parser)])


class SessionOptionsDirective(MarkdownDirective):
    """The session options (``envpin.session.options.OPTIONS``): flag, values, variable, meaning."""

    def markdown(self) -> str:
        from envpin.session import options

        out = ["| flag | values | kernel variable | meaning |", "|---|---|---|---|"]
        for o in options.OPTIONS:
            values = "on/off" if o.choices is None else ", ".join(code(c) for c in o.choices)
            out.append(f"| {code(o.flag)} | {values} | {code(o.env)} | {cell(escape(o.help))} |")
        return "\n".join(out) + "\n"


# ---- environment variables -------------------------------------------------------------------------


class EnvironmentDirective(MarkdownDirective):
    """The variables envpin sets or reads, from ``envpin.names`` and the options."""

    def markdown(self) -> str:
        from sphinx.pycode import ModuleAnalyzer

        from envpin import names
        from envpin.session import options

        comments = ModuleAnalyzer.for_module("envpin.names").find_attr_docs()
        session = {o.env: o for o in options.OPTIONS}
        out = [
            f"{self.h} In kernels, jobs and host processes",
            "",
            "| variable | meaning |",
            "|---|---|",
        ]
        for attr, value in vars(names).items():
            if not isinstance(value, str) or not re.fullmatch(r"(ENVPIN|YT|JPY)_[A-Z_]+", value):
                continue
            if value in session:
                meaning = f"session option {code(session[value].flag)}: {escape(session[value].help)}"
            else:
                lines = comments.get(("", attr))
                if not lines:
                    self.warn(f"envpin.names.{attr} ({value}) has no '#:' comment saying what it is")
                    continue
                meaning = rst_to_md(" ".join(line.strip() for line in lines if line.strip()))
            out.append(f"| {code(value)} | {cell(meaning)} |")
        out += [
            "",
            f"{self.h} Read by the Jupyter server: option defaults",
            "",
            "Each sets the default of a provisioner option (a kernelspec or a Jupyter config file wins over it).",
            "",
            "| variable | option |",
            "|---|---|",
        ]
        for f in option_facts():
            if f["env"]:
                out.append(f"| {code(f['env'])} | {{ref}}`{f['name']} <option-{f['name']}>` |")
        return "\n".join(out) + "\n"


# ---- the pickle matrix -----------------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version))


class PickleMatrixDirective(MarkdownDirective):
    """The measured matrix: per pickler, what each sender's pickles did under each receiver Python."""

    def markdown(self) -> str:
        from envpin.compat import policy

        data = json.loads(Path(policy.DATA_FILE).read_text())
        pairs = data["pairs"]
        out = [
            f"{self.h} How it was measured",
            "",
            escape(data["about"]),
            "",
            f"Measured on {data['generated']} by {code(data['command'])} (the corpus: {code(data['corpus_source'])}); "
            f"{len(pairs)} pairs. *ok*: every case loaded and gave the sender's result; *wrong*: a wrong result; "
            "*error*: loading or running raised; *crash*: the loading interpreter died.",
            "",
        ]
        for pickler, envs in sorted(data["environments"].items()):
            pythons = sorted({e["python"] for e in envs}, key=_version_key)
            patches = {e["python"]: e["python_patch"] for e in envs}
            senders = sorted(
                {(e["python"], e["version"]) for e in envs}, key=lambda s: (_version_key(s[0]), _version_key(s[1]))
            )
            mine = [p for p in pairs if p["pickler"] == pickler]
            out += [
                f"{self.h} {pickler}",
                "",
                f"Rows: where the pickle was made (Python, {pickler}); columns: the Python it was loaded under; "
                f"each cell: the outcome for each {pickler} release on the loading side.",
                "",
                "| made under | " + " | ".join(f"loaded under Python {py} ({patches[py]})" for py in pythons) + " |",
                "|---|" + "---|" * len(pythons),
            ]
            for py, ver in senders:
                cells = []
                for target in pythons:
                    by_outcome: dict[str, list[str]] = {}
                    for p in mine:
                        if tuple(p["sent"]) == (py, ver) and p["loaded"][0] == target:
                            by_outcome.setdefault(p["outcome"], []).append(p["loaded"][1])
                    cells.append(
                        "; ".join(
                            f"**{outcome}**: {', '.join(sorted(vs, key=_version_key))}"
                            for outcome, vs in sorted(by_outcome.items())
                        )
                        or "not measured"
                    )
                out.append(f"| Python {py}, {pickler} {ver} | " + " | ".join(cells) + " |")
            out += ["", f"What broke, for {pickler} (each distinct failure, with the pairs it was seen in):", ""]
            failures: dict[tuple[str, str], list[str]] = {}
            for p in mine:
                if p["outcome"] == "ok":
                    continue
                for detail in p.get("details") or [p.get("detail") or ""]:
                    key = (p["outcome"], detail)
                    failures.setdefault(key, []).append(
                        f"{p['sent'][0]}/{p['sent'][1]} → {p['loaded'][0]}/{p['loaded'][1]}"
                    )
            out += ["| outcome | what happened | pairs (Python/release made → loaded) |", "|---|---|---|"]
            for (outcome, detail), where in sorted(failures.items()):
                shown = ", ".join(where[:6]) + (f" and {len(where) - 6} more" if len(where) > 6 else "")
                out.append(f"| {outcome} | {cell(code(detail[:200]) if detail else '')} | {cell(shown)} |")
            out.append("")
        return "\n".join(out)


# ---- errors and warnings ---------------------------------------------------------------------------


#: Literal text a resolved message needs to be worth showing (a fragment like " Its last output: …" is not).
_MIN_LITERAL = 30


class _MessageReader:
    """The messages one module's source gives a class: literal text, computed parts shown as ``…``.

    A message is followed one step where it is built nearby: a variable assigned in the same
    function (``text = f"..."; raise X(text)``), or a call of a function of the same module that
    returns or assigns the message (``raise X(_start_error(...))``).
    """

    def __init__(self, tree: ast.Module) -> None:
        self.parents: dict[ast.AST, ast.AST] = {}
        self.functions: dict[str, list[ast.AST]] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, []).append(node)

    def enclosing_function(self, node: ast.AST) -> ast.AST | None:
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    def render(self, node: ast.AST, at: ast.AST, depth: int = 0) -> list[str]:
        """The texts ``node`` (an expression found at ``at``) can be; ``["…"]`` when not literal."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            return [
                "".join(
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "…" for v in node.values
                )
            ]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            lefts, rights = self.render(node.left, at, depth), self.render(node.right, at, depth)
            return [a + b for a in lefts for b in rights][:20]
        if depth < 1 and isinstance(node, ast.Name):
            function = self.enclosing_function(at)
            if function is None:
                return ["…"]
            found = [text for assign in ast.walk(function) for text in self._assigned(assign, node.id, depth)]
            return found or ["…"]
        if depth < 1 and isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            found = []
            for function in self.functions.get(node.func.id, []):
                for inner in ast.walk(function):
                    value = None
                    if isinstance(inner, ast.Return) and inner.value is not None or isinstance(inner, ast.Assign):
                        value = inner.value
                    if value is not None:
                        found += [t for t in self.render(value, inner, depth + 1) if _literal(t) >= _MIN_LITERAL]
            return found or ["…"]
        return ["…"]

    def _assigned(self, node: ast.AST, name: str, depth: int) -> list[str]:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return [t for t in self.render(node.value, node, depth + 1) if _literal(t) >= _MIN_LITERAL]
        return []


def _literal(text: str) -> int:
    return len(text.replace("…", "").strip())


def _called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def messages_by_class(class_names: set[str]) -> dict[str, dict[str, list[str]]]:
    """{class name: {message: [modules]}}: every message the source builds one of these classes with.

    Found wherever the class is called with a message (``raise X(...)``, ``return X(...)``) and
    wherever a warning of it is issued (``warnings.warn(message, X)``).
    """
    found: dict[str, dict[str, list[str]]] = {}
    for module, path in package_files():
        tree = ast.parse(path.read_text(), str(path))
        reader = _MessageReader(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            cls, message = _called_name(node.func), node.args[0]
            if cls == "warn" and len(node.args) >= 2:
                cls = _called_name(node.args[1])
            if cls not in class_names:
                continue
            # A fix given apart (``X(problem, fix="...")``) ends the message, as str() puts it; one held in a
            # variable with several values is left out rather than paired with the wrong problem.
            fix = next((k.value for k in node.keywords if k.arg == "fix"), None)
            ends = [""] if fix is None or isinstance(fix, ast.Name) else [" " + f for f in reader.render(fix, node)]
            for text in (m + end for m in reader.render(message, node) for end in ends):
                text = " ".join(text.split())
                if _literal(text) < 10:
                    continue
                modules = found.setdefault(cls, {}).setdefault(text, [])
                if module not in modules:
                    modules.append(module)
    return found


def error_classes() -> list[type]:
    """``EnvpinError`` and every subclass defined in either package, by name."""
    from envpin.errors import EnvpinError

    import_all()
    seen: dict[type, None] = {EnvpinError: None}
    todo = [EnvpinError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.split(".")[0] in PACKAGES and sub not in seen:
                seen[sub] = None
                todo.append(sub)
    return sorted(seen, key=lambda c: c.__name__)


def warning_classes() -> list[type]:
    """Every ``Warning`` subclass defined in either package."""
    import_all()
    seen: dict[type, None] = {}
    todo: list[type] = [Warning]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.split(".")[0] in PACKAGES:
                seen[sub] = None
            todo.append(sub)
    return sorted(seen, key=lambda c: c.__name__)


def public_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _CatalogDirective(MarkdownDirective):
    kind = ""

    def classes(self) -> list[type]:
        raise NotImplementedError

    def markdown(self) -> str:
        classes = self.classes()
        messages = messages_by_class({c.__name__ for c in classes})
        names = [c.__name__ for c in classes]
        for name in {n for n in names if names.count(n) > 1}:
            self.warn(f"two {self.kind} classes are called {name}: their messages cannot be told apart")
        out = []
        for cls in classes:
            parts = paragraphs(cls.__doc__)
            if not parts:
                self.warn(f"{public_path(cls)} has no docstring")
                parts = [""]
            if self.kind == "error" and not any(p.startswith("Fix:") for p in parts):
                self.warn(f"{public_path(cls)}'s docstring has no 'Fix:' paragraph (what a user does about it)")
            bases = [b for b in cls.__bases__ if b.__module__.split(".")[0] in PACKAGES]
            kind_of = (
                f", a kind of {{ref}}`{bases[0].__name__} <{self.kind}-{bases[0].__name__.lower()}>`" if bases else ""
            )
            out += [f"{{#{self.kind}-{cls.__name__.lower()}}}", f"{self.h} `{cls.__name__}`", ""]
            out += [f"{code(public_path(cls))}{kind_of}.", ""]
            for p in parts:
                p = rst_to_md(p)
                if p.startswith("Fix:"):
                    p = "**Fix:**" + p[len("Fix:") :]
                out += [p, ""]
            said = messages.get(cls.__name__, {})
            if said:
                out += ["What envpin says (`…` stands for what it fills in):", ""]
                for text, modules in sorted(said.items()):
                    out.append(f"- {escape(text)} *({', '.join(code(m) for m in modules)})*")
                out.append("")
        return "\n".join(out)


class ErrorsDirective(_CatalogDirective):
    """Every ``EnvpinError`` of both packages: what it means, the fix, and every message it is raised with."""

    kind = "error"

    def classes(self) -> list[type]:
        return error_classes()


class WarningsDirective(_CatalogDirective):
    """Every warning class envpin issues, with its messages."""

    kind = "warning"

    def classes(self) -> list[type]:
        return warning_classes()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("envpin-precedence", PrecedenceDirective)
    app.add_directive("envpin-options", OptionsDirective)
    app.add_directive("envpin-cli", CliDirective)
    app.add_directive("envpin-use-image", UseImageDirective)
    app.add_directive("envpin-session-options", SessionOptionsDirective)
    app.add_directive("envpin-environment", EnvironmentDirective)
    app.add_directive("envpin-pickle-matrix", PickleMatrixDirective)
    app.add_directive("envpin-errors", ErrorsDirective)
    app.add_directive("envpin-warnings", WarningsDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
