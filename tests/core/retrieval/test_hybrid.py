from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.retrieval.embeddings import Embedder, default_model_path
from core.retrieval.hybrid import HybridRetriever, SearchHit, load_reranker, reciprocal_rank_fusion


def test_rrf_arithmetic_by_hand() -> None:
    # dense: a b c ; bm25: c a d   (k = 60)
    fused = dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d"] == pytest.approx(1 / 63)
    assert [item for item, _ in reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)] == [
        "a",
        "c",
        "b",
        "d",
    ]
    # k = 0 leaves only 1 / rank
    assert dict(reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=0)) == pytest.approx(
        {"a": 1.5, "b": 0.5, "c": 4 / 3, "d": 1 / 3}
    )
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(ValueError, match="rrf_k"):
        reciprocal_rank_fusion([["a"]], k=-1)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("I lost my card", "card-lost"),
        ("how do I save money tax free", "isa"),
        ("when are you open on saturday", "branch-hours"),
        ("someone phoned asking for my password", "fraud-call"),
    ],
)
def test_semantic_queries_rank_the_right_passage_first(
    retriever: HybridRetriever, query: str, expected: str
) -> None:
    hits = retriever.search(query, 3)
    assert hits[0].doc_id == expected, [h.doc_id for h in hits]
    assert hits[0].dense_rank is not None


def test_exact_term_from_bm25(retriever: HybridRetriever) -> None:
    hit = retriever.search("CF-42", 3)[0]
    assert hit.doc_id == "complaint" and hit.bm25_rank == 1
    assert retriever.search("FTHMGB2L", 1)[0].doc_id == "swift"


def test_hits_carry_ranks_scores_and_metadata(retriever: HybridRetriever) -> None:
    hits = retriever.search("lost card freeze replacement", 5)
    assert len(hits) == 5 and all(isinstance(h, SearchHit) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = hits[0]
    expected = sum(1 / (60 + r) for r in (top.dense_rank, top.bm25_rank) if r is not None)
    assert top.score == pytest.approx(expected) == top.rrf_score
    assert top.metadata["source"] == f"faq/{top.doc_id}.md"
    assert len(retriever.search("card", 100)) == len(retriever.documents)  # k above the corpus size


def test_save_load_gives_identical_results(saved_retriever, embedder: Embedder) -> None:
    built, directory = saved_retriever
    manifest = json.loads((directory / "retrieval.json").read_text())
    assert manifest["embedding_model_id"] == embedder.model_id and manifest["document_count"] == 22
    loaded = HybridRetriever.load(directory, embedder=embedder)
    for query in ["I lost my card", "CF-42", "overdraft cost", "transfer abroad"]:
        assert loaded.search(query, 5) == built.search(query, 5)


def test_load_refuses_index_of_another_model(saved_retriever, embedder: Embedder, tmp_path: Path) -> None:
    _, directory = saved_retriever
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    manifest_path = copy / "index" / "index.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["embedding_model_id"] = "all-mpnet-base-v2@0123"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"'all-mpnet-base-v2@0123'.*'{embedder.model_id}'"):
        HybridRetriever.load(copy, embedder=embedder)


def test_bad_inputs(retriever: HybridRetriever, embedder: Embedder, tmp_path: Path) -> None:
    for query in ["", "   \n"]:
        with pytest.raises(ValueError, match="query is empty"):
            retriever.search(query, 3)
    with pytest.raises(ValueError, match="query must be a string"):
        retriever.search(None, 3)  # type: ignore[arg-type]
    for k in [0, -2, 1.5, True]:
        with pytest.raises(ValueError, match="k must be a positive integer"):
            retriever.search("card", k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no documents"):
        HybridRetriever.build([], embedder=embedder)
    with pytest.raises(ValueError, match="empty text"):
        HybridRetriever.build([{"id": "a", "text": ""}], embedder=embedder)
    with pytest.raises(FileNotFoundError, match="no saved retriever"):
        HybridRetriever.load(tmp_path, embedder=embedder)
    with pytest.raises(ValueError, match="rrf_k"):
        HybridRetriever(retriever.documents, embedder, retriever.index, retriever.bm25, rrf_k=-1)
    with pytest.raises(FileNotFoundError, match="no-reranker"):
        load_reranker(tmp_path / "no-reranker")
    with pytest.raises(TypeError, match="predict"):
        load_reranker(object())  # type: ignore[arg-type]


class PrefersMortgages:
    """A stub cross-encoder: scores a passage by how often it says 'mortgage'."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs):
        self.pairs = list(pairs)
        return np.array([text.lower().count("mortgage") + 0.01 * len(text) for _, text in pairs])


def test_reranking_reorders_fused_candidates(retriever: HybridRetriever) -> None:
    stub = PrefersMortgages()
    reranked = HybridRetriever(
        retriever.documents, retriever.embedder, retriever.index, retriever.bm25, reranker=stub, rerank_top=10
    )
    hits = reranked.search("interest rate", 3)
    assert len(stub.pairs) == 10 and all(q == "interest rate" for q, _ in stub.pairs)
    assert {hits[0].doc_id, hits[1].doc_id} == {"mortgage-rate", "mortgage-overpay"}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.rrf_score > 0 for h in hits)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT cross-encoder with MiniLM's tokenizer, built offline."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        num_labels=1,
    )
    path = tmp_path_factory.mktemp("tiny-cross-encoder")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cross_encoder_reranking_from_a_local_folder(
    retriever: HybridRetriever, tiny_cross_encoder: Path
) -> None:
    reranked = HybridRetriever(
        retriever.documents, retriever.embedder, retriever.index, retriever.bm25, reranker=tiny_cross_encoder
    )
    hits = reranked.search("I lost my card", 4)
    expected = reranked.reranker.predict([("I lost my card", h.text) for h in hits])
    np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5, atol=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_index_text_puts_the_title_and_section_back_on_a_chunk() -> None:
    from core.retrieval.documents import DocumentRecord
    from core.retrieval.hybrid import index_text

    def rec(**metadata: str) -> DocumentRecord:
        return DocumentRecord(id="x", text="1. Open the app and tap Freeze.", metadata=metadata)

    assert index_text(rec()) == "1. Open the app and tap Freeze."
    assert index_text(rec(title="Lost card")) == "Lost card\n1. Open the app and tap Freeze."
    assert index_text(rec(title="Lost card", section="Lost card > Freeze it")).startswith(
        "Lost card > Freeze it\n"
    )
    assert index_text(rec(title="Lost card", section="Freeze it")).startswith("Lost card - Freeze it\n")


def test_dense_score_is_the_cosine_of_query_and_passage(retriever: HybridRetriever) -> None:
    from core.retrieval.hybrid import index_text

    hits = retriever.search("I lost my card", 5)
    query = retriever.embedder.embed(["I lost my card"])[0]
    for hit in hits:
        if hit.dense_rank is None:
            assert hit.dense_score is None
            continue
        passage = retriever.embedder.embed([index_text(retriever.documents.get(hit.doc_id))])[0]
        assert hit.dense_score == pytest.approx(float(query @ passage), abs=1e-4)
    ranked = [h for h in hits if h.dense_rank is not None]
    best = min(ranked, key=lambda h: h.dense_rank)
    assert best.dense_score == max(h.dense_score for h in ranked)
