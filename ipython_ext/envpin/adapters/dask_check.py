"""Will this Dask cluster load this session's pickles?  The judgement, from the versions Dask reports.

Dask ships every task as a cloudpickle made in the client, and the
scheduler unpickles submitted graphs too (``update_graph``); results come
back pickled by the workers.  Its own guard is weak: ``Client(...)`` only
warns about version differences (``VersionMismatchWarning``), and
``Client.get_versions(check=True)`` never raises (dask/distributed#5731).
A client on Python 3.11 whose workers run 3.13 connects, and its first task
kills four workers in a row (``KilledWorker``).

This module is the pure part of envpin's check: it reads what Dask's own
version RPC returns (``Scheduler.versions`` and the ``versions`` broadcast
to workers: plain msgpack, no pickles) and judges each process against the
pinned image with ``envpin.compat.policy`` and its measured matrix, in both
directions (tasks to the cluster, results back):

* measured- or inferred-broken (a different Python minor; cloudpickle 3
  pickles under cloudpickle 2): refused, one paragraph naming the processes
  and both environments (:class:`ClusterMismatch`);
* not measured (a pickler release the matrix lacks, on the same Python
  minor), or another ``dask``/``distributed`` release (a Dask protocol
  matter nobody measured): a warning, once per pair;
* ``--envelope strict`` / ``ENVPIN_ENVELOPE=strict``: any difference of
  Python minor or pickler release is refused.

Standard library only (the adapter calls it with what the RPC returned).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from envpin.compat import policy
from envpin.errors import ClusterMismatch

#: How many process addresses a message names before it says "and N more".
NAMED = 4


class DaskVersionWarning(policy.UnmeasuredPairWarning):
    """The cluster runs another ``dask``/``distributed`` release than the pinned image (not measured; a notice)."""


@dataclass(frozen=True)
class Environment:
    """What decides whether a Dask process loads this session's pickles, and speaks its protocol."""

    python: str | None  #: "3.11.2"
    cloudpickle: str | None
    dask: str | None = None
    distributed: str | None = None

    @property
    def python_minor(self) -> str | None:
        return ".".join(self.python.split(".")[:2]) if self.python else None

    def side(self) -> policy.Side:
        return policy.Side("CPython", self.python_minor, "cloudpickle", self.cloudpickle)

    def describe(self) -> str:
        return f"Python {self.python or '?'} with cloudpickle {self.cloudpickle or 'missing'}"

    @classmethod
    def of_versions(cls, versions: Any) -> Environment | None:
        """From one entry of Dask's version RPC (``{"host": {"python": ...}, "packages": {...}}``); None if unusable."""
        if not isinstance(versions, dict):
            return None
        host: dict[str, Any] = versions.get("host") if isinstance(versions.get("host"), dict) else {}  # type: ignore[assignment]
        packages: dict[str, Any] = versions.get("packages") if isinstance(versions.get("packages"), dict) else {}  # type: ignore[assignment]
        python = _text(packages.get("python") or host.get("python"))
        if python:  # Dask writes "3.11.2.final.0"
            python = ".".join(python.split(".")[:3])
        return cls(
            python,
            _text(packages.get("cloudpickle")),
            _text(packages.get("dask")),
            _text(packages.get("distributed")),
        )


def _text(value: Any) -> str | None:
    """A version as Dask reported it: the cluster's word, kept as short plain text."""
    if value is None:
        return None
    text = "".join(ch for ch in str(value) if ch.isprintable())[:40]
    return text or None


@dataclass(frozen=True)
class Finding:
    """Processes of one environment, and what the matrix says about them."""

    processes: tuple[str, ...]  #: "the scheduler", "worker tcp://...", sorted (the scheduler first)
    there: Environment
    refused: bool
    evidence: str
    unmeasured: bool = False


def judge(pinned: Environment, processes: dict[str, Environment], mode: str) -> list[Finding]:
    """One :class:`Finding` per environment among ``processes`` that differs from ``pinned`` in pickles.

    Nothing when the pinned image's Python is unknown (a pin without facts): there is nothing to judge against.
    """
    if pinned.python_minor is None:
        return []
    by_env: dict[tuple[str | None, str | None], list[str]] = {}
    envs: dict[tuple[str | None, str | None], Environment] = {}
    for name, env in processes.items():
        key = (env.python_minor, env.cloudpickle)
        by_env.setdefault(key, []).append(name)
        envs.setdefault(key, env)
    findings = []
    for key, names in by_env.items():
        there = envs[key]
        verdicts = [policy.judge(pinned.side(), there.side()), policy.judge(there.side(), pinned.side())]
        refused = [v for v in verdicts if v.refused(mode)]
        if refused:
            verdict = next((v for v in refused if v.broken), refused[0])
            evidence = verdict.evidence
            if not verdict.broken:
                evidence += (
                    "; strict mode (ENVPIN_ENVELOPE=strict or %use_image --envelope strict) refuses any difference "
                    "of Python minor or pickler release"
                )
            findings.append(Finding(tuple(sorted(names)), there, True, evidence))
        elif any(v.status == "unmeasured" for v in verdicts):
            verdict = next(v for v in verdicts if v.status == "unmeasured")
            findings.append(Finding(tuple(sorted(names)), there, False, verdict.evidence, unmeasured=True))
    return findings


def _named(processes: tuple[str, ...]) -> str:
    """``a``, ``a and b``, ``a, b and c``, ``a, b, c, d and 3 more``."""
    shown = list(processes[:NAMED])
    if len(processes) > NAMED:
        shown.append(f"{len(processes) - NAMED} more")
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def _run(processes: tuple[str, ...]) -> str:
    """The verb for :func:`_named`: "the scheduler runs", "the scheduler and worker X run"."""
    return "runs" if len(processes) == 1 else "run"


def refusal(where: str, image: str, pinned: Environment, findings: list[Finding], doing: str) -> ClusterMismatch:
    """The one-paragraph error for the refused findings (``doing``: what happened to the client's work)."""
    refused = [f for f in findings if f.refused]
    sides = "; ".join(f"{_named(f.processes)} {_run(f.processes)} {f.there.describe()} ({f.evidence})" for f in refused)
    return ClusterMismatch(
        f"The Dask cluster at {where} cannot load this session's pickles: {sides}, but this session is pinned to "
        f"'{image}' ({pinned.describe()}), whose tasks Dask would ship there as cloudpickles, so they would fail "
        "to load or kill their workers (KilledWorker). Run the cluster's scheduler and workers in the pinned image "
        f"(envpin.DaskCluster() starts them on this machine's engine; on Kubernetes, Dask Gateway, a batch queue "
        f"or Coiled, envpin names the image when you do not), or pin the image the cluster runs. {doing}"
    )


_warned: set[tuple[Any, ...]] = set()


def reset() -> None:
    """Forget the warnings given once per cluster and pair (``envpin.reset_caches``)."""
    _warned.clear()


def warn_unmeasured(where: str, image: str, pinned: Environment, findings: list[Finding]) -> None:
    """Warn once per pair about what nobody measured (compatible mode proceeds)."""
    for f in findings:
        if f.refused or not f.unmeasured:
            continue
        key = ("pickle", pinned.side(), f.there.side())
        if key in _warned:
            continue
        _warned.add(key)
        warnings.warn(
            policy.UnmeasuredPairWarning(
                f"envpin: {_named(f.processes)} of the Dask cluster at {where} {_run(f.processes)} {f.there.describe()}, and this "
                f"session is pinned to '{image}' ({pinned.describe()}): {f.evidence}; proceeding (compatible mode; "
                "ENVPIN_ENVELOPE=strict refuses). If tasks fail to load, run the cluster in the pinned image."
            ),
            stacklevel=2,
        )


def warn_dask_versions(where: str, image: str, pinned: Environment, processes: dict[str, Environment]) -> None:
    """Warn once per pair when the cluster's ``dask``/``distributed`` differ from the pinned image's."""
    if not (pinned.dask or pinned.distributed):
        return
    differing: dict[tuple[str | None, str | None], list[str]] = {}
    for name, env in processes.items():
        theirs = (env.dask, env.distributed)
        if any(p and t and p != t for p, t in zip((pinned.dask, pinned.distributed), theirs, strict=True)):
            differing.setdefault(theirs, []).append(name)
    for (dask, distributed), names in differing.items():
        key = ("dask", pinned.dask, pinned.distributed, dask, distributed)
        if key in _warned:
            continue
        _warned.add(key)
        warnings.warn(
            DaskVersionWarning(
                f"envpin: {_named(tuple(sorted(names)))} of the Dask cluster at {where} run dask {dask} / distributed "
                f"{distributed}, and '{image}' has dask {pinned.dask} / distributed {pinned.distributed}; envpin has "
                "not measured whether these releases exchange graphs, so it proceeds. Run the cluster in the pinned "
                "image to be sure."
            ),
            stacklevel=2,
        )
