"""``fathom cs``: the customer-service commands (ingest and search so far)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

cs_app = typer.Typer(help="Customer service: knowledge-base ingestion and search.", no_args_is_help=True)


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
