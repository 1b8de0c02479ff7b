"""Configuration of the retrieval core: a validated dataclass plus YAML, like ``core.moe.config``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from core.config import ConfigMixin
from core.retrieval.index import KINDS


@dataclass
class RetrievalConfig(ConfigMixin):
    """How to embed, index and fuse.

    Args:
        model_path: local sentence-transformers folder; ``None``: the packaged MiniLM.
        index_kind: ``auto``, ``flat``, ``hnsw`` or ``ivfpq`` (see ``core.retrieval.index``).
        rrf_k: reciprocal-rank-fusion constant.
        reranker_path: local cross-encoder folder; ``None``: no reranking.
        cache_dir: embedding cache folder; ``None``: ``~/.cache/fathom/embeddings``.
        candidates: results taken from dense and from BM25 before fusion.
        batch_size: texts per embedding-model call.
        device: torch device of the models (``None``: sentence-transformers picks).
    """

    yaml_section: ClassVar[str] = "retrieval"

    model_path: str | None = None
    index_kind: str = "auto"
    rrf_k: int = 60
    reranker_path: str | None = None
    cache_dir: str | None = None
    candidates: int = 20
    batch_size: int = 64
    device: str | None = None

    def __post_init__(self) -> None:
        if self.index_kind not in (*KINDS, "auto"):
            raise ValueError(
                f"RetrievalConfig.index_kind must be one of auto, {', '.join(KINDS)}; got {self.index_kind!r}"
            )
        for name in ("rrf_k", "candidates", "batch_size"):
            value = getattr(self, name)
            low = 0 if name == "rrf_k" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"RetrievalConfig.{name} must be an integer >= {low}, got {value!r}")

    def retriever_options(self) -> dict[str, Any]:
        """Keyword arguments of ``HybridRetriever`` / ``HybridRetriever.build`` from this config."""
        return {"rrf_k": self.rrf_k, "reranker": self.reranker_path, "candidates": self.candidates}

    def embedder_options(self) -> dict[str, Any]:
        """Keyword arguments of ``Embedder`` from this config."""
        return {
            "model_path": self.model_path,
            "device": self.device,
            "batch_size": self.batch_size,
            "cache_dir": self.cache_dir,
        }
