"""Environment fingerprints: what must match for a pickle to load where it was made.

``fingerprint()`` describes this process; ``fingerprint(image=...)`` describes
an image, computed by running this same module inside a short-lived container
of it (so both sides are measured by the same code) and cached by image id.
``compare(a, b)`` lists the differences and marks the ones that break
pickles, as the measured matrix says (``envpin.compat.policy``): a different Python
minor does (code objects change shape between minors: 3.10 -> 3.11
``TypeError: code() argument 13 must be str, not int``, 3.11 -> 3.13 loads
and then crashes); a different cloudpickle or dill release breaks where the
matrix measured it breaking, and is marked "not measured" where nobody did.

A different patch release or set of installed distributions is reported but
not marked: it breaks pickles only when a pickled class changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envpin import names
from envpin.compat import policy

FINGERPRINT_VERSION = 5


def version_of(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _distributions() -> list[str]:
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():  # first on sys.path wins, as for imports
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            found.setdefault(name, dist.version)
    return sorted(f"{n}=={v}" for n, v in found.items())


def local_fingerprint() -> dict[str, Any]:
    dists = _distributions()
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "python_minor": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "platform": f"{sys.platform}-{platform.machine()}",
        "cloudpickle": version_of("cloudpickle"),
        "dill": version_of("dill"),
        "ipykernel": version_of("ipykernel"),
        # The engines' clients (envpin's adapters): Ray in particular wants one version on driver and workers.
        "ray": version_of("ray"),
        "ytsaurus-client": version_of("ytsaurus-client"),
        "flytekit": version_of("flytekit"),
        "dask": version_of("dask"),
        "distributed": version_of("distributed"),
        "distributions": len(dists),
        "distributions_digest": hashlib.sha256("\n".join(dists).encode()).hexdigest()[:16],
        "image": os.environ.get(names.IMAGE),
        "image_id": os.environ.get(names.IMAGE_ID),
        "code_in_image": os.environ.get(names.CODE_IN_IMAGE) or None,
    }


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "envpin" / "fingerprints"


def image_fingerprint(name: str, client: Any = None) -> dict[str, Any]:
    """The fingerprint of image ``name`` (an alias, reference or id), cached by image id.

    ``client``: the engine to ask (``envpin doctor``: a kernelspec's own); else this process's default.
    """
    from envpin.host import images

    if client is None:
        client = images.client(
            in_container_fix=f"Compare on the host: envpin.fingerprint(image={name!r}) in a Python there, or envpin "
            f"doctor for every kernelspec's image; to run this notebook in that image instead: %use_image {name}."
        )
    image = images.resolve(client, name, source="envpin.fingerprint(image=...)")
    cache = _cache_dir() / (image.id.replace(":", "_") + ".json")
    try:
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint_version") == FINGERPRINT_VERSION:
            return cached
    except (OSError, ValueError):
        pass
    out = images.run_python(client, image, "import envpin.compat.fingerprints as f; f._print()", with_envpin=True)
    result = _parse_probe(out, name)
    result.update(image=name, image_id=image.immutable)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    except OSError:
        pass  # a read-only home only costs a container run next time
    return result


def _parse_probe(out: str, name: str) -> dict[str, Any]:
    """The fingerprint an image's probe printed (its last line, a JSON object); EnvpinError for anything else.

    What the image's ``python3`` prints is the image's word: it may be
    anything, and is checked for shape here (its values stay untrusted text).
    """
    from envpin.errors import EnvpinError

    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise EnvpinError(
            f"Image '{name}' printed no environment fingerprint when envpin probed it with python3 "
            "(the output was not envpin's). Check that python3 in the image is a real Python interpreter."
        )
    return result


def fingerprint(image: str | None = None) -> dict[str, Any]:
    """This process's environment fingerprint, or image ``image``'s (see the module doc)."""
    return image_fingerprint(image) if image else local_fingerprint()


@dataclass(frozen=True)
class Difference:
    key: str
    here: Any
    there: Any
    breaks_pickles: bool
    #: what the measured matrix says about this difference (``envpin.compat.policy``), for pickle-relevant keys
    evidence: str = ""
    #: a pickle-relevant difference nobody measured (compatible mode warns and proceeds; strict refuses)
    unmeasured: bool = False

    def __str__(self) -> str:
        mark = "  <- breaks pickles" if self.breaks_pickles else "  <- not measured" if self.unmeasured else ""
        why = f" ({self.evidence})" if self.evidence else ""
        return f"{self.key}: {self.here} vs {self.there}{mark}{why}"


#: Keys compared, in the order shown.  Python and the picklers are judged by the measured matrix.
_COMPARED = (
    "python_implementation",
    "python_minor",
    "cloudpickle",
    "dill",
    "python_version",
    "ray",  # breaks Ray jobs (driver and workers must match), not pickles in general
    "ytsaurus-client",
    "flytekit",
    "dask",
    "distributed",
    "platform",
    "distributions_digest",
)
#: The keys whose difference the pickle matrix speaks about, and the pickler each concerns.
_PICKLE_KEYS = {
    "python_implementation": "cloudpickle",
    "python_minor": "cloudpickle",
    "cloudpickle": "cloudpickle",
    "dill": "dill",
}


#: Compared only where both sides have them: a client the image lacks is not a difference between Pythons.
_ENGINE_CLIENTS = {"ray", "ytsaurus-client", "flytekit", "dask", "distributed"}


def pickle_verdicts(a: dict[str, Any], b: dict[str, Any], pickler: str = "cloudpickle") -> list[policy.Verdict]:
    """The matrix's verdicts on pickles travelling a -> b (jobs) and b -> a (results), with ``pickler``."""
    sa, sb = policy.Side.of_fingerprint(a, pickler), policy.Side.of_fingerprint(b, pickler)
    return [policy.judge(sa, sb), policy.judge(sb, sa)]


def _judged(verdicts: list[policy.Verdict]) -> tuple[bool, bool, str]:
    """(breaks, unmeasured, evidence) of a difference from its two directions' verdicts."""
    broken = [v for v in verdicts if v.broken]
    if broken:
        return True, False, broken[0].evidence
    unmeasured = [v for v in verdicts if v.status == "unmeasured"]
    if unmeasured:
        return False, True, unmeasured[0].evidence
    ok = [v for v in verdicts if v.status == "measured-ok"]
    return False, False, ok[0].evidence if ok else ""


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    """Differences between fingerprints ``a`` and ``b``, pickle-breaking ones first.

    Whether a difference of Python or pickler breaks pickles is what the
    measured matrix says (``envpin.compat.policy``), in either direction.
    """
    judged = {"cloudpickle": _judged(pickle_verdicts(a, b, "cloudpickle"))}
    if a.get("dill") and b.get("dill"):
        judged["dill"] = _judged(pickle_verdicts(a, b, "dill"))
    diffs = []
    for k in _COMPARED:
        if a.get(k) == b.get(k) or (k in _ENGINE_CLIENTS and (a.get(k) is None or b.get(k) is None)):
            continue
        pickler = _PICKLE_KEYS.get(k)
        if pickler is not None and pickler in judged:
            breaks, unmeasured, evidence = judged[pickler]
            diffs.append(Difference(k, a.get(k), b.get(k), breaks, evidence, unmeasured))
        else:
            diffs.append(Difference(k, a.get(k), b.get(k), False))
    if any(d.key == "python_minor" for d in diffs):
        diffs = [d for d in diffs if d.key != "python_version"]  # already said
    if any(d.key == "python_minor" for d in diffs) and any(d.key == "cloudpickle" for d in diffs):
        # One verdict covers both: say its evidence once.
        diffs = [dataclasses.replace(d, evidence="") if d.key == "cloudpickle" else d for d in diffs]
    return sorted(diffs, key=lambda d: not d.breaks_pickles)


def _print() -> None:
    print(json.dumps(local_fingerprint()))


if __name__ == "__main__":
    _print()
