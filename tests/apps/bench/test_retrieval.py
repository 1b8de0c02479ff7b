"""The retrieval benchmark on tiny sizes: data, recall arithmetic, JSON shape and CLI (it never fails)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from apps.bench.common import validate_report
from apps.bench.retrieval import RetrievalBenchConfig, recall_at_k, run, set_search_breadth
from apps.bench.retrieval_data import GaussianMixture, corpus, filler_passages
from apps.cli import app
from core.retrieval.documents import DocumentRecord
from core.retrieval.index import VectorIndex
from tests.apps.customer_service.test_evaluation import write_banking77, write_kb

CHUNKS = [
    DocumentRecord(
        f"c#{i}",
        "Card payments abroad cost 2% of the amount. Withdrawals up to £200 a month are free. "
        f"Transfers arrive in 3-5 working days. Open the app and tap Cards number {i}.",
        {
            "title": f"Fees {i}",
            "section": "Fees",
            "source": f"/kb/fees-{i}.md",
            "intents": ["card_payment_fee"],
        },
    )
    for i in range(3)
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))


def tiny_config(tmp_path: Path, **overrides) -> RetrievalBenchConfig:
    """Quick sizes over a four-article knowledge base and a ten-question BANKING77 file, no router."""
    settings = {
        "kb_dir": write_kb(tmp_path / "kb"),
        "banking77": write_banking77(tmp_path / "b77.csv"),
        "router_dir": tmp_path / "no-router",
        "ask_sizes": (12,),
        "ask_questions": 3,
        "warmup_questions": 1,
        "qa_sample": 8,
    }
    return RetrievalBenchConfig.quick(**{**settings, **overrides})


def test_recall_at_k_arithmetic() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert recall_at_k(truth, truth) == 1.0
    with pytest.raises(ValueError, match="queries"):
        recall_at_k(found[:1], truth)


def test_gaussian_mixture_is_seeded_and_unit_norm() -> None:
    mixture = GaussianMixture.for_size(1_000, 16, seed=5)
    assert mixture.clusters == 10
    a, b = mixture.sample(300, seed=1), mixture.sample(300, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (300, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a, mixture.sample(300, seed=2))
    # points lie near their centres: each is closer to some centre than a random unit vector would be
    assert float((a @ mixture.centres.T).max(axis=1).min()) > 0.5
    with pytest.raises(ValueError, match="noise"):
        GaussianMixture(8, 2, noise=-1)


def test_filler_recombines_the_chunks_deterministically() -> None:
    filler = filler_passages(50, CHUNKS, seed=1)
    assert [r.id for r in filler[:2]] == ["filler-000000", "filler-000001"]
    assert [r.text for r in filler] == [r.text for r in filler_passages(50, CHUNKS, seed=1)]
    assert len({r.text for r in filler}) > 40
    assert all(r.metadata["intents"] == [] and r.metadata["synthetic"] for r in filler)
    assert all(r.text.startswith("For ") and "customers in" in r.text for r in filler)
    full = corpus(10, CHUNKS)
    assert len(full) == 10 and full[:3] == CHUNKS
    with pytest.raises(ValueError, match="cannot hold the 3"):
        corpus(2, CHUNKS)


def test_search_breadth_is_applied_to_a_built_index() -> None:
    data = GaussianMixture.for_size(2_000, 16).sample(2_000, seed=0)
    hnsw = VectorIndex(16, "hnsw", use_gpu=False)
    hnsw.add(data, np.arange(2_000))
    set_search_breadth(hnsw, 7)
    assert hnsw.params["ef_search"] == 7
    flat = VectorIndex(16, "flat", use_gpu=False)
    flat.add(data[:10], np.arange(10))
    with pytest.raises(ValueError, match="no search breadth"):
        set_search_breadth(flat, 7)


def test_ann_section_reports_exact_recall_of_one_and_the_target() -> None:
    data = run(RetrievalBenchConfig.quick(sections=("ann",))).to_dict()
    validate_report(data)
    rows = [r for r in data["results"] if r["case"] == "ann/n=2000/d=32/batch=50"]
    by_impl = {r["impl"]: r for r in rows}
    assert set(by_impl) == {"faiss-flat (exact)", "fathom-hnsw", "fathom-ivfpq"}
    assert by_impl["faiss-flat (exact)"]["recall_at_10"] == 1.0
    assert set(by_impl["fathom-hnsw"]["params"]) == {"hnsw_m", "ef_construction", "ef_search"}
    assert set(by_impl["fathom-ivfpq"]["params"]) == {"nlist", "m", "nbits", "nprobe"}
    sweeps = [r for r in data["results"] if r["case"].endswith("/sweep")]
    assert len(sweeps) > 6
    for row in rows + sweeps:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and row["queries_per_s"] > 0
    recall, speedup = data["targets"]
    assert recall["target"] == 0.95 and speedup["target"] == 10.0
    assert 0.0 <= recall["value"] <= 1.0 and speedup["value"] > 0 and recall["met"] in (True, False)


def test_quality_and_ask_sections_on_tiny_data(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community", reason="the LangChain baseline needs the bench extra")
    data = run(tiny_config(tmp_path, sections=("quality", "ask"))).to_dict()
    validate_report(data)
    quality = {r["impl"]: r for r in data["results"] if r["case"].startswith("qa/")}
    assert {"langchain-faiss", "fathom-hybrid"} <= set(quality)
    for row in quality.values():
        assert 0.0 <= row["recall_at_1"] <= row["recall_at_5"] <= row["recall_at_10"] <= 1.0
        assert 0.0 <= row["mrr"] <= 1.0 and row["n"] == quality["fathom-hybrid"]["n"] > 0
    gain = quality["fathom-hybrid"]["recall_at_5_gain_points"]
    assert gain == pytest.approx(
        100 * (quality["fathom-hybrid"]["recall_at_5"] - quality["langchain-faiss"]["recall_at_5"])
    )
    ask = [r for r in data["results"] if r["case"] == "ask/chunks=12"]
    assert {r["impl"] for r in ask} == {"fathom-retrieve+answer", "langchain-faiss+answer"}
    assert all(r["questions"] == 3 and 0 < r["median_ms"] <= r["p95_ms"] for r in ask)
    stages = {r["impl"] for r in data["results"] if r["case"] == "ask/chunks=12/profile"}
    assert {
        "stage: query embedding (model)",
        "stage: BM25 search (top 20)",
        "stage: FAISS search (top 20)",
    } <= stages
    targets = {t["name"]: t for t in data["targets"]}
    hybrid = targets["QA recall@5: fathom hybrid - LangChain FAISS (points)"]
    assert hybrid["value"] == pytest.approx(gain) and hybrid["met"] == (gain >= 5.0)
    for name, why in (
        (
            "QA recall@5: fathom hybrid + intent ordering - LangChain FAISS (points)",
            "no trained intent router",
        ),
        ("QA recall@5: fathom hybrid + reranker - LangChain FAISS (points)", "no local cross-encoder"),
        ("ask p95 at 12 chunks (ms, extractive answers, no LLM)", "no trained intent router"),
    ):
        assert (
            targets[name]["value"] is None and targets[name]["met"] is None and why in targets[name]["reason"]
        )
    assert "held out from intent-router training" in data["environment"]["qa_questions"]


def test_missing_banking77_is_reported_not_raised(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community", reason="the LangChain baseline needs the bench extra")
    cfg = tiny_config(tmp_path, sections=("quality", "ask"), banking77=tmp_path / "absent.csv")
    data = run(cfg).to_dict()
    validate_report(data)
    assert len(data["targets"]) == 4
    assert all(t["value"] is None and "absent.csv" in t["reason"] for t in data["targets"])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown benchmark section"):
        RetrievalBenchConfig(sections=("ann", "speed"))
    with pytest.raises(ValueError, match="ann_sizes must be >= 1000"):
        RetrievalBenchConfig(ann_sizes=(500,))


def test_missing_langchain_community_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "langchain_community" else real(name, *a),
    )
    data = run(tiny_config(tmp_path, sections=("quality", "ask"))).to_dict()
    validate_report(data)
    assert data["results"] == [] and len(data["targets"]) == 4
    assert all(t["value"] is None and "langchain-community" in t["reason"] for t in data["targets"])


def test_bench_retrieval_cli_writes_json(tmp_path: Path) -> None:
    pytest.importorskip("langchain_community", reason="the LangChain baseline needs the bench extra")
    out = tmp_path / "bench" / "retrieval.json"
    args = ["bench", "retrieval", "--quick", "--sections", "ann,quality", "--json", str(out)]
    args += ["--kb", str(write_kb(tmp_path / "kb")), "--banking77", str(write_banking77(tmp_path / "b.csv"))]
    result = CliRunner().invoke(app, [*args, "--router", str(tmp_path / "no-router")])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    validate_report(data)
    assert data["benchmark"] == "retrieval" and data["environment"]["device"] == "cpu"
    assert {r["case"].split("/")[0] for r in data["results"]} == {"ann", "qa"}
    assert "targets" in result.stdout


def test_bench_retrieval_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "retrieval", "--quick", "--reranker", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "is not a folder" in result.stderr
    result = runner.invoke(app, ["bench", "retrieval", "--quick", "--sections", "ann,speed"])
    assert result.exit_code == 2 and "unknown benchmark section" in result.stderr


@pytest.mark.slow
def test_intent_ordering_and_ask_with_the_trained_router(tmp_path: Path) -> None:
    from core.config import models_dir

    pytest.importorskip("langchain_community", reason="the LangChain baseline needs the bench extra")
    if not (models_dir("intent-router") / "model.safetensors").is_file():
        pytest.skip(f"needs the trained intent router in {models_dir('intent-router')}")
    cfg = tiny_config(tmp_path, sections=("quality", "ask"), router_dir=None)
    data = run(cfg).to_dict()
    validate_report(data)
    quality = {r["impl"]: r for r in data["results"] if r["case"].startswith("qa/")}
    assert 0.0 <= quality["fathom-hybrid+intent"]["recall_at_5"] <= 1.0
    ask = {r["impl"]: r for r in data["results"] if r["case"] == "ask/chunks=12"}
    assert set(ask) == {"fathom-ask", "fathom-retrieve+answer", "langchain-faiss+answer"}
    assert ask["langchain-faiss+answer"]["ratio"] == pytest.approx(
        ask["fathom-ask"]["median_ms"] / ask["langchain-faiss+answer"]["median_ms"], rel=1e-3
    )
    stages = {r["impl"] for r in data["results"] if r["case"] == "ask/chunks=12/profile"}
    assert {"stage: intent router", "stage: session load + save (SQLite)"} <= stages
    targets = {t["name"]: t for t in data["targets"]}
    assert (
        targets["ask p95 at 12 chunks (ms, extractive answers, no LLM)"]["value"]
        == ask["fathom-ask"]["p95_ms"]
    )
