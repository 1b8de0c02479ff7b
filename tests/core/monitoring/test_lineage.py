"""Lineage of model folders: the real models/ folder, a fresh checkpoint, a broken card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.config import models_dir
from core.monitoring import lineage_table, list_lineage, read_lineage
from core.training import file_sha256, save_checkpoint

SHIPPED = models_dir()


@pytest.mark.skipif(not (SHIPPED / "fraud-detector").is_dir(), reason=f"no shipped models in {SHIPPED}")
def test_every_shipped_model_folder_with_a_card_is_listed() -> None:
    models = list_lineage(SHIPPED)
    expected = sorted(p.name for p in SHIPPED.iterdir() if (p / "model_card.json").is_file())
    assert [m.folder.name for m in models] == expected  # nodule-detector too, once it is there
    by_folder = {m.folder.name: m for m in models}
    fraud = by_folder["fraud-detector"]
    card = json.loads((SHIPPED / "fraud-detector" / "model_card.json").read_text())
    assert fraud.error is None and fraud.name == card["name"] == "fathom-fraud-detector"
    assert fraud.code_version == card["code_version"] and fraud.created == card["created"]
    assert fraud.data == card["data"] and all(len(h) == 64 for h in fraud.data.values())
    assert fraud.weights_sha256 == file_sha256(SHIPPED / "fraud-detector" / "model.safetensors")
    assert fraud.key_metrics["val.average_precision"] == card["metrics"]["val"]["average_precision"]
    assert not any(k.startswith("baselines") for k in fraud.key_metrics)  # three levels deep
    assert "model.hidden=" in fraud.config_summary
    assert fraud.readme_excerpt and not fraud.readme_excerpt.startswith("#")
    if "intent-router" in by_folder:
        router = by_folder["intent-router"]
        assert "val_accuracy" in router.key_metrics and "val_n" not in router.key_metrics
    table = lineage_table(models)
    assert list(table["folder"]) == expected
    assert {"name", "created", "code_version", "data", "key_metrics", "config"} <= set(table.columns)
    json.dumps([m.to_dict() for m in models])  # JSON-ready


def test_a_fresh_checkpoint_and_a_broken_card(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    save_checkpoint(
        tmp_path / "models" / "tiny",
        {"w": torch.ones(2)},
        name="tiny-model",
        config={"model": {"hidden": 4}, "lr": 0.1},
        metrics={"accuracy": 0.5, "n_val": 10, "flag": True},
        data={"train.csv": file_sha256(data)},
        summary="A tiny model.",
    )
    broken = tmp_path / "models" / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text("{not json")
    (tmp_path / "models" / "no-card").mkdir()
    models = list_lineage(tmp_path / "models")
    assert [m.folder.name for m in models] == ["broken", "tiny"]
    broken_model, tiny = models
    assert broken_model.error and "not valid JSON" in broken_model.error and broken_model.name == "broken"
    assert tiny.error is None and tiny.name == "tiny-model" and tiny.summary == "A tiny model."
    assert tiny.data == {"train.csv": file_sha256(data)}
    assert tiny.key_metrics == {"accuracy": 0.5}  # counts and booleans left out
    assert tiny.config_summary == "model.hidden=4, lr=0.1"
    assert tiny.weights_bytes > 0 and len(tiny.weights_sha256) == 64
    assert lineage_table(models)["error"].tolist()[1] == ""
    assert list_lineage(tmp_path / "absent") == []
    with pytest.raises(FileNotFoundError):
        read_lineage(tmp_path / "models" / "no-card")
