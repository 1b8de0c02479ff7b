import csv

import pytest
import torch

from apps.customer_service.intents import (
    IntentModelConfig,
    IntentRouter,
    classification_metrics,
    read_intent_csv,
    stratified_split,
    train_intent_router,
)
from core.training import TrainConfig, file_sha256, load_checkpoint

INTENTS = {
    "card_arrival": ["where is my new card", "my card has not arrived yet", "card still not delivered"],
    "exchange_rate": ["what exchange rate do you use", "rate for euros to pounds", "how is the fx rate set"],
    "top_up_failed": ["my top up failed", "top-up was declined", "could not add money to my account"],
}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer, saved offline like any local encoder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from core.retrieval.embeddings import default_model_path

    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for _ in range(6):
            for label, texts in INTENTS.items():
                for text in texts:
                    w.writerow([text, label])
    return path


def _config(encoder) -> IntentModelConfig:
    return IntentModelConfig(
        encoder=str(encoder), max_length=16, num_experts=4, top_k=2, intermediate_size=16
    )


@pytest.fixture(scope="module")
def trained(tiny_encoder, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("router")
    card = train_intent_router(
        tiny_csv,
        out,
        model_config=_config(tiny_encoder),
        train_config=TrainConfig(epochs=12, lr=3e-3, patience=0, warmup_ratio=0.0),
    )
    return out, card


def test_training_learns_and_card_records_it(trained, tiny_csv):
    out, card = trained
    assert card["labels"] == sorted(INTENTS)
    assert card["metrics"]["val_accuracy"] >= 0.8  # chance is 1/3
    assert card["data"] == {"train.csv": file_sha256(tiny_csv)}
    assert card["base_encoder"].startswith("tiny-encoder")
    assert len(card["history"]) == 12 and "## Intended use" in (out / "README.md").read_text()


def test_checkpoint_holds_only_trained_tensors_in_fp16(trained):
    tensors, _ = load_checkpoint(trained[0])
    assert not any("word_embeddings" in k for k in tensors)
    assert any(k.startswith("moe.") for k in tensors) and any(
        k.startswith("encoder.encoder.layer") for k in tensors
    )
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())


def test_loaded_router_predicts_and_evaluates(trained):
    router = IntentRouter.load(trained[0])
    preds = router.predict(["where is my new card", "my top up failed"], top=3)
    assert [p.label for p in preds] == ["card_arrival", "top_up_failed"]
    assert all(0.0 < p.confidence <= 1.0 and len(p.top) == 3 for p in preds)
    assert preds[0].top[0] == (preds[0].label, preds[0].confidence)
    probs = router.probabilities(["a", "much longer message about my card", "b"])
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    texts = [t for ts in INTENTS.values() for t in ts]
    labels = [label for label, ts in INTENTS.items() for _ in ts]
    metrics = router.evaluate(texts, labels)
    assert metrics["n"] == 9 and metrics["accuracy"] >= 0.8 and 0.0 < metrics["macro_f1"] <= 1.0


def test_router_rejects_bad_input(trained):
    router = IntentRouter.load(trained[0])
    with pytest.raises(ValueError, match="unknown to the router: nope"):
        router.evaluate(["hello"], ["nope"])
    with pytest.raises(ValueError, match="text 1 is empty"):
        router.predict(["ok", "  "])
    with pytest.raises(TypeError, match="list of texts"):
        router.predict("one string")


def test_load_refuses_other_base_encoder(trained, tmp_path):
    import json
    import shutil

    copy = tmp_path / "router"
    shutil.copytree(trained[0], copy)
    card = json.loads((copy / "model_card.json").read_text())
    card["base_encoder"] = "other@0000"
    (copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="trained on base encoder 'other@0000'"):
        IntentRouter.load(copy)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IntentRouter.load(tmp_path / "missing")


def test_metrics_and_split():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert m["accuracy"] == 0.75 and m["n"] == 4
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
    labels = ["x"] * 50 + ["y"] * 30 + ["z"]
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(81)) and not set(train) & set(val)
    assert sum(labels[i] == "x" for i in val) == 10 and sum(labels[i] == "y" for i in val) == 6
    assert 80 in train  # a single-row label stays in training


def test_read_intent_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,label\nhi,greet\n")
    with pytest.raises(ValueError, match="missing column"):
        read_intent_csv(bad)
    bad.write_text("text,category\nhi,greet\n,greet\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: empty text"):
        read_intent_csv(bad)
    with pytest.raises(FileNotFoundError):
        read_intent_csv(tmp_path / "none.csv")


@pytest.mark.realdata
def test_shipped_router_on_banking77_sample():
    """The shipped weights on 400 BANKING77 training rows (seen in training: a floor, not the metric)."""
    from pathlib import Path

    from apps.customer_service.intents import default_router_dir

    data = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "banking77" / "train.csv"
    if not data.is_file() or not (default_router_dir() / "model.safetensors").is_file():
        pytest.skip("needs ../shared/data/banking77/train.csv and models/intent-router")
    texts, labels = read_intent_csv(data)
    metrics = IntentRouter.load().evaluate(texts[::25], labels[::25])
    assert metrics["accuracy"] > 0.9


def test_train_intents_cli(tiny_encoder, tiny_csv, tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from apps.cli import app

    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "intent_model": {**_config(tiny_encoder).to_dict()},
                "train": {"epochs": 2, "lr": 3e-3, "patience": 0},
                "intent_train": {"batch_size": 8},
            }
        )
    )
    out = tmp_path / "router"
    runner = CliRunner()
    args = ["cs", "train-intents", "--data", str(tiny_csv), "--out", str(out), "--config", str(config)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["metrics"]["epochs_run"] == 2 and "epoch 1:" in result.stderr
    result = runner.invoke(app, ["cs", "intents", "--csv", str(tiny_csv), "--model", str(out), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["n"] == 54
    result = runner.invoke(app, [*args[:-2], "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml" in result.stderr
