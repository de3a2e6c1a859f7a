"""envpin.session.aliases: short names for images, from the file ``ENVPIN_ALIASES`` names."""

from __future__ import annotations

import json

import pytest

from envpin.errors import EnvpinError
from envpin.session import aliases


def test_aliases_expand_and_unknown_names_stay(tmp_path, monkeypatch):
    path = tmp_path / "aliases.json"
    path.write_text(json.dumps({"py311": "registry.example.com/ml/python:3.11"}))
    monkeypatch.setenv("ENVPIN_ALIASES", str(path))
    assert aliases.expand("py311") == "registry.example.com/ml/python:3.11"
    assert aliases.expand("python:3.13") == "python:3.13"


def test_a_broken_aliases_file_names_itself_and_the_format(tmp_path, monkeypatch):
    path = tmp_path / "aliases.json"
    path.write_text("{not json")
    monkeypatch.setenv("ENVPIN_ALIASES", str(path))
    with pytest.raises(EnvpinError, match=f"{path} cannot be read.*JSON object like"):
        aliases.expand("py311")
