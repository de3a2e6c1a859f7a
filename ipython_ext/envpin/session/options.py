"""The session options of ``%use_image``: the one definition every form of them derives from.

A session option is chosen once (``%use_image IMAGE --strict``) and then
outlives the kernel process: the server keeps it in the pin record, passes it
to the kernel it starts next (restart, move, reopened notebook) as an
environment variable, and the kernel's pin and stamps read it back.  So the
same four facts appear in five forms, and all five come from :data:`OPTIONS`:

* the magic's arguments (``--strict``, ``--ray-mode image_uri|env_vars`` ...);
* the control request a kernel sends the server, validated there as hostile
  input (:meth:`SessionOptions.parse` with ``strict_schema=True``);
* the pin record in ``.envpin.json`` (:meth:`SessionOptions.as_dict`, read
  back leniently, since a hand-edited file should not stop a kernel);
* the kernel's environment (:meth:`SessionOptions.as_env`,
  :meth:`SessionOptions.from_environ`, :func:`is_option_env`);
* the pin (``envpin.session.state.Pin``) and its stamp.

Adding an option is one :class:`Option` here and the code that acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from envpin import names

#: How Ray jobs get the image: Ray starts workers in it, or the cluster's nodes already run it.
RAY_MODES = ("image_uri", "env_vars")
#: How strictly jobs' pickles are checked (envpin.compat.policy): refuse what is measured to break, or any difference.
ENVELOPE_MODES = ("compatible", "strict")


@dataclass(frozen=True)
class Option:
    """One session option: its field name, its variable, its choices (None: a true/false flag) and its help."""

    name: str
    env: str
    choices: tuple[str, ...] | None
    help: str

    @property
    def flag(self) -> str:
        """The magic's argument (``--by-digest``)."""
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("strict", names.STRICT, None, "refuse, instead of warning, when the environments differ"),
    Option(
        "by_digest",
        names.BY_DIGEST,
        None,
        "jobs name the image by its registry digest (repo@sha256:...), not by a tag that may move",
    ),
    Option(
        "ray_mode",
        names.RAY_MODE,
        RAY_MODES,
        "Ray jobs: image_uri (Ray starts workers in the image; default, or $ENVPIN_RAY_MODE) "
        "or env_vars (the cluster's nodes already run the image)",
    ),
    Option(
        "envelope",
        names.ENVELOPE,
        ENVELOPE_MODES,
        "how jobs' pickles are checked: compatible (refuse what is measured to break, warn about what "
        "was never measured; default, or $ENVPIN_ENVELOPE) or strict (refuse any Python or pickler difference)",
    ),
)
BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
#: The environment variables that carry session options (set per start, never part of a warm container's shape).
VARS = frozenset(o.env for o in OPTIONS)


def is_option_env(name: str) -> bool:
    """True for a variable that carries a session option (set per start, from the pin or ``%use_image``)."""
    return name in VARS


def usage() -> str:
    """The options as the magic's usage line shows them."""
    return " ".join(f"[{o.flag}]" if o.choices is None else f"[{o.flag} {'|'.join(o.choices)}]" for o in OPTIONS)


class OptionError(ValueError):
    """A session option that is not one, or not of its type or choices (the message names which)."""


@dataclass(frozen=True)
class SessionOptions:
    """The four options' values; ``None``/``False`` is "not set" (the variable or the default decides)."""

    strict: bool = False
    by_digest: bool = False
    ray_mode: str | None = None
    envelope: str | None = None

    @classmethod
    def parse(cls, raw: Any, *, strict_schema: bool) -> SessionOptions:
        """Options from a JSON object (a control request's, or a pin record's).

        ``strict_schema``: raise :class:`OptionError` for an unknown field or a
        bad value (a request from a kernel, which is hostile input); otherwise
        drop them (a pin file someone edited by hand still starts its kernel).
        """
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            if strict_schema:
                raise OptionError("'options' must be an object")
            return cls()
        unknown = sorted(str(k)[:40] for k in raw if k not in BY_NAME)
        if unknown and strict_schema:
            raise OptionError(f"unknown option(s) {', '.join(repr(u) for u in unknown[:5])}")
        values: dict[str, Any] = {}
        for option in OPTIONS:
            value = raw.get(option.name)
            if value is None:
                continue
            if option.choices is None:
                ok = isinstance(value, bool)
                wanted = "true or false"
            else:
                ok = isinstance(value, str) and value in option.choices
                wanted = " or ".join(repr(c) for c in option.choices)
            if not ok:
                if strict_schema:
                    raise OptionError(f"option '{option.name}' must be {wanted}")
                continue
            values[option.name] = value
        return cls(**values)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SessionOptions:
        """The options a kernel was started with (bad values ignored: the code that uses one reports it)."""
        values: dict[str, Any] = {}
        for option in OPTIONS:
            value = environ.get(option.env)
            if value is None:
                continue
            if option.choices is None:
                values[option.name] = value == "1"
            elif value in option.choices:
                values[option.name] = value
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The set options only: the pin record's and the control request's form."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, False)}

    def as_env(self) -> dict[str, str]:
        """The variables that carry the set options into a new kernel process."""
        out = {}
        for name, value in self.as_dict().items():
            out[BY_NAME[name].env] = "1" if value is True else str(value)
        return out
