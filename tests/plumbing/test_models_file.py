"""The model catalog file every role reads at start: YAML or JSON, and a wrong one stops the
role with a message that says where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth.plumbing.models_file import read_models_file
from berth.protocol.catalog import CatalogAdapter, CatalogModel


def test_the_file_may_be_yaml_or_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "models.yaml"
    yaml_file.write_text("models:\n  - name: tiny\n    adapters: [a1]\n")
    json_file = tmp_path / "models.json"
    json_file.write_text(json.dumps({"models": [{"name": "tiny", "adapters": ["a1"]}]}))
    expected = [CatalogModel(name="tiny", adapters=(CatalogAdapter(name="a1"),))]
    assert read_models_file(str(yaml_file)) == expected
    assert read_models_file(str(json_file)) == expected
    assert read_models_file(None) == []


def test_an_unreadable_file_stops_the_role_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="BERTH_MODELS_FILE .*missing.yaml"):
        read_models_file(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(SystemExit, match="not YAML or JSON"):
        read_models_file(str(broken))
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("models:\n  - name: ''\n")
    with pytest.raises(SystemExit, match=r"models\[0\]\.name"):
        read_models_file(str(wrong))
