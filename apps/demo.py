"""``fathom demo``: every app on its embedded defaults, one timed step each, then the UI.

Steps (each timed; a failing step is reported and the others still run):

- **customer service**: the assistant answers ``apps/customer_service/sample_questions.txt`` (the code
  ``fathom cs ask --batch`` runs) into ``cs-answers.jsonl``.
- **fraud**: ``days`` of simulated card transactions (``fathom fraud simulate``) scored by the shipped
  fraud model into a scores file and an alert store (``fathom fraud score --alerts``); the top alerts.
- **nodule**: a synthetic chest CT (``fathom nodule phantoms``) analysed into DICOM SEG, SR and a
  report (``fathom nodule detect``); without a model the step says "model not installed".

Everything goes under ``--out`` (default ``results/``), with ``demo.json`` summarising the run; then the
Streamlit UI starts (``fathom ui``) unless ``--no-ui``.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

SAMPLE_QUESTIONS = Path(__file__).resolve().parent / "customer_service" / "sample_questions.txt"
NODULE_MODEL = "nodule-detector"
TOP_ALERTS = 5
PHANTOM_SEED = 2026
STATUSES = ("ok", "failed", "model not installed")


@dataclass
class StepResult:
    """One step of the demo.

    Args:
        name: ``customer_service``, ``fraud`` or ``nodule``.
        status: ``ok``, ``failed`` or ``model not installed``.
        seconds: Wall time of the step.
        summary: One line for the table.
        outputs: What the step wrote: label -> path.
        details: Step-specific JSON-ready results (answers, top alerts, nodules).
        error: ``ExceptionType: message`` when the step failed.
    """

    name: str
    status: str = "ok"
    seconds: float = 0.0
    summary: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ModelNotInstalled(FileNotFoundError):
    """The step's model folder does not exist."""


# --- the steps -------------------------------------------------------------------------------------------
def customer_service_step(out: Path, questions_file: Path = SAMPLE_QUESTIONS) -> StepResult:
    """Answer every line of ``questions_file`` (as ``fathom cs ask --batch``) into ``cs-answers.jsonl``."""
    from apps.customer_service.cli import _assistant

    result = StepResult("customer_service")
    questions = [line.strip() for line in questions_file.read_text(encoding="utf-8").splitlines()]
    questions = [q for q in questions if q]
    if not questions:
        raise ValueError(f"{questions_file} holds no questions")
    assistant = _assistant(None, None, None, None)
    answers = [{"question": q, **assistant.ask(q).public()} for q in questions]
    path = out / "cs-answers.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
    cited = sum(1 for a in answers if a["sources"])
    handoffs = sum(1 for a in answers if a["handoff"])
    result.summary = f"{len(answers)} questions answered, {cited} with citations, {handoffs} handed off"
    result.outputs = {"answers": str(path)}
    result.details = {
        "n_questions": len(answers),
        "n_cited": cited,
        "n_handoffs": handoffs,
        "answers": [
            {
                "question": a["question"],
                "answer": a["answer"],
                "sources": [s["title"] for s in a["sources"]],
                "intent": a["intent"]["label"],
                "handoff": a["handoff"]["reason"] if a["handoff"] else None,
            }
            for a in answers
        ],
    }
    return result


def fraud_step(
    out: Path,
    days: int = 21,
    n_customers: int = 200,
    n_terminals: int = 400,
    seed: int = 0,
    model_dir: Path | None = None,
    top: int = TOP_ALERTS,
) -> StepResult:
    """Simulate ``days`` of transactions, score them into scores + alert store; the top alerts."""
    from apps.fraud.alerts import AlertStore
    from apps.fraud.service import FraudScorer, alerts_from_frame
    from apps.fraud.simulate import simulate

    result = StepResult("fraud")
    df = simulate(n_customers, n_terminals, days, seed=seed)
    transactions = out / "fraud-transactions.csv"
    df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat())).to_csv(transactions, index=False)
    scorer = FraudScorer.load(model_dir)
    scored = scorer.score_frame(df)
    scores = out / "fraud-scores.csv"
    scored.assign(timestamp=scored["timestamp"].map(lambda t: t.isoformat())).to_csv(scores, index=False)
    alerts_db = out / "fraud-alerts.db"
    with AlertStore.open(alerts_db) as store:
        new = store.add_many(alerts_from_frame(scored, scorer))
        queue = store.queue(status="open", limit=top, order="score")
        n_open = store.count("open")
    top_alerts = [
        {
            "transaction_id": a.transaction_id,
            "card": a.customer_id,
            "terminal": a.terminal_id,
            "amount": round(float(a.amount), 2),
            "timestamp": a.timestamp.isoformat(),
            "score": round(float(a.score), 4),
        }
        for a in queue
    ]
    n_alerts = int(scored["alert"].sum())
    result.summary = (
        f"{len(df)} transactions ({int(df['label'].sum())} fraud) over {days} days; "
        f"{n_alerts} alerts at threshold {scorer.threshold:.3f}"
    )
    result.outputs = {"transactions": str(transactions), "scores": str(scores), "alerts": str(alerts_db)}
    result.details = {
        "n_transactions": len(df),
        "n_fraud": int(df["label"].sum()),
        "n_alerts": n_alerts,
        "new_alerts": new,
        "open_alerts": n_open,
        "threshold": scorer.threshold,
        "model": scorer.name,
        "top_alerts": top_alerts,
    }
    return result


def nodule_model_dir(model_dir: Path | None) -> Path:
    """``model_dir``, else ``$FATHOM_NODULE_MODEL``, else the shipped ``models/nodule-detector``."""
    from core.config import models_dir

    if model_dir is not None:
        return model_dir
    env = os.environ.get("FATHOM_NODULE_MODEL", "").strip()
    return Path(env) if env else models_dir(NODULE_MODEL)


def nodule_step(
    out: Path, size: str = "default", model_dir: Path | None = None, seed: int = PHANTOM_SEED
) -> StepResult:
    """Write one phantom chest CT of ``size``; analyse it into SEG/SR/report when a model is installed."""
    from apps.nodule.dicom_writer import write_phantom
    from apps.nodule.phantoms import PhantomConfig, make_phantom, phantom_seed

    result = StepResult("nodule")
    study = out / "nodule-study" / "phantom_000"
    phantom = make_phantom(PhantomConfig.named(size), phantom_seed(seed, 0))
    truth = write_phantom(phantom, study, patient_id=f"PHANTOM-{seed}-000")
    result.outputs = {"study": str(study / "dicom")}
    result.details = {"size": size, "shape_zyx": truth["shape_zyx"], "true_nodules": len(truth["nodules"])}
    model = nodule_model_dir(model_dir)
    if not (model / "model_card.json").is_file() and not (model / "model.safetensors").is_file():
        result.status = "model not installed"
        result.summary = (
            f"study written ({len(truth['nodules'])} true nodules); model not installed: no model in "
            f"{model} (train one with `fathom nodule train`, or pass --nodule-model DIR)"
        )
        return result
    from apps.nodule.pipeline import analyse

    analysis = analyse(study / "dicom", out / "nodule", model_dir=model).to_json()
    result.outputs.update({k: v for k, v in analysis["outputs"].items() if v})
    found = analysis["nodules"]
    result.summary = (
        f"{len(found)} nodule(s) found ({len(truth['nodules'])} in the phantom) in "
        f"{'x'.join(map(str, truth['shape_zyx']))} voxels"
    )
    result.details.update(
        {
            "model": str(model),
            "nodules": found,
            "notes": analysis["notes"],
            "series_uid": analysis["series_uid"],
        }
    )
    return result


def timed(name: str, fn: Callable[[], StepResult]) -> StepResult:
    """Run one step, timing it; an exception becomes a failed step with its message."""
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:  # a demo step's failure must not stop the others
        result = StepResult(name, status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        result.summary = result.error or "failed"
        result.details = {"traceback": traceback.format_exc(limit=8)}
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def run_demo(
    out: Path,
    *,
    questions: Path = SAMPLE_QUESTIONS,
    days: int = 21,
    n_customers: int = 200,
    n_terminals: int = 400,
    fraud_model: Path | None = None,
    phantom_size: str = "default",
    nodule_model: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the three steps into ``out``; write and return ``demo.json``'s content."""
    out.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, str, Callable[[], StepResult]]] = [
        ("customer_service", "answering the sample questions", lambda: customer_service_step(out, questions)),
        (
            "fraud",
            f"simulating {days} days of transactions and scoring them",
            lambda: fraud_step(out, days, n_customers, n_terminals, model_dir=fraud_model),
        ),
        (
            "nodule",
            f"writing a {phantom_size} chest CT phantom and analysing it",
            lambda: nodule_step(out, phantom_size, nodule_model),
        ),
    ]
    started = time.perf_counter()
    results = []
    for name, what, fn in steps:
        if progress is not None:
            progress(what)
        results.append(timed(name, fn))
    data = {
        "out": str(out),
        "seconds": round(time.perf_counter() - started, 2),
        "ok": all(r.status != "failed" for r in results),
        "steps": [asdict(r) for r in results],
    }
    (out / "demo.json").write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return data


# --- the command -------------------------------------------------------------------------------------------
def summary_table(data: dict[str, Any]) -> Table:
    """The rich table ``fathom demo`` prints: one row per step, with where its results are."""
    table = Table(title=f"fathom demo ({data['seconds']:.1f} s) -> {data['out']}/demo.json")
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("result")
    table.add_column("written")
    colours = {"ok": "green", "failed": "red", "model not installed": "yellow"}
    for step in data["steps"]:
        colour = colours.get(step["status"], "white")
        written = "\n".join(f"{k}: {v}" for k, v in step["outputs"].items())
        table.add_row(
            step["name"],
            f"[{colour}]{step['status']}[/{colour}]",
            f"{step['seconds']:.1f}",
            step["summary"],
            written,
        )
    return table


def alerts_table(data: dict[str, Any]) -> Table | None:
    """The top alerts of the fraud step, or None when it has none."""
    fraud = next((s for s in data["steps"] if s["name"] == "fraud"), None)
    top = (fraud or {}).get("details", {}).get("top_alerts") or []
    if not top:
        return None
    table = Table(title=f"top {len(top)} fraud alerts")
    for col in ("transaction", "card", "terminal", "amount", "time", "score"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("amount", "score") else "left")
    for a in top:
        table.add_row(
            a["transaction_id"],
            a["card"],
            a["terminal"],
            f"{a['amount']:.2f}",
            a["timestamp"],
            f"{a['score']:.3f}",
        )
    return table


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for every result and demo.json.")] = Path(
        "results"
    ),
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the UI afterwards.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print demo.json to stdout.")] = False,
    days: Annotated[int, typer.Option(help="Days of simulated transactions (>= 3).")] = 21,
    customers: Annotated[int, typer.Option(help="Simulated cards (>= 10).")] = 200,
    terminals: Annotated[int, typer.Option(help="Simulated terminals (>= 10).")] = 400,
    fraud_model: Annotated[
        Path | None, typer.Option("--fraud-model", help="Fraud model folder (default: the shipped one).")
    ] = None,
    phantom_size: Annotated[
        str, typer.Option(help="Chest CT phantom size: tiny, small, medium or default (512).")
    ] = "default",
    nodule_model: Annotated[
        Path | None,
        typer.Option("--nodule-model", help="Nodule model folder (default: models/nodule-detector)."),
    ] = None,
    questions: Annotated[
        Path, typer.Option(help="Questions for the assistant, one a line.")
    ] = SAMPLE_QUESTIONS,
    host: Annotated[str, typer.Option(help="UI interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="UI TCP port.")] = 8501,
) -> None:
    """Run every app on its embedded defaults (assistant, fraud alerts, nodule CT), then open the UI."""
    err = Console(stderr=True)
    if phantom_size not in ("tiny", "small", "medium", "default"):
        typer.echo(
            f"error: --phantom-size must be tiny, small, medium or default, got {phantom_size!r}", err=True
        )
        raise typer.Exit(code=2)
    if not questions.is_file():
        typer.echo(f"error: --questions {questions} does not exist", err=True)
        raise typer.Exit(code=2)
    if out.exists() and not out.is_dir():
        typer.echo(f"error: --out {out} exists and is not a folder", err=True)
        raise typer.Exit(code=2)
    with err.status("fathom demo") as status:
        data = run_demo(
            out,
            questions=questions,
            days=days,
            n_customers=customers,
            n_terminals=terminals,
            fraud_model=fraud_model,
            phantom_size=phantom_size,
            nodule_model=nodule_model,
            progress=lambda what: status.update(f"fathom demo: {what}"),
        )
    show = err if as_json else Console() if Console().is_terminal else Console(width=160)
    show.print(summary_table(data))
    alerts = alerts_table(data)
    if alerts is not None:
        show.print(alerts)
    for step in data["steps"]:
        if step["status"] == "failed":
            show.print(f"[red]{step['name']} failed:[/red] {step['error']}")
    show.print(f"summary written to {out / 'demo.json'}")
    if as_json:
        print(json.dumps(data, default=str))
    code = 0 if data["ok"] else 1
    if not no_ui:
        from apps.ui import launch

        # the UI's pages show this run: its alert store, its nodule model
        os.environ.setdefault("FATHOM_FRAUD_ALERTS", str((out / "fraud-alerts.db").resolve()))
        if nodule_model is not None:
            os.environ.setdefault("FATHOM_NODULE_MODEL", str(nodule_model.resolve()))
        show.print(f"starting the UI on http://{host}:{port} (Ctrl+C stops it)")
        try:
            ui_code = launch(host, port)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None
        code = code or ui_code
    raise typer.Exit(code=code)
