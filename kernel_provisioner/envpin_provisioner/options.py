"""Refuse unknown or ill-typed provisioner options with one readable message.

Without this, jupyter_client passes a kernelspec's unknown keys on and
traitlets drops them with a deprecation warning nobody sees, and a wrong type
surfaces as a TraitError from deep inside traitlets.
"""

from __future__ import annotations

import difflib
from typing import Any

from traitlets import HasTraits, TraitError

from .errors import ConfigError


def check_options(cls: type, kwargs: dict[str, Any], kernel_spec: Any) -> None:
    """Raise ConfigError naming every unknown or ill-typed key of ``kwargs`` (the kernelspec's config)."""
    base = {"kernel_id", "kernel_spec", "parent", "config", "log", "connection_info"}
    traits = cls.class_traits(config=True)
    problems = []
    for key, value in kwargs.items():
        if key in base:
            continue
        if key not in traits:
            close = difflib.get_close_matches(key, traits, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown option '{key}'{hint}")
            continue
        try:
            traits[key].validate(_Dummy(), value)
        except TraitError:
            problems.append(f"option '{key}' has the wrong type or value {value!r} ({traits[key].info()} expected)")
    if problems:
        name = getattr(kernel_spec, "display_name", None) or "this kernel"
        image = kwargs.get("image") or "the default image"
        raise ConfigError(
            f"The kernelspec '{name}' (image {image}) has bad envpin settings in "
            f"metadata.kernel_provisioner.config: {'; '.join(problems)}. "
            f"Known options: {', '.join(sorted(traits))}. Fix the kernelspec's kernel.json "
            "(jupyter kernelspec list shows where it is) or reinstall it with envpin kernelspec install."
        )


class _Dummy(HasTraits):
    """Stand-in owner for trait validators, which look at the object they validate for."""


