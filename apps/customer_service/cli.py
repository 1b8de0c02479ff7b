"""``fathom cs``: the customer-service commands (ask, intent(s), train-intents, ingest, search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

cs_app = typer.Typer(
    help="Customer service: answers with citations, intents, knowledge-base ingestion.", no_args_is_help=True
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@cs_app.command("ingest")
def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders: Markdown, HTML, PDF, text, CSV.")],
    index: Annotated[Path, typer.Option("--index", help="Folder to write the index to.")],
    text_column: Annotated[str, typer.Option(help="CSV column holding the passage text.")] = "answer",
    title_column: Annotated[str | None, typer.Option(help="CSV column holding a title.")] = None,
    id_column: Annotated[str | None, typer.Option(help="CSV column holding stable ids.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Load, chunk and index knowledge-base files; skipped files and rejected rows are listed."""
    from apps.customer_service.service import ingest

    try:
        report = ingest(paths, index, text_column=text_column, title_column=title_column, id_column=id_column)
    except (FileNotFoundError, ValueError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    print(f"indexed {report.chunks} chunks from {report.documents} documents into {report.index_dir}")
    for where, why in report.skipped:
        print(f"skipped {where}: {why}")
    for where, why in report.rejected:
        print(f"rejected {where}: {why}")


@cs_app.command("search")
def search_command(
    query: Annotated[str, typer.Argument(help="A question or search terms.")],
    index: Annotated[
        Path | None, typer.Option("--index", help="Index folder (default: the shipped KB).")
    ] = None,
    k: Annotated[int, typer.Option(help="Number of passages.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the passages as JSON.")] = False,
) -> None:
    """Hybrid (BM25 + dense) search of the knowledge base, without an answer or intent."""
    from apps.customer_service.service import search

    try:
        hits = search(query, k=k, index_dir=index)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps({"query": query, "sources": hits}))
        return
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. {hit['title']} [{hit['section']}] ({hit['score']:.4f}) {hit['source']}")


def _assistant(index: Path | None, sessions: str | None, backend: str | None, config: Path | None):
    from apps.customer_service.assistant import Assistant, AssistantConfig

    cfg = AssistantConfig.from_yaml(config) if config else AssistantConfig()
    if index is not None:
        cfg.index = str(index)
    if sessions is not None:
        cfg.sessions = sessions
    if backend is not None:
        cfg.llm = {**cfg.llm, "backend": backend}
    return Assistant.from_config(cfg)


@cs_app.command("ask")
def ask_command(
    question: Annotated[str | None, typer.Argument(help="The customer's message.")] = None,
    index: Annotated[
        Path | None, typer.Option("--index", help="Index folder (default: the shipped KB).")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Continue this conversation.")] = None,
    batch: Annotated[
        Path | None, typer.Option("--batch", help="File with one question per line; one JSON line out each.")
    ] = None,
    sessions: Annotated[
        str | None, typer.Option(help="Session store URL (sqlite:///f.db, redis://host:port/0).")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Answer backend: extractive, openai or hf.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML with an 'assistant:' section.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Answer a customer message with citations, intent and hand-off (or every line of --batch)."""
    if (question is None) == (batch is None):
        _fail("give either a QUESTION or --batch FILE")
    if batch is not None and session is not None:
        _fail("--session applies to one question; --batch questions are independent")
    questions: list[str] = []
    if batch is not None:
        if not batch.is_file():
            _fail(f"{batch} does not exist")
        lines = batch.read_text(encoding="utf-8").splitlines()
        questions = [line.strip() for line in lines]
        blank = [i for i, q in enumerate(questions, 1) if not q]
        if blank:
            _fail(f"{batch}: line {blank[0]} is empty (one question per line)")
        if not questions:
            _fail(f"{batch} holds no questions")
    try:
        assistant = _assistant(index, sessions, backend, config)
        if batch is None:
            results = [assistant.ask(question or "", session_id=session)]
        else:
            results = []
            for q in questions:
                results.append(assistant.ask(q))
                if as_json:
                    print(json.dumps(results[-1].public()), flush=True)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        if batch is None:
            print(json.dumps(results[0].public()))
        return
    for result in results:
        print(result.answer)
        for n, source in enumerate(result.sources, 1):
            print(f"  [{n}] {source.title} ({source.source})")
        print(
            f"  intent: {result.intent.label} ({result.intent.confidence:.2f})  session: {result.session_id}"
        )
        if result.handoff:
            print(f"  HAND-OFF: {result.handoff.reason}")


@cs_app.command("intent")
def intent_command(
    text: Annotated[str, typer.Argument(help="A customer message.")],
    model: Annotated[Path | None, typer.Option(help="Router folder (default: models/intent-router).")] = None,
    top: Annotated[int, typer.Option(help="How many labels to list.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The intent of one message: ``{"label", "confidence", "top": [[label, p], ...]}``."""
    from apps.customer_service.intents import IntentRouter
    from core.privacy import mask

    try:
        prediction = IntentRouter.load(model).predict([mask(text).text], top=max(1, top))[0]
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(prediction.to_dict()))
        return
    for label, p in prediction.top:
        print(f"{label}\t{p:.4f}")


@cs_app.command("intents")
def intents_command(
    csv_path: Annotated[Path, typer.Option("--csv", help="A text,category CSV (BANKING77 form).")],
    model: Annotated[Path | None, typer.Option(help="Router folder (default: models/intent-router).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Accuracy and macro F1 of the intent router on a labelled CSV: ``{"accuracy", "macro_f1", "n"}``."""
    from apps.customer_service.intents import IntentRouter, read_intent_csv

    try:
        texts, labels = read_intent_csv(csv_path)
        metrics = IntentRouter.load(model).evaluate(texts, labels)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(metrics))
        return
    print(f"accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['macro_f1']:.4f}  n {metrics['n']}")


@cs_app.command("train-intents")
def train_intents_command(
    data: Annotated[
        Path | None, typer.Option(help="Training CSV (text,category); default ../shared BANKING77 train.csv.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint folder to write.")] = Path("models/intent-router"),
    config: Annotated[
        Path | None, typer.Option(help="YAML with intent_model/train/intent_train sections.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the number of epochs.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N rows (smoke runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the model card as JSON.")] = False,
) -> None:
    """Train the MoE intent router (reproduces models/intent-router from BANKING77's train.csv)."""
    from apps.customer_service.intents import (
        DEFAULT_CONFIG,
        IntentModelConfig,
        IntentTrainConfig,
        default_training_csv,
        train_intent_router,
    )
    from core.training import TrainConfig

    source = config or DEFAULT_CONFIG
    try:
        model_cfg = IntentModelConfig.from_yaml(source)
        train_cfg = TrainConfig.from_yaml(source)
        intent_cfg = IntentTrainConfig.from_yaml(source)
        if epochs is not None:
            train_cfg.epochs = epochs
            train_cfg.__post_init__()

        def show(row: dict[str, float]) -> None:
            typer.echo(
                f"epoch {int(row['epoch'])}: loss {row['train_loss']:.4f}  val accuracy {row['accuracy']:.4f}"
                f"  macro F1 {row['macro_f1']:.4f}  ({row['seconds']:.0f} s)",
                err=True,
            )

        card = train_intent_router(
            data or default_training_csv(),
            out,
            model_config=model_cfg,
            train_config=train_cfg,
            intent_config=intent_cfg,
            on_epoch=show,
            limit=limit,
        )
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(card))
        return
    metrics = card["metrics"]
    print(f"wrote {out} (val accuracy {metrics['val_accuracy']}, best epoch {metrics['best_epoch']})")


@cs_app.command("eval")
def eval_command(
    qa: Annotated[
        Path,
        typer.Option(
            "--qa", help="CSV: question plus answer_id (ids or file names, '|'-separated) or answer."
        ),
    ],
    index: Annotated[
        Path | None, typer.Option("--index", help="Index folder (default: the shipped KB).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recall@1/5/10 and MRR of the hybrid retriever on question -> answer pairs."""
    from apps.customer_service.evaluation import evaluate_qa, read_qa_csv
    from apps.customer_service.service import open_index

    try:
        pairs = read_qa_csv(qa)
        metrics = evaluate_qa(pairs, open_index(index))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc).splitlines()[0])
    if as_json:
        print(json.dumps(metrics))
        return
    print(
        f"recall@1 {metrics['recall_at_1']:.4f}  recall@5 {metrics['recall_at_5']:.4f}  "
        f"recall@10 {metrics['recall_at_10']:.4f}  MRR {metrics['mrr']:.4f}  n {metrics['n']}"
    )
