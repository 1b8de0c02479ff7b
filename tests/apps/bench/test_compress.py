"""``fathom bench compress`` on its quick settings writes a valid report."""

from __future__ import annotations

import json

import pytest
import torch

from apps.bench import compress
from apps.bench.common import validate_report

torch.set_num_threads(1)


def test_quick_fraud_bench_writes_the_design_shape(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "compress.json"
    data = compress.run(["fraud"], quick=True, prune_amounts=(0.3,), budget_s=0.05, threads=1, json_path=path)
    validate_report(data)
    assert json.loads(path.read_text())["benchmark"] == "compress"
    score = [r for r in data["results"] if r["case"].startswith("fraud/score")]
    assert [r["impl"] for r in score] == ["fp32", "pruned-30", "int8-dynamic", "onnx", "onnx-int8"]
    for row in score:
        assert row["median_ms"] > 0 and row["size_bytes"] > 0
        assert 0.0 <= row["average_precision"] <= 1.0
    fp32, pruned, int8, onnx, onnx_int8 = score
    assert fp32["ratio"] == 1.0 and fp32["size_ratio"] == 1.0
    assert pruned["details"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert int8["size_bytes"] < fp32["size_bytes"]
    assert onnx["max_abs_diff"] <= 1e-4
    assert onnx["average_precision"] == pytest.approx(fp32["average_precision"], abs=1e-4)
    assert onnx_int8["size_bytes"] < onnx["size_bytes"] and "max_abs_diff" not in onnx_int8
    assert any(r["case"].startswith("fraud/embed day graph") for r in data["results"])
    names = [t["name"] for t in data["targets"]]
    assert any("ONNX" in n for n in names) and any("int8-dynamic average_precision drop" in n for n in names)


def test_intent_without_a_router_is_reported_as_skipped(tmp_path) -> None:
    data = compress.run(["intent"], quick=True, intent_model=tmp_path / "missing")
    validate_report(data)
    assert data["results"][0]["impl"] == "all" and "skipped" in data["results"][0]
    assert data["targets"][0]["value"] is None and data["targets"][0]["reason"]


def test_unknown_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown model"):
        compress.run(["nodule"])
