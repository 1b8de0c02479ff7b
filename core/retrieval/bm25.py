"""BM25 keyword search with ``bm25s``.

Texts are tokenised by bm25s's tokenizer (lower-cased, words of 2+ characters, English
stopwords removed). BM25 catches what embeddings blur: exact terms such as product names,
error codes and form numbers.

Shapes:
    ``search(query, k) -> (scores (k',), positions (k',))``, best first, only documents that
    share at least one term with the query (``k' <= k``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np

log = logging.getLogger(__name__)

STOPWORDS = "en"
MANIFEST = "bm25.json"


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """bm25s tokens of each text, as strings (so queries may hold words the corpus lacks)."""
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False, show_progress=False)


class BM25Index:
    """BM25 over a list of texts whose positions are their ids.

    Args:
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._bm25: bm25s.BM25 | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def build(self, texts: Sequence[str]) -> BM25Index:
        """Index ``texts``; their positions 0..N-1 are what ``search`` returns."""
        if isinstance(texts, str):
            raise TypeError("BM25Index.build takes a sequence of texts, got a single string")
        texts = list(texts)
        if not texts:
            raise ValueError("BM25Index.build needs at least one text")
        self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
        self._bm25.index(tokenize(texts), show_progress=False)
        self._n = len(texts)
        return self

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` documents for ``query`` by BM25 score (those with score 0 left out).

        Shapes:
            returns scores ``(k',)`` float32 and positions ``(k',)`` int64, ``k' <= min(k, N)``.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if self._bm25 is None:
            raise RuntimeError("BM25Index is empty: call build() or load() first")
        tokens = tokenize([query])
        if not tokens[0]:  # only stopwords or punctuation: nothing for BM25 to match
            return np.empty(0, np.float32), np.empty(0, np.int64)
        positions, scores = self._bm25.retrieve(tokens, k=min(k, self._n), show_progress=False)
        positions, scores = positions[0].astype(np.int64), scores[0].astype(np.float32)  # (k,), (k,)
        # A zero score means no shared term: ranking such documents would only add noise to fusion.
        keep = scores > 0
        return scores[keep], positions[keep]

    def save(self, directory: str | Path) -> Path:
        if self._bm25 is None:
            raise RuntimeError("BM25Index is empty: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(directory), show_progress=False)
        meta = {"document_count": self._n, "k1": self.k1, "b": self.b, "stopwords": STOPWORDS}
        (directory / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BM25Index:
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise FileNotFoundError(f"no BM25 index in {str(directory)!r} (missing {MANIFEST})")
        meta = json.loads((directory / MANIFEST).read_text())
        index = cls(k1=meta["k1"], b=meta["b"])
        index._bm25 = bm25s.BM25.load(str(directory), show_progress=False)
        index._n = int(meta["document_count"])
        return index
