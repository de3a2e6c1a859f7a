"""Unit tier: `envpin doctor` fails what cannot start, before any engine is asked (issue 30: it said "ok" to a
kernelspec with `netwrok_mode`, and to `mem_limit=lots` / `shm_size=huge`, which then failed at the start)."""

from __future__ import annotations

import json
from pathlib import Path


def test_doctor_fails_unknown_options_and_impossible_values_wherever_they_are_written(jupyter_env, monkeypatch):
    from envpin_provisioner.cli import doctor, kernelspec

    kernelspec.install("envpin-test/py311:latest", name="typo", user=True, config={"netwrok_mode": "none"})
    kernelspec.install("envpin-test/py311:latest", name="lots", user=True, config={"mem_limit": "lots"})
    kernelspec.install("envpin-test/py311:latest", name="fine", user=True, config={"mem_limit": "4g"})
    (Path(jupyter_env["config"]) / "jupyter_server_config.py").write_text('c.EnvpinProvisioner.shm_size = "huge"\n')
    monkeypatch.setenv("ENVPIN_POOL_SIZE", "many")

    findings = {f.subject: f for f in doctor.check()}
    assert findings["engine"].level == "FAIL"  # no engine here: the rest is checked all the same
    typo = findings["kernelspec typo (envpin-test/py311:latest)"]
    assert typo.level == "FAIL" and "unknown option 'netwrok_mode' (did you mean 'network_mode'?)" in typo.text
    assert "Fix: rename 'netwrok_mode' to 'network_mode' in" in typo.text and "typo/kernel.json" in typo.text
    lots = findings["kernelspec lots (envpin-test/py311:latest)"]
    assert lots.level == "FAIL" and "option 'mem_limit' has the wrong type or value 'lots'" in lots.text
    assert findings["kernelspec fine (envpin-test/py311:latest)"].level == "warn"  # valid; image unchecked
    settings = " ".join(f.text for f in findings.values() if f.subject.startswith(("option ", "Jupyter config")))
    assert "shm_size" in settings and "'huge'" in settings, findings
    assert "ENVPIN_POOL_SIZE" in settings, findings
    assert doctor.main() == 1


def test_doctor_passes_valid_settings(jupyter_env):
    from envpin_provisioner.cli import doctor

    (Path(jupyter_env["config"]) / "jupyter_server_config.json").write_text(
        json.dumps({"EnvpinProvisioner": {"mem_limit": "8g", "network_mode": "none"}})
    )
    (finding,) = doctor.check_settings()
    assert finding.level == "ok", finding
