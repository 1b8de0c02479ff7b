"""Retrieval evaluation: recall@k/MRR arithmetic, hit matching, the QA CSV, the BANKING77 -> KB pairs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.documents import Document
from typer.testing import CliRunner

from apps.cli import app
from apps.customer_service.evaluation import (
    QAPair,
    articles_by_intent,
    banking77_kb_pairs,
    evaluate_qa,
    first_match_rank,
    hit_matches,
    metrics_from_ranks,
    normalise,
    read_qa_csv,
    sample_pairs,
    write_qa_csv,
)
from core.retrieval.hybrid import SearchHit

ARTICLES = {
    "lost-card.md": (
        "I lost my card",
        ["lost_or_stolen_card"],
        "Freeze the card in the app straight away. Then order a new card from the Cards screen.",
    ),
    "card-delivery.md": (
        "When will my card arrive?",
        ["card_arrival"],
        "Cards arrive in 3-5 working days in the UK. Cards sent abroad take up to 10 working days.",
    ),
    "card-late.md": (
        "My card has not arrived",
        ["card_arrival"],
        "If your card is late after 10 days, tell us in chat. We will cancel it and send a new one for free.",
    ),
    "change-pin.md": (
        "How do I change my PIN?",
        ["change_pin", "pin_blocked"],
        "Change your PIN at any cash machine in the UK. Choose PIN services and follow the steps on screen.",
    ),
}


def write_kb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (title, intents, text) in ARTICLES.items():
        front = f"---\ntitle: {title}\ncategory: cards\nintents: [{', '.join(intents)}]\n---\n"
        (folder / name).write_text(f"{front}# {title}\n\n## Details\n\n{text}\n", encoding="utf-8")
    return folder


def write_banking77(path: Path) -> Path:
    rows = [
        ("I can't find my card anywhere", "lost_or_stolen_card"),
        ("Someone stole my card", "lost_or_stolen_card"),
        ("my card was stolen yesterday", "lost_or_stolen_card"),
        ("Where is my new card?", "card_arrival"),
        ("still waiting on my card", "card_arrival"),
        ("How long does card delivery take?", "card_arrival"),
        ("I want to change my PIN", "change_pin"),
        ("new pin please", "change_pin"),
        ("my PIN is blocked", "pin_blocked"),
        ("I typed the wrong PIN three times", "pin_blocked"),
    ]
    path.write_text("text,category\n" + "".join(f"{t},{c}\n" for t, c in rows), encoding="utf-8")
    return path


def hit(doc_id: str, text: str = "some passage", source: str | None = None) -> SearchHit:
    return SearchHit(doc_id=doc_id, score=1.0, text=text, metadata={"source": source} if source else {})


# -- arithmetic -------------------------------------------------------------------------------------------
def test_metrics_from_ranks_arithmetic() -> None:
    metrics = metrics_from_ranks([1, 3, None, 6, 10, 2])
    assert metrics["n"] == 6
    assert metrics["recall_at_1"] == pytest.approx(1 / 6)
    assert metrics["recall_at_5"] == pytest.approx(3 / 6)
    assert metrics["recall_at_10"] == pytest.approx(5 / 6)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 6 + 1 / 10 + 1 / 2) / 6)
    assert metrics_from_ranks([None, None], ks=(3,)) == {"recall_at_3": 0.0, "mrr": 0.0, "n": 2}


@pytest.mark.parametrize(
    ("ranks", "ks", "message"),
    [
        ([], (1,), "no questions"),
        ([0], (1,), "ranks must be"),
        ([1], (0,), "ks must be"),
        ([1], (), "ks must"),
    ],
)
def test_metrics_from_ranks_rejects_bad_input(ranks: list, ks: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics_from_ranks(ranks, ks)


def test_evaluate_qa_ranks_the_first_matching_hit() -> None:
    ranked = {
        "q1": [hit("a#0", source="/kb/lost-card.md"), hit("b#0")],  # rank 1 by source file name
        "q2": [hit("x#0"), hit("y#0"), hit("c#3", source="kb/card-late.md")],  # rank 3 by file stem
        "q3": [hit("x#0"), hit("p#7")],  # rank 2 by passage id
        "q4": [hit(f"z#{i}") for i in range(10)],  # no match
    }
    pairs = [
        QAPair("q1", ("lost-card.md",)),
        QAPair("q2", ("card-delivery", "card-late")),
        QAPair("q3", ("p#7",)),
        QAPair("q4", ("nowhere.md",)),
    ]
    asked: list[tuple[str, int]] = []

    def search(question: str, k: int) -> list[SearchHit]:
        asked.append((question, k))
        return ranked[question][:k]

    metrics = evaluate_qa(pairs, search)
    assert asked == [(p.question, 10) for p in pairs]
    assert metrics == pytest.approx(
        {
            "recall_at_1": 0.25,
            "recall_at_5": 0.75,
            "recall_at_10": 0.75,
            "mrr": (1 + 1 / 3 + 1 / 2) / 4,
            "n": 4,
        }
    )
    assert evaluate_qa(pairs, search, ks=(2,)) == pytest.approx({"recall_at_2": 0.5, "mrr": 0.375, "n": 4})


def test_answer_text_matching_is_normalised_and_goes_both_ways() -> None:
    passage = hit(
        "a", text="## Fees\n\nCard payments abroad cost **2%** of the amount; ATM withdrawals are free."
    )
    assert hit_matches(passage, QAPair("q", ("card payments ABROAD cost 2% of the amount",), "answer"))
    long_answer = "Fees: card payments abroad cost 2% of the amount; ATM withdrawals are free. Nothing else."
    assert hit_matches(passage, QAPair("q", (long_answer,), "answer"))  # the passage is inside the answer
    assert not hit_matches(passage, QAPair("q", ("transfers cost 1%",), "answer"))
    assert normalise("  Hello,\n**World**!  ") == "hello world"
    assert (
        first_match_rank([hit("x", "nothing"), passage], QAPair("q", ("ATM withdrawals are free",), "answer"))
        == 2
    )


def test_langchain_documents_and_vector_stores_are_evaluated_too() -> None:
    docs = [
        Document(page_content="other", metadata={"id": "o#0", "source": "other.md"}),
        Document(page_content="Freeze the card", metadata={"source": "/kb/lost-card.md"}, id="l#0"),
    ]

    class Store:  # a LangChain vector store has both search(query, search_type) and similarity_search
        def search(self, query: str, search_type: str) -> list[Document]:
            raise AssertionError("similarity_search must be preferred")

        def similarity_search(self, query: str, k: int = 4) -> list[Document]:
            return docs[:k]

    assert evaluate_qa([QAPair("q", ("lost-card",))], Store())["mrr"] == 0.5
    assert hit_matches(docs[1], QAPair("q", ("l#0",)))
    with pytest.raises(TypeError, match="cannot search"):
        evaluate_qa([QAPair("q", ("a",))], object())
    with pytest.raises(TypeError, match="SearchHit or a LangChain Document"):
        hit_matches("a string", QAPair("q", ("a",)))


def test_qa_pair_validation() -> None:
    with pytest.raises(ValueError, match="question is empty"):
        QAPair("  ", ("a",))
    with pytest.raises(ValueError, match="no answer"):
        QAPair("q", ("",))
    with pytest.raises(ValueError, match="no letters or digits"):
        QAPair("q", ("?!",), "answer")
    with pytest.raises(ValueError, match="kind must be"):
        QAPair("q", ("a",), "answers")  # type: ignore[arg-type]


# -- CSV --------------------------------------------------------------------------------------------------
def test_read_qa_csv_both_forms_and_round_trip(tmp_path: Path) -> None:
    ids = tmp_path / "ids.csv"
    ids.write_text("question,answer_id\nlost my card, lost-card.md | card-late \n", encoding="utf-8")
    assert read_qa_csv(ids) == [QAPair("lost my card", ("lost-card.md", "card-late"), "answer_id")]
    texts = tmp_path / "texts.csv"
    texts.write_text(
        'question,answer\nfee?,"Card payments abroad cost 2%, ATMs are free."\n', encoding="utf-8"
    )
    assert read_qa_csv(texts)[0].answers == ("Card payments abroad cost 2%, ATMs are free.",)
    pairs = [QAPair("a?", ("x.md", "y")), QAPair("b, with a comma?", ("z#1",))]
    assert read_qa_csv(write_qa_csv(pairs, tmp_path / "out" / "qa.csv")) == pairs
    with pytest.raises(ValueError, match="mix"):
        write_qa_csv([QAPair("a", ("x",)), QAPair("b", ("y",), "answer")], tmp_path / "mixed.csv")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("query,answer_id\nq,a\n", "no 'question' column"),
        ("question,notes\nq,a\n", "no answer_id or answer column"),
        ("question,answer_id,answer\nq,a,b\n", "both answer_id and answer"),
        ("question,answer_id\nq,a\n,b\n", r":3: empty question"),
        ("question,answer_id\nq,a\nr,\n", r":3: empty answer_id"),
        ("question,answer_id\nq, | \n", r":2: empty answer_id"),
        ("question,answer\nq,...\n", r":2: the answer has no letters"),
        ("question,answer\n", "no rows"),
    ],
)
def test_read_qa_csv_errors_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qa.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_qa_csv(path)


def test_read_qa_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_qa_csv(tmp_path / "nope.csv")


# -- BANKING77 -> KB --------------------------------------------------------------------------------------
def test_banking77_pairs_point_at_every_article_of_the_intent(tmp_path: Path) -> None:
    kb = write_kb(tmp_path / "kb")
    assert articles_by_intent(kb)["card_arrival"] == ["card-delivery.md", "card-late.md"]
    pairs = banking77_kb_pairs(write_banking77(tmp_path / "b77.csv"), kb)
    assert len(pairs) == 10
    arrival = next(p for p in pairs if p.question == "Where is my new card?")
    assert arrival.answers == ("card-delivery.md", "card-late.md") and arrival.label == "card_arrival"
    assert next(p for p in pairs if p.label == "pin_blocked").answers == ("change-pin.md",)


def test_banking77_sample_is_stratified_and_seeded(tmp_path: Path) -> None:
    kb = write_kb(tmp_path / "kb")
    csv_path = write_banking77(tmp_path / "b77.csv")
    sample = banking77_kb_pairs(csv_path, kb, sample=4, seed=3)
    assert sorted(p.label for p in sample) == [
        "card_arrival",
        "change_pin",
        "lost_or_stolen_card",
        "pin_blocked",
    ]
    assert sample == banking77_kb_pairs(csv_path, kb, sample=4, seed=3)
    assert len(sample_pairs(sample, 100)) == 4
    with pytest.raises(ValueError, match="sample must be"):
        sample_pairs(sample, 0)


def test_banking77_pairs_errors(tmp_path: Path) -> None:
    kb = write_kb(tmp_path / "kb")
    uncovered = tmp_path / "u.csv"
    uncovered.write_text("text,category\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(ValueError, match="1 label.*no article.*greeting"):
        banking77_kb_pairs(uncovered, kb)
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        banking77_kb_pairs(bad, kb)
    (kb / "broken.md").write_text("# no front matter\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no YAML front matter"):
        articles_by_intent(kb)
    with pytest.raises(FileNotFoundError, match="no Markdown articles"):
        articles_by_intent(tmp_path / "empty")


# -- CLI --------------------------------------------------------------------------------------------------
def test_cs_eval_cli_on_an_ingested_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path / "cache"))
    kb = write_kb(tmp_path / "kb")
    runner = CliRunner()
    index = tmp_path / "index"
    assert runner.invoke(app, ["cs", "ingest", str(kb), "--index", str(index)]).exit_code == 0
    qa = write_qa_csv(
        [
            QAPair("I lost my card, what do I do?", ("lost-card",)),
            QAPair("how do I change my PIN at an ATM", ("change-pin.md",)),
            QAPair("question about something we never wrote", ("missing-article.md",)),
        ],
        tmp_path / "qa.csv",
    )
    result = runner.invoke(app, ["cs", "eval", "--qa", str(qa), "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"recall_at_1", "recall_at_5", "recall_at_10", "mrr", "n"}
    assert metrics["n"] == 3
    assert metrics["recall_at_10"] == pytest.approx(2 / 3)  # the third answer is not in the index
    assert 0 <= metrics["recall_at_1"] <= metrics["recall_at_5"] <= metrics["recall_at_10"]
    human = runner.invoke(app, ["cs", "eval", "--qa", str(qa), "--index", str(index)])
    assert human.exit_code == 0 and "recall@5" in human.stdout and "n 3" in human.stdout


def test_cs_eval_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "qa.csv"
    bad.write_text("question,answer_id,answer\nq,a,b\n", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["cs", "eval", "--qa", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and "both answer_id and answer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    missing = runner.invoke(app, ["cs", "eval", "--qa", str(tmp_path / "none.csv")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
