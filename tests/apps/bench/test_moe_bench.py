"""The MoE benchmark runs on tiny sizes and writes the shared JSON shape (it measures, never fails)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apps.bench.common import Report, validate_report
from apps.cli import app


def test_report_shape_and_target_bookkeeping(tmp_path: Path) -> None:
    report = Report("demo", "cpu")
    report.add_result("c/tokens=4", "fathom", median_ms=1.0, p95_ms=1.2)
    report.add_target("faster", 0.8, 1.0, "lower")
    report.add_target("throughput", 0.5, 0.6, "higher")
    report.add_target("gpu only", None, 1.0, "lower", reason="no GPU")
    data = json.loads(report.write(tmp_path / "r.json").read_text())
    validate_report(data)
    assert [t["met"] for t in data["targets"]] == [True, False, None]
    with pytest.raises(ValueError, match="better must be"):
        report.add_target("x", 1.0, 1.0, "sideways")
    del data["targets"][2]["reason"]
    with pytest.raises(ValueError, match="no value and no reason"):
        validate_report(data)


def test_bench_moe_quick_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench" / "moe.json"
    result = CliRunner().invoke(
        app, ["bench", "moe", "--quick", "--device", "cpu", "--budget", "0.05", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    validate_report(data)
    assert data["benchmark"] == "moe" and data["environment"]["device"] == "cpu"
    cases = {row["case"] for row in data["results"]}
    assert cases == {f"{name}/tokens={t}" for name in ("mixtral-like", "fine-grained") for t in (4, 32)}
    ours = [r for r in data["results"] if r["impl"] == "fathom"]
    assert len(ours) == 4 and all(r["median_ms"] > 0 for r in ours)
    baselines = [r for r in data["results"] if r["impl"] == "hf-eager"]
    assert len(baselines) == 4
    for row in baselines:
        assert row["ratio"] > 0
        assert row["max_abs_diff"] < 1e-4, "same weights and inputs must give the same outputs"
    cuda_targets = [t for t in data["targets"] if t["name"].startswith("cuda")]
    assert cuda_targets and all(t["value"] is None and "CUDA" in t["reason"] for t in cuda_targets)
    assert any(t["name"].startswith("cpu") and t["value"] is not None for t in data["targets"])


def test_bench_moe_rejects_bad_options() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "moe", "--device", "tpu"])
    assert result.exit_code == 2 and "--device must be cpu or cuda" in result.output
    result = runner.invoke(app, ["bench", "moe", "--tokens", "1,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


def test_bench_moe_on_cuda_without_a_gpu_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = CliRunner().invoke(app, ["bench", "moe", "--device", "cuda", "--quick"])
    assert result.exit_code == 2 and "no CUDA device" in result.output


def test_fathom_info_lists_the_kernel_paths() -> None:
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "triton kernels on cpu" in result.output and "torch" in result.output


def test_bench_table_renders_a_report_and_rejects_other_files(tmp_path: Path) -> None:
    report = Report("moe", "cpu")
    report.add_result("mixtral-like/tokens=16", "fathom", median_ms=6.5, p95_ms=7.0)
    report.add_result(
        "mixtral-like/tokens=16", "hf-eager", median_ms=13.0, p95_ms=14.0, ratio=0.5, max_abs_diff=1e-7
    )
    report.add_result("mixtral-like/tokens=16", "hf-sonicmoe", skipped="needs kernels")
    report.add_target("cpu tokens=16", 0.5, 0.714, "lower")
    path = report.write(tmp_path / "r.json")
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "table", str(path)])
    assert result.exit_code == 0, result.output
    assert "| mixtral-like/tokens=16 | hf-eager | 13.00 | 14.00 | 0.500 | 1.0e-07 |" in result.output
    assert (
        "skipped: needs kernels" in result.output
        and "| cpu tokens=16 | 0.500 | <= 0.714 | yes |" in result.output
    )
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmark": "moe"}')
    result = runner.invoke(app, ["bench", "table", str(bad)])
    assert result.exit_code == 2 and "not a benchmark report" in result.output
    result = runner.invoke(app, ["bench", "table", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_interleaved_timing_rotates_and_times_every_implementation() -> None:
    from apps.bench.common import time_interleaved

    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    timings = time_interleaved(fns, warmup=0, min_rounds=3, max_rounds=3, budget_s=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v.samples_ms) for k, v in timings.items()} == {"a": 3, "b": 3, "c": 3}


def test_flushing_runs_before_every_timed_call_and_is_reported(tmp_path: Path) -> None:
    from apps.bench.common import CacheFlusher, time_interleaved

    events: list[str] = []
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    time_interleaved(
        fns, warmup=0, min_rounds=2, max_rounds=2, budget_s=0, before_each=lambda: events.append("f")
    )
    assert events == ["f", "a", "f", "b", "f", "b", "f", "a"]
    flusher = CacheFlusher(cache_bytes=1 << 20)
    assert flusher.buffer.numel() * 4 == 2 << 20
    flusher()
    out = tmp_path / "moe.json"
    result = CliRunner().invoke(
        app,
        ["bench", "moe", "--quick", "--tokens", "4", "--budget", "0.01", "--flush-cache", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["environment"]["cpu_caches"] == "flushed before each timed call"


def test_throughput_metrics_of_the_cuda_rows_compute_on_any_device() -> None:
    """The CUDA-only columns (TFLOP/s, dense fraction, weight GB/s), exercised on the CPU."""
    import torch

    from apps.bench.moe import QUICK_CASES, moe_flops, throughput_metrics

    case = QUICK_CASES[0]
    offsets = torch.tensor([0, 2, 2, 5, 8, 8, 8, 8, 8])  # 3 of 8 experts active
    m = throughput_metrics(case, 4, 0.5, offsets, "cpu", torch.float32, weight_traffic=True)
    assert m["tflops"] == round(moe_flops(case, 4) / 0.5e-3 / 1e12, 3)
    assert m["dense_matmul_fraction"] > 0
    assert m["expert_weight_gbps"] == round(3 * 3 * case.ffn * case.hidden * 4 / 0.5e-3 / 1e9, 1)
    assert "expert_weight_gbps" not in throughput_metrics(case, 4, 0.5, offsets, "cpu", torch.float32)
