"""``fathom fraud``: the fraud commands (simulate, train, evaluate, score, stream, drift)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

fraud_app = typer.Typer(
    help="Fraud: train, evaluate, batch and stream scoring, simulated transactions.", no_args_is_help=True
)

OUT_SUFFIXES = (".csv", ".csv.gz", ".parquet")
# options shared by evaluate, score and stream
ModelOption = Annotated[Path | None, typer.Option("--model", help="Model folder (default: the shipped one).")]
HistoryOption = Annotated[
    Path | None, typer.Option("--history", help="Earlier transactions: features and graph only.")
]
ThresholdOption = Annotated[float | None, typer.Option(help="Alert threshold (default: the model card's).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@fraud_app.callback()
def _main() -> None:
    """Fraud: train, evaluate, batch and stream scoring, simulated transactions."""


@fraud_app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="File to write: .csv, .csv.gz or .parquet.")],
    n_customers: Annotated[int, typer.Option(help="Number of cards (>= 10).")] = 200,
    n_terminals: Annotated[int, typer.Option(help="Number of terminals (>= 10).")] = 400,
    days: Annotated[int, typer.Option(help="Days simulated (>= 3).")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same file.")] = 0,
    fraud_rate: Annotated[float, typer.Option(help="Target fraction of fraud, in [0, 0.5).")] = 0.01,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = "2024-01-01",
) -> None:
    """Simulate card transactions with five fraud typologies and write them to a file."""
    from apps.fraud.simulate import simulate

    if not out.name.lower().endswith(OUT_SUFFIXES):
        _fail(f"--out {out} must end with {', '.join(OUT_SUFFIXES)}")
    if not out.parent.is_dir():
        _fail(f"folder {out.parent} does not exist")
    try:
        df = simulate(n_customers, n_terminals, days, start=start, seed=seed, fraud_rate=fraud_rate)
    except ValueError as exc:
        _fail(str(exc))
    if out.name.lower().endswith(".parquet"):
        df.to_parquet(out, index=False)
    else:
        df.assign(timestamp=df["timestamp"].map(lambda t: t.isoformat())).to_csv(out, index=False)
    frauds = int(df["label"].sum())
    print(f"wrote {len(df)} transactions ({frauds} fraud, {frauds / max(len(df), 1):.2%}) to {out}")


def _load(path: Path, what: str = "--transactions"):
    from apps.fraud.data import load_transactions

    try:
        return load_transactions(path)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"{what}: {str(exc).splitlines()[0]}")


def _progress(total: int, label: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="tx", unit_scale=True, leave=False, file=sys.stderr)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


@fraud_app.command("train")
def train_command(
    transactions: Annotated[
        Path, typer.Option("--transactions", help="Labelled transactions (CSV/Parquet).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the weights and model card.")],
    until: Annotated[
        str | None, typer.Option("--until", help="Use transactions up to this day (YYYY-MM-DD) only.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (default: the config's).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML with fraud_train: and model: sections.")
    ] = None,
    baselines: Annotated[bool, typer.Option(help="Also fit LR, RF and xgboost on the same rows.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train the LSTM + GNN fraud model (early stopping on validation average precision)."""
    from apps.fraud.model import FraudModelConfig
    from apps.fraud.train import FraudTrainConfig, train
    from core.training import file_sha256

    try:
        cfg = FraudTrainConfig.from_yaml(config) if config else FraudTrainConfig()
        mcfg = FraudModelConfig.from_yaml(config) if config else FraudModelConfig()
        if epochs is not None:
            cfg.epochs = epochs
        cfg.baselines = baselines
        if until is not None:
            _date(until, "--until")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        _fail(str(exc))
    df = _load(transactions)

    def show(row: dict) -> None:
        typer.echo(
            f"epoch {int(row['epoch'])}: loss {row['train_loss']:.4f}  "
            f"val AP {row['average_precision']:.4f}  "
            f"AUC {row['auc_roc']:.4f}  CP@100 {row['card_precision_at_100']:.4f}  ({row['seconds']} s)",
            err=True,
        )

    try:
        report = train(
            df,
            cfg,
            mcfg,
            out_dir=out,
            until=until,
            data_files={transactions.name: file_sha256(transactions)},
            on_epoch=show,
            progress=_progress(len(df), "features"),
        )
    except ValueError as exc:
        _fail(str(exc))
    summary = {
        "out": str(report.out_dir),
        "best_epoch": report.best_epoch,
        "n_train": report.n_train,
        "n_val": report.n_val,
        "val": report.val,
        "baselines": report.baselines,
        "seconds": report.seconds,
    }
    if as_json:
        print(json.dumps(summary))
        return
    print(
        f"saved {report.out_dir} (best epoch {report.best_epoch}; "
        f"{report.n_train} train, {report.n_val} val rows)"
    )
    for row in report.quality_table():
        print(
            f"  {row['impl']:<20} AUC {row['auc_roc']:.4f}  AP {row['average_precision']:.4f}  "
            f"CP@100 {row['card_precision_at_100']:.4f}"
        )


def _date(text: str, option: str) -> None:
    import datetime as dt

    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


def _scorer(model: Path | None, threshold: float | None = None, explain: bool = True):
    from apps.fraud.service import FraudScorer

    try:
        return FraudScorer.load(model, threshold=threshold, explain=explain)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))


@fraud_app.command("evaluate")
def evaluate_command(
    transactions: Annotated[Path, typer.Option("--transactions", help="Labelled transactions to score.")],
    model: ModelOption = None,
    history: HistoryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """AUC-ROC, average precision and card precision@100 per day on labelled transactions."""
    from apps.fraud.evaluate import metrics

    scorer = _scorer(model, explain=False)
    df = _load(transactions)
    if df["label"].isna().any():
        _fail(f"--transactions {transactions}: every transaction needs a label to evaluate")
    earlier = _load(history, "--history") if history is not None else None
    if earlier is not None and len(earlier) and earlier["timestamp"].max() > df["timestamp"].min():
        _fail("--history must end before the first transaction of --transactions")
    try:
        scored = scorer.score_frame(df, history=earlier, progress=_progress(len(df), "scoring"))
    except ValueError as exc:
        _fail(str(exc))
    times = scored["timestamp"].astype("int64").to_numpy() / 1e9 if len(scored) else []
    result = metrics(
        df["label"].astype(bool).to_numpy(),
        scored["score"].to_numpy(),
        times,
        scored["customer_id"].to_numpy(),
    )
    out = {
        "auc_roc": result["auc_roc"],
        "average_precision": result["average_precision"],
        "card_precision_at_100": result["card_precision_at_100"],
        "n_transactions": result["n_transactions"],
        "n_fraud": result["n_fraud"],
        "model": scorer.name,
    }
    if as_json:
        print(json.dumps(out))
        return
    for key, value in out.items():
        print(f"{key}: {value}")


@fraud_app.command("score")
def score_command(
    transactions: Annotated[
        Path, typer.Option("--transactions", help="Transactions to score (CSV/Parquet).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Scores file: .csv, .csv.gz or .parquet.")],
    engine: Annotated[str, typer.Option(help="local (in-process) or ray (Ray Data workers).")] = "local",
    model: ModelOption = None,
    history: HistoryOption = None,
    alerts: Annotated[
        str | None, typer.Option("--alerts", help="Alert store: SQLite path or SQLAlchemy URL.")
    ] = None,
    threshold: ThresholdOption = None,
    chunk_size: Annotated[int, typer.Option(help="Rows per model chunk.")] = 32_768,
) -> None:
    """Batch scoring: file -> features -> model -> scores file (and alerts)."""
    from apps.fraud.service import alerts_from_frame

    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, not {engine!r}")
    if not out.name.lower().endswith(OUT_SUFFIXES):
        _fail(f"--out {out} must end with {', '.join(OUT_SUFFIXES)}")
    if not out.parent.is_dir():
        _fail(f"folder {out.parent} does not exist")
    scorer = _scorer(model, threshold)
    df = _load(transactions)
    earlier = _load(history, "--history") if history is not None else None
    try:
        scored = scorer.score_frame(
            df, history=earlier, progress=_progress(len(df), "scoring"), engine=engine, chunk=chunk_size
        )
    except ValueError as exc:
        _fail(str(exc))
    written = scored.assign(timestamp=scored["timestamp"].map(lambda t: t.isoformat()))
    if out.name.lower().endswith(".parquet"):
        scored.to_parquet(out, index=False)
    else:
        written.to_csv(out, index=False)
    n_alerts = int(scored["alert"].sum())
    new = 0
    if alerts is not None:
        from apps.fraud.alerts import AlertStore

        with AlertStore.open(alerts) as store:
            new = store.add_many(alerts_from_frame(scored, scorer))
    where = f"; {new} new in {alerts}" if alerts else ""
    print(
        f"scored {len(scored)} transactions into {out}: "
        f"{n_alerts} alerts at threshold {scorer.threshold:.3f}{where}"
    )


@fraud_app.command("stream")
def stream_command(
    source: Annotated[str, typer.Option("--source", help="file://, redis:// or kafka:// source URL.")],
    sink: Annotated[
        str, typer.Option("--sink", help="Scores: sqlite:///..., redis://...?hash=, kafka://...?topic=")
    ],
    alerts: Annotated[
        str, typer.Option("--alerts", help="Alert store: SQLite path or SQLAlchemy URL.")
    ] = "alerts.db",
    dead_letters: Annotated[
        str | None, typer.Option("--dead-letters", help="Dead-letter URL (default: beside the sink).")
    ] = None,
    model: ModelOption = None,
    state: Annotated[
        Path | None, typer.Option("--state", help="Feature state JSON: loaded if present, saved at the end.")
    ] = None,
    threshold: ThresholdOption = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Stop after this many idle seconds (default: never for servers).")
    ] = None,
    max_messages: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    threads: Annotated[
        int, typer.Option(help="Torch threads (1: a transaction is a batch of one; scale with consumers).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's counts as JSON.")] = False,
) -> None:
    """Real-time scoring: a transaction stream -> scores + alerts (at-least-once, dead letters)."""
    import torch

    from apps.fraud.service import FraudScorer
    from apps.fraud.streaming import stream
    from connectors.streams import StreamError

    if threads < 1:
        _fail(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)

    try:
        scorer = FraudScorer.load(model, threshold=threshold, state_path=state)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if idle_timeout is None and source.startswith("file://"):
        idle_timeout = 1.0
    try:
        stats = stream(
            scorer,
            source,
            sink,
            alerts=alerts,
            dead_letter_url=dead_letters,
            idle_timeout=idle_timeout,
            max_messages=max_messages,
            state_path=state,
        )
    except (StreamError, ValueError) as exc:
        _fail(str(exc))
    out = {
        "read": stats.read,
        "scored": stats.scored,
        "dead_lettered": stats.dead_lettered,
        "duplicates": stats.duplicates,
        "reasons": dict(stats.reasons),
    }
    if as_json:
        print(json.dumps(out))
        return
    print(
        f"read {stats.read}: scored {stats.scored}, dead-lettered {stats.dead_lettered}, "
        f"duplicates {stats.duplicates}; alerts in {alerts}"
    )


@fraud_app.command("drift")
def drift_command(
    reference: Annotated[
        Path, typer.Option("--reference", help="Transactions of a period the model is trusted on.")
    ],
    current: Annotated[Path, typer.Option("--current", help="Transactions to check against it.")],
    window: Annotated[str, typer.Option(help="Report windows of the current file: 1D, 6h, 7D...")] = "1D",
    warmup_days: Annotated[
        float, typer.Option(help="First days of a fresh feature state that only build it.")
    ] = 0.0,
    model: ModelOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    fail_on_alert: Annotated[
        bool, typer.Option("--fail-on-alert", help="Exit with code 1 when any feature alerts.")
    ] = False,
) -> None:
    """Drift (PSI, KS) of the features, scores and alert rate of --current against --reference."""
    from apps.fraud.drift import fraud_drift

    scorer = _scorer(model, explain=False)
    ref_df = _load(reference, "--reference")
    cur_df = _load(current, "--current")
    try:
        result = fraud_drift(
            ref_df,
            cur_df,
            scorer=scorer,
            window=window,
            warmup_days=warmup_days,
            progress=_progress(len(ref_df) + len(cur_df), "features"),
        )
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        overall = result.overall
        print(
            f"drift of {current.name} ({overall.n_current} tx) against {reference.name} "
            f"({overall.n_reference} tx), model {result.model}: {result.status.upper()}"
        )
        print(
            f"alert rate {result.reference_alert_rate:.2%} -> {result.current_alert_rate:.2%} "
            f"at threshold {result.threshold:.3f}"
        )
        print(f"  {'feature':<22} {'PSI':>8} {'KS':>7} {'p-value':>9}  status")
        for row in overall.features:
            print(
                f"  {row.feature:<22} {row.psi:>8.3f} {row.ks_statistic:>7.3f} {row.ks_p_value:>9.2g}  "
                f"{row.status}{'' if row.status == 'ok' else ': ' + row.reason}"
            )
        print(f"per {window}:")
        for item in result.windows_frame().itertuples():
            flagged = f"; alerts: {item.alerts}" if item.alerts else ""
            print(
                f"  {item.window_start:%Y-%m-%d %H:%M} {item.n:>7} tx  {item.status:<5}  "
                f"alert rate {item.alert_rate:.2%}{flagged}"
            )
    if fail_on_alert and result.any_alert:
        raise typer.Exit(code=1)
