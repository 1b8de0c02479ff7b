from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda

from core.retrieval.embeddings import Embedder
from core.retrieval.hybrid import HybridRetriever
from core.retrieval.langchain import FathomEmbeddings, FathomHybridRetriever, FathomVectorStore
from tests.core.retrieval.conftest import BANK_FAQ


@pytest.fixture(scope="module")
def lc_embeddings(embedder: Embedder) -> FathomEmbeddings:
    return FathomEmbeddings(embedder)


@pytest.fixture(scope="module")
def store(lc_embeddings: FathomEmbeddings) -> FathomVectorStore:
    return FathomVectorStore.from_texts(
        list(BANK_FAQ.values()),
        lc_embeddings,
        metadatas=[{"source": f"faq/{k}.md"} for k in BANK_FAQ],
        ids=list(BANK_FAQ),
    )


def test_embeddings_adapter(lc_embeddings: FathomEmbeddings, embedder: Embedder) -> None:
    docs = lc_embeddings.embed_documents(["lost card", "ISA allowance"])
    assert len(docs) == 2 and len(docs[0]) == 384 and isinstance(docs[0][0], float)
    np.testing.assert_allclose(lc_embeddings.embed_query("lost card"), docs[0], atol=1e-6)


def test_vector_store_search(store: FathomVectorStore) -> None:
    assert store.index is not None and store.index.kind == "flat" and len(store.index) == len(BANK_FAQ)
    assert store.index.model_id == store.model_id
    top = store.similarity_search("I lost my card", k=2)
    assert top[0].id == "card-lost" and top[0].metadata["source"] == "faq/card-lost.md"
    scored = store.similarity_search_with_score("I lost my card", k=3)
    scores = [s for _, s in scored]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    assert scored[0][0].metadata["score"] == pytest.approx(scores[0])
    relevance = store.similarity_search_with_relevance_scores("I lost my card", k=1)
    assert 0.0 <= relevance[0][1] <= 1.0
    assert store.get_by_ids(["swift"])[0].page_content == BANK_FAQ["swift"]


def test_add_texts_generates_ids_and_validates(lc_embeddings: FathomEmbeddings) -> None:
    store = FathomVectorStore(lc_embeddings)
    assert store.similarity_search("anything", k=2) == []
    ids = store.add_texts(["Lost cards are replaced in five days."], [{"source": "kb"}])
    assert len(ids) == 1 and store.similarity_search("replacement card", k=1)[0].id == ids[0]
    with pytest.raises(ValueError, match="duplicate document id"):
        store.add_texts(["again"], ids=ids)
    with pytest.raises(ValueError, match="empty text"):
        store.add_texts([""])
    with pytest.raises(ValueError, match="2 metadatas for 1 texts"):
        store.add_texts(["x"], [{}, {}])
    with pytest.raises(ValueError, match="query is empty"):
        store.similarity_search("  ")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.similarity_search("card", k=0)
    assert len(store.documents) == len(store.index) == 1  # failed adds left nothing behind


def test_vector_store_save_load(
    store: FathomVectorStore, lc_embeddings: FathomEmbeddings, tmp_path: Path
) -> None:
    store.save_local(tmp_path)
    loaded = FathomVectorStore.load_local(tmp_path, lc_embeddings)
    query = "how much can I pay contactless"
    assert loaded.similarity_search_with_score(query, 4) == store.similarity_search_with_score(query, 4)


def test_vector_store_retriever_in_lcel_chain(store: FathomVectorStore) -> None:
    chain = store.as_retriever(search_kwargs={"k": 2}) | RunnableLambda(lambda docs: [d.id for d in docs])
    assert chain.invoke("my card was stolen")[0] == "card-lost"


def test_hybrid_retriever_in_lcel_chain(retriever: HybridRetriever) -> None:
    lc_retriever = FathomHybridRetriever(retriever=retriever, k=3)
    docs = lc_retriever.invoke("What is the SWIFT code FTHMGB2L for?")
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 3
    assert docs[0].metadata["id"] == "swift" and docs[0].metadata["source"] == "faq/swift.md"
    assert docs[0].metadata["score"] > 0 and docs[0].metadata["bm25_rank"] == 1

    def cite(found: list[Document]) -> str:
        return "\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in found)

    answer = (lc_retriever | RunnableLambda(cite)).invoke("I lost my card")
    assert answer.startswith("[faq/card-lost.md] If your card is lost")
    assert (lc_retriever | RunnableLambda(len)).batch(["overdraft", "ISA"]) == [3, 3]
    with pytest.raises(ValueError, match="query is empty"):
        lc_retriever.invoke("")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        FathomHybridRetriever(retriever=retriever, k=0)
