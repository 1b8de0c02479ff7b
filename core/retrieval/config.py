"""Configuration of the retrieval core: a validated dataclass plus YAML, like ``core.moe.config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.retrieval.index import KINDS


@dataclass
class RetrievalConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RetrievalConfig fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RetrievalConfig:
        """Read a YAML mapping of fields, at top level or under a ``retrieval:`` key."""
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of RetrievalConfig fields, got {type(data).__name__}"
            )
        return cls.from_dict(data.get("retrieval", data))

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
