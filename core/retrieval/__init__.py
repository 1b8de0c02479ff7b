"""Retrieval core: embeddings, FAISS indexes, BM25, hybrid search with RRF, LangChain adapters.

``core.retrieval.langchain`` is imported on demand (``from core.retrieval.langchain import ...``)
so that code without LangChain can still search.
"""

from core.retrieval.bm25 import BM25Index
from core.retrieval.config import RetrievalConfig
from core.retrieval.documents import DocumentRecord, DocumentStore
from core.retrieval.embeddings import Embedder, EmbeddingCache, default_model_path, model_id_for
from core.retrieval.hybrid import HybridRetriever, SearchHit, reciprocal_rank_fusion
from core.retrieval.index import VectorIndex, choose_kind, ivfpq_params

__all__ = [
    "BM25Index",
    "DocumentRecord",
    "DocumentStore",
    "Embedder",
    "EmbeddingCache",
    "HybridRetriever",
    "RetrievalConfig",
    "SearchHit",
    "VectorIndex",
    "choose_kind",
    "default_model_path",
    "ivfpq_params",
    "model_id_for",
    "reciprocal_rank_fusion",
]
