"""Data of ``fathom bench retrieval``: clustered synthetic vectors and knowledge-base corpora of any size.

- ``GaussianMixture``: unit vectors drawn around random unit centres (isotropic Gaussian noise, then
  L2-normalised), the stand-in for embeddings in the FAISS index comparison; queries are fresh draws of
  the same mixture, so they lie near the data as real questions lie near the passages.
- ``corpus``: the knowledge-base chunks plus deterministic filler passages up to a requested size. A
  filler passage recombines 2-4 sentences of one knowledge-base article, with the product, market,
  amounts, percentages and delays varied (``"... free for UK and EEA debit cards, 2.5% for ..."``), so
  it reads like another bank's help-centre page and competes with the real chunks in search. Filler
  carries no ``intents``: it never answers a question of the QA set.

Everything is seeded: the same arguments give the same vectors and texts (so the embedding cache makes
reruns fast).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from core.retrieval.documents import DocumentRecord

POINTS_PER_CLUSTER = 100
SAMPLE_BLOCK = 65_536  # rows drawn at a time; the draws depend on it, so it is fixed
PRODUCTS = (
    "Everyday", "Premier", "Metal", "Student", "Business", "Junior", "Travel", "Saver", "Joint",
    "Private", "Reward", "Plus",
)  # fmt: skip
MARKETS = (
    "the UK", "Ireland", "Jersey", "Guernsey", "Gibraltar", "the Isle of Man", "Malta", "Cyprus", "Spain",
    "France",
)  # fmt: skip
_AMOUNTS = (1, 2, 3, 5, 10, 15, 20, 25, 50, 75, 100, 150, 200, 250, 300, 500, 750, 1000, 2000, 5000, 10000)
_PERCENTS = ("0.25%", "0.5%", "0.75%", "1%", "1.5%", "2%", "2.5%", "3%")
_MONEY = re.compile(r"£\d[\d,]*(?:\.\d\d)?(?<!,)")
_PERCENT = re.compile(r"\b\d+(?:\.\d+)?%")
_DAYS = re.compile(r"\b\d+(?:-\d+)? (working |business |calendar )?days\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"“])")
_MARKER = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
MIN_SENTENCE_WORDS = 5


@dataclass
class GaussianMixture:
    """Unit vectors around ``clusters`` random unit centres.

    A draw is ``normalise(centre + noise * g / sqrt(dim))`` with ``g`` standard normal, so ``noise`` is
    the typical distance from the centre before normalisation.

    Args:
        dim: vector width D.
        clusters: number of centres.
        noise: spread around each centre.
        seed: seed of the centres.

    Raises:
        ValueError: a size or the noise is out of range.
    """

    dim: int
    clusters: int
    noise: float = 0.6
    seed: int = 0
    centres: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.clusters < 1:
            raise ValueError(f"dim and clusters must be >= 1, got {self.dim} and {self.clusters}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        rng = np.random.default_rng(self.seed)
        centres = rng.standard_normal((self.clusters, self.dim), dtype=np.float32)  # (C, D)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)

    @classmethod
    def for_size(cls, n: int, dim: int, seed: int = 0) -> GaussianMixture:
        """A mixture with about ``POINTS_PER_CLUSTER`` points per cluster for ``n`` points."""
        return cls(dim, max(1, n // POINTS_PER_CLUSTER), seed=seed)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``n`` draws, built in blocks of ``SAMPLE_BLOCK`` rows to bound the temporary memory.

        Args:
            n: number of vectors.
            seed: seed of the draws (use different seeds for data and queries).

        Shapes:
            returns ``(n, dim)`` float32 with unit rows.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng((self.seed, seed))
        out = np.empty((n, self.dim), dtype=np.float32)
        scale = np.float32(self.noise / np.sqrt(self.dim))
        for start in range(0, n, SAMPLE_BLOCK):
            stop = min(n, start + SAMPLE_BLOCK)
            which = rng.integers(0, self.clusters, stop - start)  # (B,)
            rows = self.centres[which] + scale * rng.standard_normal(
                (stop - start, self.dim), dtype=np.float32
            )
            out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return out


@dataclass(frozen=True)
class _Article:
    title: str
    sentences: tuple[tuple[str, str], ...]  # (section, sentence)


def _articles(chunks: Sequence[DocumentRecord]) -> list[_Article]:
    """Sentences of each article (by source), headings and table rows left out, list markers removed."""
    by_source: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for chunk in chunks:
        source = str(chunk.metadata.get("source") or chunk.id)
        title = str(chunk.metadata.get("title") or "").strip()
        section = str(chunk.metadata.get("section") or title).split(">")[-1].strip()
        entry = by_source.setdefault(source, (title, []))
        for line in chunk.text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", "|")):
                continue
            for sentence in _SENTENCE_END.split(_MARKER.sub("", line)):
                sentence = sentence.strip()
                if len(sentence.split()) >= MIN_SENTENCE_WORDS:
                    entry[1].append((section, sentence))
    return [_Article(title, tuple(sents)) for title, sents in by_source.values() if len(sents) >= 2]


def _vary(sentence: str, rng: random.Random) -> str:
    def money(_: re.Match[str]) -> str:
        return f"£{rng.choice(_AMOUNTS):,}"

    def days(match: re.Match[str]) -> str:
        low = rng.randint(1, 10)
        kind = match.group(1) or ""
        return f"{low}-{low + rng.randint(1, 5)} {kind}days" if rng.random() < 0.5 else f"{low} {kind}days"

    sentence = _MONEY.sub(money, sentence)
    sentence = _PERCENT.sub(lambda _: rng.choice(_PERCENTS), sentence)
    return _DAYS.sub(days, sentence)


def filler_passages(n: int, chunks: Sequence[DocumentRecord], seed: int = 0) -> list[DocumentRecord]:
    """``n`` deterministic filler passages recombined from the sentences of ``chunks`` (see module doc).

    Args:
        n: number of passages.
        chunks: knowledge-base chunks (with ``title``, ``section`` and ``source`` metadata).
        seed: seed of the recombination.

    Returns:
        Records with ids ``filler-000000``, ..., metadata ``title``, ``section``, ``source``
        (``synthetic/filler``), ``intents`` (empty) and ``synthetic`` (True).

    Raises:
        ValueError: ``n`` is negative or ``chunks`` hold no article with two usable sentences.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    articles = _articles(chunks)
    if not articles and n:
        raise ValueError("the chunks hold no article with two sentences of 5+ words to recombine")
    rng = random.Random(seed)
    out: list[DocumentRecord] = []
    for i in range(n):
        article = rng.choice(articles)
        product, market = rng.choice(PRODUCTS), rng.choice(MARKETS)
        count = min(len(article.sentences), rng.randint(2, 4))
        picked = sorted(rng.sample(range(len(article.sentences)), count))
        section = article.sentences[picked[0]][0]
        body = " ".join(_vary(article.sentences[j][1], rng) for j in picked)
        body = body.replace("Harbour account", f"Harbour {product} account")
        out.append(
            DocumentRecord(
                id=f"filler-{i:06d}",
                text=f"For {product} customers in {market}: {body}",
                metadata={
                    "title": f"{article.title} ({product}, {market})",
                    "section": section,
                    "source": "synthetic/filler",
                    "intents": [],
                    "synthetic": True,
                },
            )
        )
    return out


def corpus(size: int, chunks: Sequence[DocumentRecord], seed: int = 0) -> list[DocumentRecord]:
    """The knowledge-base ``chunks`` followed by filler passages up to ``size`` records.

    Raises:
        ValueError: ``size`` is smaller than the number of chunks.
    """
    if size < len(chunks):
        raise ValueError(f"a corpus of {size} passages cannot hold the {len(chunks)} knowledge-base chunks")
    return [*chunks, *filler_passages(size - len(chunks), chunks, seed)]
