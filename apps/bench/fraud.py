"""``fathom bench fraud``: batch throughput, streaming latency and detection quality of the fraud app.

Three sections, in one run:

``batch``
    Transactions/s end to end: a transactions file (the sample written to a temporary CSV first) read
    with ``load_transactions`` and scored with ``FraudScorer.score_frame(df, explain_alerts=False)``
    from a fresh feature state. One untimed warm-up, then the median of ``batch_repeats`` runs. The
    split per stage: ``load`` (CSV -> canonical frame), ``features+graph`` (``scorer.prepare``, summed
    over the chunks: the sequential feature pass and the day graphs) and ``model`` (the rest of
    ``score_frame``: the model over each chunk of days after its feature pass, and the output
    frame). Data: the first ``n_batch`` rows of the
    handbook (``../shared/data/fraud-handbook``) when present, else ``simulate``.
``stream``
    Latency per transaction through Redis Streams. A throwaway ``redis-server`` (no persistence) is
    started on 127.0.0.1 when it is on PATH; the scorer's state is fed the rows before the last
    ``n_stream`` (so cards and terminals are known), then a producer *process* ``XADD``s the last
    ``n_stream`` rows at a steady ``stream_rate`` per second while ``streaming.stream`` consumes them
    (consumer group source, Redis hash sink). Latency = the time ``on_result`` saw the score minus the
    time just before that message's ``XADD``, on the same monotonic clock. Why paced, and why a process:
    a backlog pushed before the consumer starts measures queueing (message i waits for the i-1 before
    it), not the latency a live feed sees; a producer thread would compete with the consumer for the
    GIL and delay its own ``XADD`` after taking the timestamp. ``on_result`` runs just before the
    sink's ``HSETNX``, so that one local round trip is not in the figure; it is reported as its own
    row. The first ``stream_warmup`` messages (connection set-up, the first day graph's embedding) are
    sent first and left out; the paced ones start once the consumer has written those.
    The pure scorer latency (``score_one`` alone, same history, same rows) is reported beside it.
    The consumer runs with ``torch.set_num_threads(1)``: one transaction is a batch of one, too small
    for intra-op threads to pay for their hand-offs, and a streaming worker is scaled by running more
    consumers in the group, not more threads per consumer (the previous setting is restored after).
``quality``
    Ours and the three baselines (logistic regression, random forest, XGBoost on the same engineered
    features) trained by ``train`` in this run and scored on the same validation window: the
    handbook's protocol. AUC-ROC, average precision and card precision@100 (``apps.fraud.evaluate``).
    On the handbook this is all four months by default (slow: about 15-25 min on 2 cores).

Targets: batch >= 20,000 transactions/s; streaming p99 <= 20 ms; our average precision and our card
precision@100 above the best baseline's.

The model is ``model_dir`` (default the shipped ``models/fraud-detector``). When it is missing, the
quality section's model is used (it trains one), else a model is trained here on the first
``train_days`` days; the report says which (``environment.model``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from apps.bench.common import Report
from apps.fraud.batch import prepare
from apps.fraud.data import load_handbook, load_transactions
from apps.fraud.evaluate import quality_table
from apps.fraud.model import FraudModelConfig
from apps.fraud.service import FraudScorer
from apps.fraud.simulate import simulate
from apps.fraud.streaming import stream
from apps.fraud.train import FraudTrainConfig, default_model_dir, load_model, train
from connectors.streams.schema import parse_transaction
from core.training import read_card

HANDBOOK = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fraud-handbook"
BATCH_TARGET = 20_000.0  # transactions/s
STREAM_P99_TARGET_MS = 20.0
BATCH_TARGET_NAME = "batch transactions/s (load + features + graph + model)"
STREAM_TARGET_NAME = "streaming p99 latency through Redis Streams (ms)"
AP_TARGET_NAME = "average precision: fathom vs best baseline"
CP_TARGET_NAME = "card precision@100: fathom vs best baseline"
QUALITY_KEYS = ("auc_roc", "average_precision", "card_precision_at_100")

Progress = Callable[[str], None]

# The producer: a separate interpreter with only redis imported (see the module docstring).
# argv: url stream rows.json times.json rate warmup sink-hash. Writes [[transaction_id, send time], ...].
# The first ``warmup`` messages go at once; it then waits until the consumer has written them (its
# start-up and first graph embedding are behind it) before sending the rest at ``rate``.
PRODUCER = """
import json, sys, time
import redis
url, stream, rows_path, out_path, rate, warmup, sink = sys.argv[1:8]
rows, warmup = json.load(open(rows_path)), int(warmup)
client = redis.Redis.from_url(url, decode_responses=True)
sent = []
for row in rows[:warmup]:
    sent.append([row["transaction_id"], time.monotonic()])
    client.xadd(stream, row)
deadline = time.monotonic() + 120
while warmup and client.hlen(sink) < warmup and time.monotonic() < deadline:
    time.sleep(0.01)
start = time.monotonic() + 0.1
for i, row in enumerate(rows[warmup:]):
    pause = start + i / float(rate) - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    t = time.monotonic()
    client.xadd(stream, row)
    sent.append([row["transaction_id"], t])
json.dump(sent, open(out_path, "w"))
"""


def run(
    *,
    data: str | Path | None = None,
    n_batch: int = 200_000,
    n_stream: int = 2_000,
    stream_rate: float = 500.0,
    stream_warmup: int = 100,
    batch_repeats: int = 3,
    quality: bool = True,
    quality_from: str | Path | None = None,
    quality_rows: int | None = None,
    epochs: int | None = None,
    train_config: FraudTrainConfig | None = None,
    model_config: FraudModelConfig | None = None,
    model_dir: str | Path | None = None,
    train_days: int = 60,
    seed: int = 0,
    json_path: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the fraud benchmark (see the module docstring) and return its report as a dict.

    Args:
        data: the handbook folder or a transactions file (CSV/CSV.gz/Parquet, with labels for
            ``quality``); default the handbook when present, else simulated data.
        n_batch: transactions in the batch section (the first ``n_batch`` rows).
        n_stream: transactions sent through Redis (the last ``n_stream`` of the batch sample; the
            rows before them are the history). ``0`` skips the section.
        stream_rate: messages per second the producer sends.
        stream_warmup: first results left out of the streaming latency.
        batch_repeats: timed batch runs (after one untimed warm-up); the median is reported.
        quality: train ours and the baselines and compare them.
        quality_from: instead of training here, report the table ``fathom fraud train`` recorded
            in this model folder's card (ours and the baselines, trained in that run on the same
            split); its folder is also the model timed, unless ``model_dir`` says otherwise.
        quality_rows: first rows of the data the quality section trains on (default all of it).
        epochs: override ``train_config.epochs`` (quality and the fallback model).
        train_config, model_config: of the quality training (default: the shipped defaults).
        model_dir: the model to time (default ``models/fraud-detector``; trained here when missing).
        train_days: days of data the fallback model is trained on (when no model and no quality).
        seed: of the simulated data.
        json_path: also write the report there.
        progress: called with a short message before each step.

    Returns:
        The report (``benchmark``, ``created``, ``environment``, ``results``, ``targets``).
    """
    if n_batch < 2 or n_stream < 0 or n_stream >= n_batch:
        raise ValueError(f"need 2 <= n_batch and 0 <= n_stream < n_batch, got {n_batch}, {n_stream}")
    if stream_rate <= 0 or batch_repeats < 1 or stream_warmup < 0:
        raise ValueError("stream_rate must be > 0, batch_repeats >= 1 and stream_warmup >= 0")
    say = progress or (lambda _msg: None)
    report = Report("fraud", "cpu")
    source = Path(data) if data is not None else (HANDBOOK if HANDBOOK.is_dir() else None)
    report.settings["data"] = str(source) if source is not None else f"simulate(seed={seed})"
    report.settings["stream"] = {
        "rate_per_s": stream_rate,
        "warmup_left_out": stream_warmup,
        "torch_threads": 1,
    }
    cfg = train_config or FraudTrainConfig()
    if epochs is not None:
        cfg = FraudTrainConfig(**{**cfg.__dict__, "epochs": epochs})

    with tempfile.TemporaryDirectory(prefix="fathom-bench-fraud-") as tmp:
        work = Path(tmp)
        trained_dir: Path | None = None
        if quality_from is not None:
            say(f"quality: the table recorded in {quality_from}")
            quality_from_card(report, quality_from)
            model_dir = model_dir if model_dir is not None else quality_from
        elif quality:
            say("quality: training ours and the baselines on the same split")
            trained_dir = bench_quality(report, _frame(source, quality_rows, seed), cfg, model_config, work)
        model, card, how = _model(model_dir, trained_dir, source, train_days, cfg, model_config, seed, work)
        report.settings["model"] = how
        say(f"batch: {n_batch} transactions")
        sample = _frame(source, n_batch, seed)
        bench_batch(report, model, card, sample, batch_repeats, work, say)
        if n_stream:
            say(f"stream: {n_stream} transactions through Redis Streams at {stream_rate:g}/s")
            bench_stream(report, model, card, sample, n_stream, stream_rate, stream_warmup, work, say)
    out = report.to_dict()
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _frame(source: Path | None, nrows: int | None, seed: int) -> pd.DataFrame:
    """The first ``nrows`` transactions of ``source`` (or of a simulation big enough for them)."""
    if source is None:
        days = 60 if nrows is None else max(40, -(-nrows // 2_400))  # ~2,400 tx/day at 2,000 cards
        df = simulate(n_customers=2_000, n_terminals=4_000, days=days, seed=seed, fraud_rate=0.01)
        return df if nrows is None else df.iloc[:nrows].reset_index(drop=True)
    if source.is_dir():
        return load_handbook(source, nrows=nrows)
    return load_transactions(source, nrows=nrows)


def _model(
    model_dir: str | Path | None,
    trained_dir: Path | None,
    source: Path | None,
    train_days: int,
    cfg: FraudTrainConfig,
    model_config: FraudModelConfig | None,
    seed: int,
    work: Path,
) -> tuple[Any, dict[str, Any], str]:
    """The model to time, its card and a sentence saying where it came from."""
    if model_dir is not None:
        model, card = load_model(model_dir)
        return model, card, str(model_dir)
    wanted = default_model_dir()
    try:
        model, card = load_model(wanted)
        return model, card, str(wanted)
    except FileNotFoundError:
        pass
    if trained_dir is not None:
        model, card = load_model(trained_dir)
        return model, card, f"{wanted} is missing: timed the model the quality section trained in this run"
    df = _frame(source, None, seed)
    days = pd.to_datetime(df["timestamp"], utc=True)
    df = df[days < days.min().normalize() + pd.Timedelta(days=train_days)]
    out = work / "model"
    train(df, FraudTrainConfig(**{**cfg.__dict__, "baselines": False}), model_config, out_dir=out)
    model, card = load_model(out)
    how = f"{wanted} is missing: timed a model trained in this run on the first {train_days} days"
    return model, card, how


# -- batch -------------------------------------------------------------------------------------------------
def bench_batch(
    report: Report,
    model: Any,
    card: dict[str, Any],
    sample: pd.DataFrame,
    repeats: int,
    work: Path,
    say: Progress,
) -> None:
    """Time ``load_transactions`` + ``score_frame`` over ``sample`` written to CSV (see the module)."""
    path = work / "transactions.csv"
    out = sample.copy()
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True).map(lambda t: t.isoformat())
    out.to_csv(path, index=False)
    runs: list[dict[str, float]] = []
    for i in range(repeats + 1):
        say(f"batch run {i}/{repeats} ({'warm-up' if i == 0 else 'timed'})")
        runs.append(_batch_once(model, card, path))
    timed = runs[1:]
    n = len(sample)
    total = [r["total"] for r in timed]
    case = f"batch/transactions={n}"
    median = statistics.median(total)
    tx_per_s = n / median
    report.add_result(
        case,
        "fathom",
        median_ms=round(median * 1e3, 1),
        p95_ms=round(max(total) * 1e3, 1),
        transactions_per_s=round(tx_per_s),
        runs=len(timed),
    )
    for stage in ("load", "features+graph", "model"):
        times = [r[stage] for r in timed]
        report.add_result(
            f"{case}/stage",
            f"stage: {stage}",
            median_ms=round(statistics.median(times) * 1e3, 1),
            p95_ms=round(max(times) * 1e3, 1),
            share=round(statistics.median(times) / median, 3),
        )
    report.add_target(BATCH_TARGET_NAME, round(tx_per_s), BATCH_TARGET, "higher")


def _batch_once(model: Any, card: dict[str, Any], path: Path) -> dict[str, float]:
    start = time.perf_counter()
    df = load_transactions(path)
    loaded = time.perf_counter()
    scorer = FraudScorer(model, card, explain=False)  # a fresh feature state each run
    prepare_s = 0.0
    plain_prepare = scorer.prepare

    def timed_prepare(*args: Any, **kwargs: Any) -> Any:
        nonlocal prepare_s
        t0 = time.perf_counter()
        result = plain_prepare(*args, **kwargs)
        prepare_s += time.perf_counter() - t0  # once per chunk of days
        return result

    scorer.prepare = timed_prepare  # type: ignore[method-assign]  # score_frame calls self.prepare
    scorer.score_frame(df, explain_alerts=False)
    done = time.perf_counter()
    return {
        "total": done - start,
        "load": loaded - start,
        "features+graph": prepare_s,
        "model": done - loaded - prepare_s,
    }


# -- stream ------------------------------------------------------------------------------------------------
def bench_stream(
    report: Report,
    model: Any,
    card: dict[str, Any],
    sample: pd.DataFrame,
    n_stream: int,
    rate: float,
    warmup: int,
    work: Path,
    say: Progress,
) -> None:
    """Pure ``score_one`` latency, then latency through Redis Streams (see the module docstring)."""
    history, live = sample.iloc[:-n_stream], sample.iloc[-n_stream:]
    rows = [
        {
            "transaction_id": str(r.transaction_id),
            "timestamp": pd.Timestamp(r.timestamp).isoformat(),
            "customer_id": str(r.customer_id),
            "terminal_id": str(r.terminal_id),
            "amount": repr(float(r.amount)),
        }
        for r in live.itertuples(index=False)
    ]
    case = f"stream/transactions={n_stream}/history={len(history)}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        say("stream: score_one alone")
        scorer = _scorer_after(model, card, history)
        lat = []
        for tx in [parse_transaction(row) for row in rows]:
            t0 = time.perf_counter()
            scorer.score_one(tx)
            lat.append((time.perf_counter() - t0) * 1e3)
        report.add_result(case, "fathom score_one (no broker)", **_latency(lat[warmup:]))
        reason = redis_missing()
        if reason is not None:
            report.add_target(STREAM_TARGET_NAME, None, STREAM_P99_TARGET_MS, "lower", reason=reason)
            return
        say("stream: starting redis-server")
        with redis_server(work / "redis") as url:
            scorer = _scorer_after(model, card, history)
            figures = _through_redis(scorer, url, rows, rate, warmup, work)
    finally:
        torch.set_num_threads(threads)
    latencies = figures["latencies_ms"][warmup:]
    row = report.add_result(
        case,
        f"fathom via Redis Streams ({rate:g} msg/s)",
        **_latency(latencies),
        scored=figures["scored"],
        dead_lettered=figures["dead_lettered"],
        left_out_warmup=min(warmup, len(figures["latencies_ms"])),
    )
    sink_row = "redis HSETNX round trip (sink write, not in the figure above)"
    report.add_result(case, sink_row, **figures["sink"])
    value = row.get("p99_ms")
    why = None if value is not None else "no message was scored through Redis"
    report.add_target(STREAM_TARGET_NAME, value, STREAM_P99_TARGET_MS, "lower", reason=why)


def _scorer_after(model: Any, card: dict[str, Any], history: pd.DataFrame) -> FraudScorer:
    """A scorer whose state has seen ``history`` (features only, not scored)."""
    scorer = FraudScorer(model, card, explain=False)
    if len(history):
        prepare(history, scorer.state, snapshots=False)
    return scorer


def _latency(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    values = np.asarray(ms)
    return {
        "median_ms": round(float(np.median(values)), 3),
        "p95_ms": round(float(np.percentile(values, 95)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
        "n": len(ms),
    }


def _through_redis(
    scorer: FraudScorer, url: str, rows: list[dict[str, str]], rate: float, warmup: int, work: Path
) -> dict[str, Any]:
    import redis

    rows_path, sent_path = work / "stream-rows.json", work / "stream-sent.json"
    rows_path.write_text(json.dumps(rows))
    client = redis.Redis.from_url(url, decode_responses=True)
    client.xgroup_create("fraud:tx", "bench", id="0", mkstream=True)
    seen: dict[str, float] = {}

    def on_result(result: Any) -> None:
        seen.setdefault(result.transaction_id, time.monotonic())

    args = [url, "fraud:tx", str(rows_path), str(sent_path), str(rate), str(warmup), "fraud:scores"]
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, *args])
    try:
        stats = stream(
            scorer,
            f"{url}?stream=fraud:tx&group=bench&consumer=c1",
            f"{url}?hash=fraud:scores",
            idle_timeout=10.0,
            max_messages=len(rows),
            on_result=on_result,
        )
    finally:
        try:
            producer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            producer.kill()
            producer.wait()
    sent = json.loads(sent_path.read_text()) if sent_path.is_file() else []
    latencies = [(seen[tid] - t) * 1e3 for tid, t in sent if tid in seen]  # in send order
    round_trips = []
    for i in range(200):
        t0 = time.perf_counter()
        client.hsetnx("fraud:bench-rtt", str(i), "{}")
        round_trips.append((time.perf_counter() - t0) * 1e3)
    client.close()
    return {
        "latencies_ms": latencies,
        "scored": stats.scored,
        "dead_lettered": stats.dead_lettered,
        "sink": _latency(round_trips),
    }


def redis_missing() -> str | None:
    """Why the streaming section cannot run here, or ``None``."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian/Ubuntu: apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis client is not installed (pip install redis)"
    return None


@contextlib.contextmanager
def redis_server(workdir: Path, timeout: float = 15.0) -> Iterator[str]:
    """A throwaway ``redis-server`` on 127.0.0.1, no persistence; yields ``redis://127.0.0.1:PORT/0``."""
    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = workdir / "redis.conf"
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {workdir}", 'save ""', "appendonly no", ""]
    config.write_text("\n".join(lines))
    log = (workdir / "redis.log").open("wb")
    proc = subprocess.Popen(["redis-server", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "redis.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"redis-server did not start on port {port}: {tail}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# -- quality -----------------------------------------------------------------------------------------------
def quality_from_card(report: Report, folder: str | Path) -> None:
    """Rows and quality targets from the model card ``fathom fraud train`` wrote (same split, same run).

    Raises:
        FileNotFoundError: no model card there. ValueError: the card has no baseline figures.
    """
    card = read_card(folder)
    metrics = card.get("metrics", {})
    ours, baselines = metrics.get("val"), metrics.get("baselines")
    if not ours or not baselines:
        raise ValueError(
            f"{folder}: the model card has no validation or baseline metrics (train with baselines)"
        )
    window = card.get("data_window", ["?", "?"])
    case = (
        f"quality/recorded by fathom fraud train ({card.get('code_version')}), data {window[0][:10]}.."
        f"{window[1][:10]}, validation {card['config']['train']['val_days']} days ({card.get('n_val')} tx)"
    )
    for row in quality_table(ours, baselines):
        figures = {k: (None if row[k] is None else round(float(row[k]), 4)) for k in QUALITY_KEYS}
        report.add_result(case, row["impl"], **figures)
    report.settings["quality_seconds"] = card.get("seconds")
    report.settings["quality_train"] = {
        "epochs": card["config"]["train"]["epochs"],
        "best_epoch": metrics.get("best_epoch"),
        "n_train": card.get("n_train"),
        "n_val": card.get("n_val"),
        "from": str(folder),
    }
    for name, key in ((AP_TARGET_NAME, "average_precision"), (CP_TARGET_NAME, "card_precision_at_100")):
        best = max(float(m[key]) for m in baselines.values())
        value = float(ours[key])
        report.add_target(name, round(value, 4), round(best, 4), "higher")
        report.targets[-1]["met"] = bool(value > best)  # strictly above the best baseline


def bench_quality(
    report: Report,
    df: pd.DataFrame,
    cfg: FraudTrainConfig,
    model_config: FraudModelConfig | None,
    work: Path,
) -> Path | None:
    """Train ours and the baselines on ``df`` in this run; rows and the two quality targets.

    Returns:
        The folder of the model trained here, or ``None`` when training could not run.
    """
    cfg = FraudTrainConfig(**{**cfg.__dict__, "baselines": True})
    out = work / "quality-model"
    try:
        result = train(df, cfg, model_config, out_dir=out)
    except (ValueError, ImportError) as err:
        why = f"training failed: {str(err).splitlines()[0]}"
        for name in (AP_TARGET_NAME, CP_TARGET_NAME):
            report.add_target(name, None, 0.0, "higher", reason=why)
        return None
    days = pd.to_datetime(df["timestamp"], utc=True)
    case = (
        f"quality/{len(df)} tx, {days.min():%Y-%m-%d}..{days.max():%Y-%m-%d}, "
        f"validation {cfg.val_days} days ({result.n_val} tx)"
    )
    rows = quality_table(result.val, result.baselines)
    for row in rows:
        figures = {k: (None if row[k] is None else round(float(row[k]), 4)) for k in QUALITY_KEYS}
        report.add_result(case, row["impl"], **figures)
    report.settings["quality_seconds"] = result.seconds
    report.settings["quality_train"] = {
        "epochs": cfg.epochs,
        "n_train": result.n_train,
        "n_val": result.n_val,
    }
    for name, key in ((AP_TARGET_NAME, "average_precision"), (CP_TARGET_NAME, "card_precision_at_100")):
        best = max((m[key] for m in result.baselines.values()), default=None)
        ours = result.val.get(key)
        if best is None or ours is None:
            report.add_target(name, None, 0.0, "higher", reason=f"no {key} for ours or the baselines")
            continue
        report.add_target(name, round(float(ours), 4), round(float(best), 4), "higher")
        report.targets[-1]["met"] = bool(ours > best)  # strictly above the best baseline
    return result.out_dir
