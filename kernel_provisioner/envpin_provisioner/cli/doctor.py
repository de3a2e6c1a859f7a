"""``envpin doctor``: check the engine, the installed kernelspecs and their images, and say what to fix.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, and a fix where
there is one.  Images are probed the way kernels use them: envpin's
fingerprint module runs inside a short-lived container of each image, and the
result is compared with this Python, because a kernel and its jobs only share
pickles when Python's minor version and cloudpickle's version match.

What an image prints is the image's word: a finding shows it escaped on one
line (``envpin.printable``), so an image cannot add lines, colours or cursor
moves to the report.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from envpin import names, printable
from envpin.compat import fingerprints
from envpin.host import dialect, docker_client
from envpin_provisioner import engine
from envpin_provisioner.cli.kernelspec import PROVISIONER_NAME
from envpin_provisioner.errors import EnvpinError


@dataclass
class Finding:
    level: str  # "ok", "warn", "FAIL"
    subject: str
    text: str

    def __str__(self) -> str:
        # Subjects and texts carry what images said (fingerprints, probe errors): one line each, escaped.
        return f"{self.level:4s}  {printable.one_line(self.subject)}: {printable.one_line(self.text)}"


def envpin_kernelspecs() -> dict[str, dict]:
    """name -> {"display_name", "image", "config", "resource_dir"} for kernelspecs that use the envpin provisioner."""
    from jupyter_client.kernelspec import KernelSpecManager

    out = {}
    for name, info in KernelSpecManager().get_all_specs().items():
        spec = info.get("spec", {})
        prov = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
        if prov.get("provisioner_name") == PROVISIONER_NAME:
            out[name] = {
                "display_name": spec.get("display_name", name),
                "image": (prov.get("config") or {}).get("image"),
                "config": dict(prov.get("config") or {}),
                "resource_dir": info.get("resource_dir"),
            }
    return out


def jupyter_config() -> Any:
    """The ``EnvpinProvisioner`` settings of the Jupyter config files a server or client here would read."""
    import glob

    from jupyter_core.paths import jupyter_config_path
    from traitlets.config import Config
    from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

    config = Config()
    for folder in reversed(jupyter_config_path()):  # the lowest priority first; later files win
        for base in ("jupyter_config", "jupyter_client_config", "jupyter_server_config"):
            for part in sorted(glob.glob(os.path.join(folder, f"{base}.d", "*.json"))):
                config.merge(JSONFileConfigLoader(os.path.basename(part), path=os.path.dirname(part)).load_config())
            for ext, loader in ((".json", JSONFileConfigLoader), (".py", PyFileConfigLoader)):
                if os.path.isfile(os.path.join(folder, base + ext)):
                    config.merge(loader(base + ext, path=folder).load_config())
    return config


def check_settings() -> list[Finding]:
    """Every option value from the Jupyter config files and ``ENVPIN_*`` variables, as a start would read them."""
    from traitlets import TraitError

    from envpin_provisioner.options import check_options
    from envpin_provisioner.provisioner import EnvpinProvisioner

    try:
        config = jupyter_config()
    except Exception as exc:  # noqa: BLE001  (a config file is the user's Python: whatever it raises, say it)
        return [Finding("FAIL", "Jupyter config", f"a config file does not load: {type(exc).__name__}: {exc}")]
    findings = []
    try:
        check_options(EnvpinProvisioner, dict(config.get("EnvpinProvisioner") or {}), None, where="config")
    except EnvpinError as exc:
        findings.append(Finding("FAIL", "Jupyter config (c.EnvpinProvisioner)", f"{exc}"))
    provisioner = EnvpinProvisioner()  # the environment's values (ENVPIN_*), each read as a start reads it
    for name in sorted(EnvpinProvisioner.class_traits(config=True)):
        try:
            getattr(provisioner, name)
        except (TraitError, EnvpinError) as exc:
            findings.append(Finding("FAIL", f"option {name}", f"{exc} (from ENVPIN_{name.upper()})"))
    return findings or [Finding("ok", "settings", "the Jupyter config files' and ENVPIN_* option values are valid")]


def other_engine(spec: dict, default_address: str) -> str | None:
    """The engine kernelspec ``spec`` names (:func:`envpin_kernelspecs`) when it is not ``default_address``."""
    address = spec["config"].get("engine")
    return str(address) if address and docker_client.engine_address(str(address)) != default_address else None


def _connect(address: str | None, subject: str, findings: list[Finding]) -> Any:
    """The client of engine ``address`` (None: the default) with a finding saying so; None when it does not answer."""
    try:
        client = engine.shared(address).client
    except engine.ENGINE_ERRORS as exc:
        findings.append(Finding("FAIL", subject, str(docker_client.explain_engine_failure(exc, address))))
        return None
    except EnvpinError as exc:
        findings.append(Finding("FAIL", subject, str(exc)))
        return None
    findings.append(Finding("ok", subject, dialect.kind(client).describe()))
    return client


def check(only_default_engine: bool = False) -> list[Finding]:
    """Every finding.  Each kernelspec's image is checked on the engine the kernelspec names (its ``engine``
    option, another machine's), else on the default one; ``only_default_engine`` (``--engine URL``, which
    makes URL the default) leaves out the kernelspecs that name another engine."""
    from envpin_provisioner.options import check_options
    from envpin_provisioner.provisioner import EnvpinProvisioner

    findings: list[Finding] = []
    client = _connect(None, "engine", findings)
    default_address = docker_client.engine_address()
    named: dict[str, Any] = {}  #: another engine a kernelspec names -> its client (None: it did not answer)

    findings += check_settings()  # the settings and kernelspecs are checked with or without an engine
    specs = envpin_kernelspecs()
    if not specs:
        findings.append(
            Finding("warn", "kernelspecs", "none uses envpin: envpin kernelspec install --sys-prefix [--image IMAGE]")
        )
    here = fingerprints.local_fingerprint()
    try:
        default_image = EnvpinProvisioner().image  # $ENVPIN_IMAGE, else the built-in default
    except EnvpinError:  # reported by check_settings
        default_image = "ubuntu-22.04-py3"
    for name, spec in sorted(specs.items()):
        image = spec["image"] or default_image
        subject = f"kernelspec {name} ({image})"

        class Spec:
            display_name, resource_dir = spec["display_name"], spec["resource_dir"]

        try:
            check_options(EnvpinProvisioner, spec["config"], Spec(), where="doctor")
        except EnvpinError as exc:  # it cannot start: the image is not worth probing
            findings.append(Finding("FAIL", subject, f"{exc}"))
            continue
        address = other_engine(spec, default_address)
        its_client = client
        if address:
            if only_default_engine:
                continue  # it runs elsewhere: envpin doctor --engine ADDRESS checks it there
            if address not in named:
                named[address] = _connect(address, f"engine {address}", findings)
            its_client = named[address]
            subject += f" on {address}"
        if its_client is None:
            findings.append(Finding("warn", subject, "options valid; the image is not checked (no engine)"))
            continue
        try:
            theirs = fingerprints.image_fingerprint(image, its_client)
        except (EnvpinError, *engine.ENGINE_ERRORS) as exc:  # an image that cannot even be probed
            findings.append(Finding("FAIL", subject, f"{exc}"))
            continue
        if not theirs.get("ipykernel"):
            findings.append(Finding("FAIL", subject, "no ipykernel in the image: pip install ipykernel in the image"))
            continue
        if not theirs.get("cloudpickle"):
            findings.append(
                Finding("warn", subject, "no cloudpickle in the image: jobs cannot run there (pip install cloudpickle)")
            )
        breaking = [d for d in fingerprints.compare(here, theirs) if d.breaks_pickles]
        detail = f"Python {theirs.get('python_version')}, ipykernel {theirs.get('ipykernel')}, cloudpickle {theirs.get('cloudpickle')}"
        clients = [f"{k} {theirs[k]}" for k in ("ytsaurus-client", "ray", "flytekit", "distributed") if theirs.get(k)]
        if clients:
            detail += f"; engine clients: {', '.join(clients)}"
        if breaking:
            findings.append(
                Finding(
                    "warn",
                    subject,
                    f"{detail}; differs from this Python in ways that break pickles ({'; '.join(map(str, breaking))}). "
                    "Fine for notebooks that run in the image; do not exchange pickles between this host and it.",
                )
            )
        else:
            findings.append(Finding("ok", subject, detail))
    findings += _shadowed()
    if client is not None:
        findings.append(_warm_pool(client))
    return findings


def _shadowed() -> list[Finding]:
    """envpin kernelspecs Jupyter never uses: an earlier folder has one of the same name (a venv's copy)."""
    from envpin_provisioner.cli.kernelspec import envpin_specs

    used = {s["name"]: s["path"] for s in envpin_specs() if s["used"]}
    return [
        Finding(
            "warn",
            f"kernelspec {s['name']} in {s['path']}",
            f"not used: Jupyter finds {used.get(s['name'], 'another kernelspec of that name')} first. Remove one "
            "(envpin kernelspec remove NAME removes the one in use), or reinstall with --sys-prefix.",
        )
        for s in envpin_specs()
        if not s["used"]
    ]


def _warm_pool(client) -> Finding:
    """What waiting warm containers (pool_size) cost on this engine right now."""
    from envpin_provisioner.kernel import ownership
    from envpin_provisioner.kernel.launch import WARM_NAME_PREFIX

    warm = [
        c
        for c in ownership.envpin_containers(client, f"{names.LABEL_ROLE}=pool")
        if c.status == "running" and c.name.startswith(WARM_NAME_PREFIX)
    ]
    if not warm:
        return Finding("ok", "warm pool", "no warm containers (pool_size 0, or no kernel started since)")
    total = 0
    for container in warm:
        try:
            total += int(container.stats(stream=False).get("memory_stats", {}).get("usage") or 0)
        except engine.ENGINE_ERRORS:  # it was taken or removed meanwhile
            continue
    return Finding(
        "ok",
        "warm pool",
        f"{len(warm)} warm container(s) waiting (pool_size), using {total / 2**20:.0f} MB of memory in all "
        "(shared pool and standbys; they go with their server, or with envpin gc)",
    )


def main(only_default_engine: bool = False) -> int:
    findings = check(only_default_engine)
    for f in findings:
        print(f)
    failed = sum(f.level == "FAIL" for f in findings)
    print(f"\n{len(findings)} checks, {failed} failed" + ("" if failed else "; envpin is ready"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
