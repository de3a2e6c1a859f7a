"""Will a pickle made there load here?  The answer from measurement, and what to do about it.

envpin used to refuse any difference of Python minor version or pickler
release.  The Python half of that rule is right (code objects change shape
between minors), the pickler half was a guess that refused working pairs.
The answer now comes from ``pickle_matrix.json`` beside this module, written
by ``python -m tools.pickle_matrix``: a corpus (functions, closures,
lambdas, classes and dataclasses defined in a notebook, generator functions,
a module shipped by value, enums, exceptions, NumPy arrays out of band)
pickled under each of several Pythons and pickler releases and loaded and run
under each of them, in containers.

``judge(sent, here)`` gives a ``Verdict``:

* ``same``: same implementation, Python minor, pickler and release;
* ``measured-ok``: the pair was measured and every case worked;
* ``measured-broken``: the pair was measured and a case crashed, raised or
  gave a wrong result (the verdict names what happened);
* ``inferred-broken``: not measured, but the Python minors differ and every
  pair of different minors the matrix measured broke (3.10 -> 3.11 is such
  a pair); or the two sides use different picklers or implementations;
* ``unmeasured``: nothing measured says either way (a pickler release the
  matrix does not have, on the same Python minor).

``enforce(verdict, mode, what)`` applies the strictness setting:

* ``compatible`` (default): refuse what is broken, measured or inferred;
  allow what was measured to work; warn once per pair about an unmeasured
  pair and proceed;
* ``strict``: refuse anything but ``same`` (envpin's old rule).

The mode comes from, first to last: the call's own argument (an executor's
``envelope=``), ``%use_image --envelope`` (kept in the pin), the environment
variable ``ENVPIN_ENVELOPE``, then ``compatible``.

Python is compared by minor version: patch releases keep the pickle and
code-object formats (the matrix measured Debian's patch of each minor; the
host's may differ).  Standard library only: the kernel side is mounted into
images that may have nothing else.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envpin import names
from envpin.errors import EnvpinError
from envpin.session.options import ENVELOPE_MODES

DATA_FILE = Path(__file__).with_name("pickle_matrix.json")
DEFAULT_MODE = "compatible"
REFUSED = ("measured-broken", "inferred-broken")


class EnvelopeModeError(EnvpinError):
    """A strictness setting that is neither ``compatible`` nor ``strict``.

    Fix: set ``ENVPIN_ENVELOPE``, ``%use_image --envelope`` or ``ContainerExecutor(envelope=...)``
    to ``compatible`` or ``strict``, or leave it unset (``compatible``).
    """


class UnmeasuredPairWarning(UserWarning):
    """A pickle crosses environments the matrix has not measured; envpin proceeds (``compatible`` mode)."""


@dataclass(frozen=True)
class Side:
    """One side of a pickle's journey: what decides whether it loads."""

    implementation: str | None
    python: str | None  #: minor version, "3.11"
    pickler: str | None
    version: str | None  #: the pickler's release

    def __str__(self) -> str:
        impl = "" if self.implementation in (None, "CPython") else f"{self.implementation} "
        return f"{impl}Python {self.python} with {self.pickler} {self.version}"

    @classmethod
    def of_envelope(cls, env: dict[str, Any]) -> Side:
        """From an envelope header's ``env`` (``envelope.sender_environment``)."""
        return cls(env.get("implementation"), env.get("python_minor"), env.get("pickler"), env.get("pickler_version"))

    @classmethod
    def of_fingerprint(cls, fp: dict[str, Any], pickler: str = "cloudpickle") -> Side:
        """From a ``fingerprints`` dict, for ``pickler`` (cloudpickle, or dill for YTsaurus)."""
        return cls(fp.get("python_implementation"), fp.get("python_minor"), pickler, fp.get(pickler))


@dataclass(frozen=True)
class Verdict:
    status: str  #: same, measured-ok, measured-broken, inferred-broken, unmeasured
    sent: Side
    here: Side
    evidence: str  #: what is known, in words: "measured: ...", "not measured: ..."

    @property
    def broken(self) -> bool:
        return self.status in REFUSED

    def refused(self, mode: str) -> bool:
        return self.broken or (mode == "strict" and self.status != "same")


def check_mode(mode: str | None, source: str = names.ENVELOPE) -> str | None:
    """``mode`` if it is a known strictness setting (None stays None); a clear error naming ``source`` if not."""
    if mode is None or mode == "":
        return None
    if mode not in ENVELOPE_MODES:
        raise EnvelopeModeError(
            f"{source} is '{mode}', which is not a pickle-compatibility setting: use 'compatible' (refuse what "
            "is measured to break, warn about what was never measured) or 'strict' (refuse any difference of "
            "Python minor or pickler release)."
        )
    return mode


def resolve_mode(explicit: str | None = None, pinned: str | None = None) -> str:
    """The strictness in force: the call's argument, else the pin's, else ``$ENVPIN_ENVELOPE``, else compatible."""
    return (
        check_mode(explicit, "envelope=")
        or check_mode(pinned, "%use_image --envelope")
        or check_mode(os.environ.get(names.ENVELOPE))
        or DEFAULT_MODE
    )


@functools.lru_cache(maxsize=1)
def matrix() -> dict[str, Any]:
    """The measured matrix (``pickle_matrix.json``); empty when it is missing (then nothing is measured)."""
    try:
        return json.loads(DATA_FILE.read_text())
    except (OSError, ValueError):
        return {"pairs": [], "environments": {}}


@functools.lru_cache(maxsize=1)
def _pairs() -> dict[tuple[str, str, str, str, str], dict[str, Any]]:
    return {
        (p["pickler"], p["sent"][0], p["sent"][1], p["loaded"][0], p["loaded"][1]): p
        for p in matrix().get("pairs", [])
        if p.get("outcome") in ("ok", "wrong", "error", "crash")
    }


def _what_happened(pair: dict[str, Any]) -> str:
    outcome = pair["outcome"]
    hit, of = pair.get("cases_hit"), pair.get("cases_measured")
    share = f" in {hit} of {of} cases" if hit and of else ""
    detail = pair.get("detail") or ""
    if outcome == "crash":
        return f"the loading process crashed{share} ({detail})"
    if outcome == "wrong":
        return f"they loaded but gave wrong results{share} ({detail})"
    stage = "running" if pair.get("stage") == "run" else "loading"
    return f"{stage} them raised{share}: {detail}"


def _measured_minor_pairs(pickler: str) -> list[dict[str, Any]]:
    return [p for k, p in _pairs().items() if k[0] == pickler and k[1] != k[3]]


def judge(sent: Side, here: Side) -> Verdict:
    """What is known about loading, under ``here``, a pickle made under ``sent`` (see the module doc)."""

    def verdict(status: str, evidence: str) -> Verdict:
        return Verdict(status, sent, here, evidence)

    if sent == here:
        return verdict("same", "the same Python minor and pickler release on both sides")
    if sent.pickler != here.pickler:
        return verdict("inferred-broken", f"a {sent.pickler} pickle is loaded with {here.pickler}")
    if sent.implementation != here.implementation:
        return verdict("inferred-broken", f"{sent.implementation} and {here.implementation} do not share code objects")
    pickler = str(sent.pickler)
    pair = _pairs().get((pickler, str(sent.python), str(sent.version), str(here.python), str(here.version)))
    if pair is not None:
        if pair["outcome"] == "ok":
            return verdict(
                "measured-ok",
                f"measured: pickles made under {sent} load and run correctly under {here} "
                f"({pair.get('cases_measured')} of {pair.get('cases_measured')} cases)",
            )
        return verdict(
            "measured-broken", f"measured: pickles made under {sent} fail under {here}: {_what_happened(pair)}"
        )
    if sent.python != here.python:
        cross = _measured_minor_pairs(pickler)
        these = [p for p in cross if (p["sent"][0], p["loaded"][0]) == (sent.python, here.python)]
        if these and all(p["outcome"] != "ok" for p in these):
            example = these[0]
            return verdict(
                "measured-broken",
                f"measured: {pickler} pickles made under Python {sent.python} fail under Python {here.python} "
                f"with every {pickler} release measured ({len(these)} release pairs; e.g. {example['sent'][1]} -> "
                f"{example['loaded'][1]}: {_what_happened(example)})",
            )
        if cross and all(p["outcome"] != "ok" for p in cross):
            minors = sorted({f"{p['sent'][0]} -> {p['loaded'][0]}" for p in cross})
            return verdict(
                "inferred-broken",
                f"not measured for Python {sent.python} -> {here.python}, but every one of the {len(cross)} measured "
                f"pairs of different Python minors broke ({', '.join(minors)}): code objects change between minors",
            )
    return verdict("unmeasured", f"not measured: pickles made under {sent}, loaded under {here}")


_warned: set[tuple[Side, Side]] = set()


def enforce(
    verdict: Verdict, mode: str, refuse: type[Exception], what: str, fix: str, doing: str = "Refusing to unpickle"
) -> None:
    """Raise ``refuse`` (a one-paragraph message) if ``mode`` refuses ``verdict``; warn once per unmeasured pair.

    The message reads "``doing`` ``what``: what is known. ``fix``".
    """
    if verdict.refused(mode):
        if verdict.broken:
            why = verdict.evidence
        else:
            why = (
                f"{verdict.evidence}; strict mode ({names.ENVELOPE}=strict or envelope='strict') refuses any difference "
                f"of Python minor or pickler release (compatible mode would "
                f"{'allow it' if verdict.status == 'measured-ok' else 'warn and proceed'})"
            )
        raise refuse(f"{doing} {what}: {why}. {fix}")
    if verdict.status == "unmeasured":
        key = (verdict.sent, verdict.here)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                UnmeasuredPairWarning(
                    f"envpin: {verdict.evidence}; proceeding (compatible mode; {names.ENVELOPE}=strict refuses). "
                    f"If {what} fails to load, run both sides in one image."
                ),
                stacklevel=3,
            )


def reset() -> None:
    """Read the matrix again on next use and warn again about unmeasured pairs (``envpin.reset_caches``)."""
    matrix.cache_clear()
    _pairs.cache_clear()
    _warned.clear()
