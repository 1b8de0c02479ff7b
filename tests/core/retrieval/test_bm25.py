from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.retrieval.bm25 import BM25Index, tokenize
from tests.core.retrieval.conftest import BANK_FAQ

KEYS = list(BANK_FAQ)


@pytest.fixture(scope="module")
def bm25() -> BM25Index:
    return BM25Index().build(list(BANK_FAQ.values()))


def test_tokenizer_drops_stopwords_and_lowercases() -> None:
    assert tokenize(["Is THE swift code?"]) == [["swift", "code"]]


def test_exact_term_wins(bm25: BM25Index) -> None:
    scores, positions = bm25.search("form CF-42", 3)
    assert KEYS[positions[0]] == "complaint"
    assert np.all(np.diff(scores) <= 0) and np.all(scores > 0)
    assert KEYS[bm25.search("FTHMGB2L", 5)[1][0]] == "swift"


def test_only_matching_documents_come_back(bm25: BM25Index) -> None:
    scores, positions = bm25.search("FTHMGB2L", 10)
    assert positions.tolist() == [KEYS.index("swift")] and scores.shape == (1,)
    assert bm25.search("the and of", 5)[1].size == 0  # stopwords only
    assert bm25.search("xyzzy", 5)[1].size == 0  # unknown word


def test_save_load_round_trip(bm25: BM25Index, tmp_path: Path) -> None:
    bm25.save(tmp_path)
    loaded = BM25Index.load(tmp_path)
    assert len(loaded) == len(bm25)
    for query in ["mortgage overpay fee", "contactless limit", "cheque photo app"]:
        a, b = bm25.search(query, 5), loaded.search(query, 5)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0])


def test_bad_inputs(bm25: BM25Index, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k must be a positive integer"):
        bm25.search("card", 0)
    with pytest.raises(TypeError, match="query must be a string"):
        bm25.search(["card"], 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one text"):
        BM25Index().build([])
    with pytest.raises(TypeError, match="single string"):
        BM25Index().build("one text")
    with pytest.raises(RuntimeError, match="call build"):
        BM25Index().search("card", 3)
    with pytest.raises(FileNotFoundError, match="no BM25 index"):
        BM25Index.load(tmp_path / "absent")
