"""Measure which pickles survive a change of Python or pickler: envpin's compatibility matrix.

envpin refuses to load a pickle made under another environment when, and
only when, that is known to break (``envpin.compat.policy``).  What is known comes
from here: every sender environment (a Python minor version, from a Debian
suite's image, times a pickler release) pickles a fixed corpus (see
``pickle_matrix_probe``), and every receiver environment of the same pickler
loads and runs all of it, in containers of the real images, offline.  Each
(sender, receiver) pair is recorded as one of

* ``ok``: every case loaded and gave the sender's result;
* ``wrong``: a case loaded and ran, and gave another result;
* ``error``: a case raised while loading or running (the error is kept);
* ``crash``: loading or running a case killed the interpreter (a signal);

with the per-case outcomes behind it.  The result is
``ipython_ext/envpin/compat/pickle_matrix.json``, shipped in the package::

    python -m tools.pickle_matrix            # the full matrix (several minutes), rewrites the data file
    python -m tools.pickle_matrix --quick    # a subset (Python 3.11/3.13, two cloudpickle releases), printed

Picklers are pure-Python wheels fetched on the host (``pip download``) and
imported from the zip inside the container, so one image per Python serves
every pickler release.  Containers run with no network, as the caller's uid,
the probe and wheels mounted read-only, and are removed when they exit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

from tools import images

REPO = Path(__file__).resolve().parent.parent
DATA_FILE = REPO / "ipython_ext" / "envpin" / "compat" / "pickle_matrix.json"
PROBE = Path(__file__).resolve().parent / "pickle_matrix_probe.py"

#: Python minor -> the image that has it (Debian bullseye, bookworm, trixie: tools.images).
PYTHONS = {"3.9": "envpin-test/py39:latest", "3.11": "envpin-test/py311:latest", "3.13": "envpin-test/py313:latest"}
#: The last 2.x, 3.0.x and every 3.1.x of cloudpickle; dill (what YTsaurus can pickle with) from 0.3.6 on.
PICKLERS = {
    "cloudpickle": ("2.2.1", "3.0.0", "3.1.0", "3.1.1", "3.1.2", "3.1.3"),
    "dill": ("0.3.6", "0.3.8", "0.3.9", "0.4.0", "0.4.1"),
}
#: What the test suite runs (tests/test_pickle_matrix.py): two Pythons, two cloudpickle patch releases.
QUICK = {"pythons": ("3.11", "3.13"), "picklers": {"cloudpickle": ("3.1.1", "3.1.3")}}

OUTCOME_ORDER = ("crash", "error", "wrong", "ok")  # a pair is as bad as its worst case
WHEELS = images.CACHE_DIR / "pickle-matrix-wheels"


def _say(msg: str) -> None:
    print(f"[pickle matrix] {msg}", file=sys.stderr, flush=True)


def wheel(pickler: str, version: str) -> Path:
    """The pure-Python wheel of ``pickler==version``, downloaded once into the dev cache."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    found = sorted(WHEELS.glob(f"{pickler}-{version}-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*cmd, "-d", str(WHEELS), f"{pickler}=={version}"], check=True)
        found = sorted(WHEELS.glob(f"{pickler}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download {pickler}=={version} gave no wheel in {WHEELS}")
    return found[0]


def _run(client: docker.DockerClient, image: str, workdir: Path, *args: str) -> str:
    """Run the probe in a container of ``image``; its stdout (it raises ContainerError on a non-zero exit)."""
    out = client.containers.run(
        image,
        ["python", "/matrix/probe.py", *args],
        remove=True,
        network_disabled=True,
        user=f"{os.getuid()}:{os.getgid()}",
        volumes={str(workdir): {"bind": "/matrix", "mode": "ro"}},
        environment={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
        labels={"envpin.test": "pickle-matrix"},
        stdout=True,
        stderr=False,
    )
    return out.decode()


def _verdict(cases: dict[str, dict[str, Any]], at_home: set[str]) -> dict[str, Any]:
    """One pair's outcome from its cases' (worst first), with the first detail of that outcome.

    Cases in ``at_home`` fail even when loaded where they were made (dill
    cannot pickle an enum defined in ``__main__``, say): a limit of the
    pickler, not of moving between environments, so they do not count.
    """
    measured = {n: c for n, c in cases.items() if c["outcome"] != "not_made" and n not in at_home}
    if not measured:
        return {"outcome": "not_made"}
    worst = min((c["outcome"] for c in measured.values()), key=OUTCOME_ORDER.index)
    hits = sorted(n for n, c in measured.items() if c["outcome"] == worst)
    verdict: dict[str, Any] = {"outcome": worst, "cases_hit": len(hits), "cases_measured": len(measured)}
    if worst != "ok":
        first = measured[hits[0]]
        verdict["detail"] = first.get("detail", "")
        if first.get("stage"):
            verdict["stage"] = first["stage"]
    return verdict


def measure(pythons: tuple[str, ...], picklers: dict[str, tuple[str, ...]], jobs: int = 4) -> dict[str, Any]:
    """Run the matrix for ``pythons`` x ``picklers``; return the data file's content."""
    for python in pythons:
        images.build(PYTHONS[python])
    client = docker.from_env(timeout=600)
    pairs: list[dict[str, Any]] = []
    environments: dict[str, list[dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="envpin-matrix-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        shutil.copy(PROBE, workdir / "probe.py")
        (workdir / "wheels").mkdir()
        for pickler, versions in picklers.items():
            envs = [(p, v) for p in pythons for v in versions]
            for _, version in envs:
                target = workdir / "wheels" / wheel(pickler, version).name
                if not target.exists():
                    shutil.copy(wheel(pickler, version), target)

            def dump(env: tuple[str, str], pickler: str = pickler) -> dict[str, Any]:
                python, version = env
                whl = f"/matrix/wheels/{wheel(pickler, version).name}"
                return json.loads(_run(client, PYTHONS[python], workdir, "dump", pickler, whl))

            _say(f"{pickler}: {len(envs)} senders pickle the corpus ...")
            with ThreadPoolExecutor(jobs) as pool:
                senders = list(pool.map(dump, envs))
            (workdir / f"senders-{pickler}.json").write_text(json.dumps(senders))
            environments[pickler] = [
                {"python": s["env"]["python_minor"], "python_patch": s["env"]["python"], "version": v}
                for s, (_, v) in zip(senders, envs, strict=True)
            ]
            for s, (python, version) in zip(senders, envs, strict=True):
                if s["env"]["python_minor"] != python or s["env"]["pickler_version"] != version:
                    raise SystemExit(f"the image for Python {python} / {pickler} {version} reports {s['env']}")

            def load(env: tuple[str, str], pickler: str = pickler) -> list[dict[str, Any]]:
                python, version = env
                whl = f"/matrix/wheels/{wheel(pickler, version).name}"
                out = _run(client, PYTHONS[python], workdir, "load", pickler, whl, f"/matrix/senders-{pickler}.json")
                return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

            _say(f"{pickler}: {len(envs)} receivers load every sender's pickles ...")
            with ThreadPoolExecutor(jobs) as pool:
                loaded = list(pool.map(load, envs))
            results: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}  # (sender, receiver) -> case -> line
            for receiver, lines in enumerate(loaded):
                for line in lines:
                    results.setdefault((line.pop("sender"), receiver), {})[line.pop("case")] = line
            # What fails even at home (loaded by the environment that made it) is the pickler's limit.
            at_home = [
                {n: c.get("detail", c["outcome"]) for n, c in results.get((i, i), {}).items() if c["outcome"] != "ok"}
                for i in range(len(envs))
            ]
            for env, limits in zip(environments[pickler], at_home, strict=True):
                if limits:
                    env["fails_at_home"] = limits
            for (sender, receiver), cases in sorted(results.items()):
                (s_python, s_version), (r_python, r_version) = envs[sender], envs[receiver]
                pair = {"pickler": pickler, "sent": [s_python, s_version], "loaded": [r_python, r_version]}
                pair.update(_verdict(cases, set(at_home[sender])))
                if pair["outcome"] != "ok":  # an ok pair's cases are all ok: kept short
                    pair["cases"] = {
                        n: c["outcome"] + (f" ({c['stage']})" if c.get("stage") else "")
                        for n, c in sorted(cases.items())
                    }
                    pair["details"] = sorted({c["detail"] for c in cases.values() if c.get("detail")})
                pairs.append(pair)
    client.close()
    return {
        "about": (
            "Measured pickle compatibility: a corpus pickled under each sender environment (Python minor, "
            "pickler release) and loaded and run under each receiver environment, in containers. envpin's "
            "policy (envpin.compat.policy) refuses what breaks here and allows what works."
        ),
        "command": "python -m tools.pickle_matrix",
        "generated": datetime.date.today().isoformat(),
        "corpus_source": "tools/pickle_matrix_probe.py",
        "environments": environments,
        "pairs": pairs,
    }


def dumps(data: dict[str, Any]) -> str:
    """The data file's text: readable JSON, one environment or pair per line (diffs between runs stay readable)."""
    head = {k: v for k, v in data.items() if k not in ("pairs", "environments")}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in sorted(head.items())]
    lines.append(' "environments": {')
    envs = data["environments"]
    for i, (pickler, items) in enumerate(sorted(envs.items())):
        rows = ",\n".join(f"   {json.dumps(e, sort_keys=True)}" for e in items)
        lines.append(f"  {json.dumps(pickler)}: [\n{rows}\n  ]" + ("," if i < len(envs) - 1 else ""))
    lines.append(" },")
    rows = ",\n".join(f"  {json.dumps(p, sort_keys=True)}" for p in data["pairs"])
    lines.append(f' "pairs": [\n{rows}\n ]')
    return "{\n" + "\n".join(lines) + "\n}\n"


def summary(data: dict[str, Any]) -> str:
    """The matrix as text tables, one per pickler: rows send, columns load."""
    out = []
    for pickler, envs in data["environments"].items():
        keys = [(e["python"], e["version"]) for e in envs]
        cell = {(tuple(p["sent"]), tuple(p["loaded"])): p["outcome"] for p in data["pairs"] if p["pickler"] == pickler}
        names = [f"{p}/{v}" for p, v in keys]
        width = max(len(n) for n in names) + 1
        out.append(f"{pickler}: rows pickle, columns load")
        out.append(" " * width + " ".join(n.rjust(width) for n in names))
        for s in keys:
            row = [cell.get((s, r), "-").rjust(width) for r in keys]
            out.append(f"{s[0]}/{s[1]}".ljust(width) + " ".join(row))
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.pickle_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the test suite's subset; printed, not written")
    parser.add_argument("--out", type=Path, help=f"where to write the data (default: {DATA_FILE} for a full run)")
    parser.add_argument("--jobs", type=int, default=4, help="containers at once (default 4)")
    args = parser.parse_args(argv)
    images.ensure_engine()
    if args.quick:
        data = measure(QUICK["pythons"], QUICK["picklers"], args.jobs)  # type: ignore[arg-type]
    else:
        data = measure(tuple(PYTHONS), PICKLERS, args.jobs)
    print(summary(data))
    out = args.out or (None if args.quick else DATA_FILE)
    if out is not None:
        out.write_text(dumps(data))
        _say(f"wrote {out}")


if __name__ == "__main__":
    main()
