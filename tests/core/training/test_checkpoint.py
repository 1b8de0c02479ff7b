import json

import pytest
import torch

from core.training import WEIGHTS, file_sha256, load_checkpoint, read_card, save_checkpoint


def test_round_trip_with_card(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,category\nhi,greet\n")
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(3)}
    out = save_checkpoint(
        tmp_path / "ckpt",
        tensors,
        name="demo",
        config={"hidden": 4},
        metrics={"accuracy": 0.9},
        data={"data.csv": file_sha256(data)},
        sections={"Limitations": "toy"},
        extra={"labels": ["a", "b"]},
    )
    loaded, card = load_checkpoint(out)
    torch.testing.assert_close(loaded["w"], tensors["w"])
    assert torch.equal(loaded["b"], tensors["b"])
    assert card["name"] == "demo" and card["labels"] == ["a", "b"] and card["metrics"] == {"accuracy": 0.9}
    assert card["data"]["data.csv"] == file_sha256(data) and len(card["data"]["data.csv"]) == 64
    readme = (out / "README.md").read_text()
    assert "## Limitations" in readme and "accuracy: 0.9" in readme and file_sha256(data) in readme
    assert json.loads((out / "model_card.json").read_text()) == read_card(out)


def test_shared_storage_is_saved(tmp_path):
    base = torch.randn(4, 4)
    out = save_checkpoint(tmp_path, {"a": base, "b": base[:2]}, name="x", config={}, metrics={})
    loaded, _ = load_checkpoint(out)
    torch.testing.assert_close(loaded["b"], base[:2])


def test_card_keeps_the_code_version_a_run_started_with(tmp_path):
    from core.training.checkpoint import git_version

    now = save_checkpoint(tmp_path / "now", {"w": torch.ones(1)}, name="x", config={}, metrics={})
    assert read_card(now)["code_version"] == git_version()
    then = save_checkpoint(
        tmp_path / "then", {"w": torch.ones(1)}, name="x", config={}, metrics={}, code_version="abc1234"
    )
    assert read_card(then)["code_version"] == "abc1234"


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model_card.json"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path / "c", {"w": torch.ones(1)}, name="x", config={}, metrics={})
    (tmp_path / "c" / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(ValueError, match="not a tensor"):
        save_checkpoint(tmp_path / "d", {"w": [1, 2]}, name="x", config={}, metrics={})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "e", {"w": torch.ones(1)}, name="x", config={"f": object()}, metrics={})
