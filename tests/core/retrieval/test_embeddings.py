from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.retrieval.embeddings import Embedder, EmbeddingCache, default_model_path, model_id_for


def test_embed_shape_dtype_and_unit_norm(embedder: Embedder) -> None:
    vectors = embedder.embed(["I lost my card", "What is the SWIFT code?", "Mortgage overpayment"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_semantically_close_texts_are_closer(embedder: Embedder) -> None:
    query, close, far = embedder.embed(
        ["I lost my card", "My bank card has gone missing", "Branches open at 9am on weekdays"]
    )
    assert query @ close > query @ far + 0.2


def test_cache_avoids_model_calls(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spied = copy.copy(embedder)
    spied.cache = EmbeddingCache(tmp_path)
    calls: list[list[str]] = []
    encode = embedder.model.encode

    def spy(texts, **kwargs):
        calls.append(list(texts))
        return encode(texts, **kwargs)

    monkeypatch.setattr(spied.model, "encode", spy)
    first = spied.embed(["freeze my card", "open an ISA", "freeze my card"])
    assert calls == [["freeze my card", "open an ISA"]]  # duplicates embedded once
    again = spied.embed(["open an ISA", "freeze my card"])
    assert len(calls) == 1, "unchanged texts must come from the cache"
    np.testing.assert_array_equal(again, first[[1, 0]])
    spied.embed(["open an ISA", "a new text"])
    assert calls[-1] == ["a new text"]
    assert len(spied.cache) == 3


def test_cache_is_keyed_by_model_id(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put_many({EmbeddingCache.key("model-a", "hello"): np.ones(4, np.float32)})
    assert cache.get_many([EmbeddingCache.key("model-b", "hello")], 4) == {}
    assert list(cache.get_many([EmbeddingCache.key("model-a", "hello")], 4)) == [
        EmbeddingCache.key("model-a", "hello")
    ]
    assert cache.get_many([EmbeddingCache.key("model-a", "hello")], 8) == {}  # other width: stale


def test_model_id_is_stable_and_tracks_files(tmp_path: Path) -> None:
    src = default_model_path()
    assert model_id_for(src) == model_id_for(src)
    copy_dir = tmp_path / "minilm"
    shutil.copytree(src, copy_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    (copy_dir / "model.safetensors").write_bytes(b"0" * 10)
    assert model_id_for(copy_dir).startswith("minilm@")
    assert model_id_for(copy_dir).split("@")[1] != model_id_for(src).split("@")[1]


def test_missing_model_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Embedder(missing, cache_dir=tmp_path)


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a sentence-transformers model folder"):
        Embedder(tmp_path, cache_dir=tmp_path / "cache")


def test_bad_inputs(embedder: Embedder) -> None:
    with pytest.raises(TypeError, match="single string"):
        embedder.embed("I lost my card")
    with pytest.raises(TypeError, match="item 1 is int"):
        embedder.embed(["ok", 3])
    with pytest.raises(TypeError, match="query must be a string"):
        embedder.embed_query(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(batch_size=0)
