from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.retrieval.index import FLAT_MAX, HNSW_MAX, MIN_IVFPQ_TRAIN, VectorIndex, choose_kind, ivfpq_params

IVFPQ_RECALL_AT_10 = 0.5  # measured ~0.63 on this data (m=96, nbits=5, nprobe=nlist/4)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int = 384, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim)))


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def test_choose_kind_thresholds() -> None:
    assert choose_kind(0) == choose_kind(FLAT_MAX - 1) == "flat"
    assert choose_kind(FLAT_MAX) == choose_kind(HNSW_MAX - 1) == "hnsw"
    assert choose_kind(HNSW_MAX) == "ivfpq"
    assert VectorIndex(8, "auto", expected_size=FLAT_MAX).kind == "hnsw"
    with pytest.raises(ValueError, match=">= 0"):
        choose_kind(-1)


def test_auto_resolves_on_first_add() -> None:
    index = VectorIndex(8)
    index.add(unit(np.random.default_rng(0).normal(size=(5, 8))), np.arange(5))
    assert index.kind == "flat"


@pytest.mark.parametrize(("n", "dim"), [(1000, 384), (2000, 384), (20_000, 768), (5000, 100)])
def test_ivfpq_params(n: int, dim: int) -> None:
    p = ivfpq_params(n, dim)
    assert dim % p["m"] == 0 and dim // p["m"] >= 4
    assert 1 <= p["nlist"] <= n // 39
    assert 4 <= p["nbits"] <= 8


def test_flat_is_exact() -> None:
    rng = np.random.default_rng(1)
    x, q = unit(rng.normal(size=(300, 32))), unit(rng.normal(size=(7, 32)))
    index = VectorIndex(32, "flat")
    index.add(x, np.arange(1000, 1300))
    scores, ids = index.search(q, 5)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :5] + 1000
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, truth - 1000, axis=1), atol=1e-5)
    assert index.search(q[0], 500)[1].shape == (1, 300)  # k clipped to the corpus size


def test_hnsw_and_ivfpq_recall() -> None:
    x = clustered(2000)
    q = unit(x[:100] + 0.1 * np.random.default_rng(2).normal(size=(100, 384)))
    flat = VectorIndex(384, "flat")
    flat.add(x, np.arange(2000))
    truth = flat.search(q, 10)[1]
    hnsw = VectorIndex(384, "hnsw")
    hnsw.add(x, np.arange(2000))
    assert recall_at(hnsw.search(q, 10)[1], truth) > 0.9
    ivfpq = VectorIndex(384, "ivfpq")
    ivfpq.add(x, np.arange(2000))
    assert ivfpq.params["nlist"] == ivfpq_params(2000, 384)["nlist"]
    assert recall_at(ivfpq.search(q, 10)[1], truth) > IVFPQ_RECALL_AT_10


def test_ivfpq_refuses_too_few_vectors() -> None:
    index = VectorIndex(16, "ivfpq")
    with pytest.raises(ValueError, match=f"at least {MIN_IVFPQ_TRAIN} vectors to train, got 50"):
        index.add(unit(np.random.default_rng(0).normal(size=(50, 16))), np.arange(50))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    x = clustered(1200, dim=64, seed=3)
    index = VectorIndex(64, kind, model_id="m@1")
    index.add(x, np.arange(1200) * 2)
    before = index.search(x[:9], 10)
    index.save(tmp_path)
    manifest = json.loads((tmp_path / "index.json").read_text())
    assert manifest["embedding_model_id"] == "m@1" and manifest["dimension"] == 64
    assert manifest["index_kind"] == kind and manifest["document_count"] == 1200
    assert {"created", "faiss_version"} <= set(manifest)
    loaded = VectorIndex.load(tmp_path, embedder_model_id="m@1", dimension=64)
    after = loaded.search(x[:9], 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)


def test_load_refuses_other_model(tmp_path: Path) -> None:
    index = VectorIndex(8, "flat", model_id="minilm@aaaa")
    index.add(unit(np.ones((2, 8))), [0, 1])
    index.save(tmp_path)
    with pytest.raises(ValueError, match=r"'minilm@aaaa'.*'mpnet@bbbb'"):
        VectorIndex.load(tmp_path, embedder_model_id="mpnet@bbbb")
    with pytest.raises(ValueError, match=r"8-d .* 384-d"):
        VectorIndex.load(tmp_path, embedder_model_id="minilm@aaaa", dimension=384)
    with pytest.raises(FileNotFoundError, match="no index manifest"):
        VectorIndex.load(tmp_path / "absent")


def test_empty_index_search() -> None:
    scores, ids = VectorIndex(4, "flat").search(np.ones((2, 4)), 3)
    assert scores.shape == ids.shape == (2, 0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        VectorIndex(8, "lsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        VectorIndex(0)
    index = VectorIndex(4, "flat")
    with pytest.raises(ValueError, match=r"shape \(N, 4\), got \(2, 3\)"):
        index.add(np.ones((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 4), np.nan), [0])
    with pytest.raises(ValueError, match="one id per vector"):
        index.add(np.ones((2, 4)), [0])
    with pytest.raises(ValueError, match="repeat"):
        index.add(np.ones((2, 4)), [5, 5])
    with pytest.raises(ValueError, match="must be integers"):
        index.add(np.ones((1, 4)), [0.5])
    index.add(np.ones((1, 4)), [7])
    with pytest.raises(ValueError, match=r"already in the index: \[7\]"):
        index.add(np.ones((1, 4)), [7])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.ones((1, 4)), 0)


def test_hnsw_build_breadth_is_configurable_and_recorded() -> None:
    import faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16, "hnsw", ef_construction=77)
    index.add(vectors, np.arange(300))
    assert index.params["ef_construction"] == 77
    assert faiss.downcast_index(index._index).hnsw.efConstruction == 77
    assert VectorIndex(16, "hnsw").ef_construction == 128
