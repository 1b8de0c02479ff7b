"""The ``fathom`` console script: one Typer app, one sub-app per area (``fathom <area> <verb>``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from apps.customer_service.cli import cs_app
from apps.fraud.cli import fraud_app
from apps.nodule.cli import nodule_app

app = typer.Typer(
    name="fathom",
    help="Fathom: customer service, fraud and lung-nodule detection on one MoE + retrieval core.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that write the JSON shape of DESIGN.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(cs_app, name="cs")
app.add_typer(fraud_app, name="fraud")
app.add_typer(nodule_app, name="nodule")
moe_app = typer.Typer(
    help="The MoE core: run Hugging Face MoE models on Fathom's layer.", no_args_is_help=True
)
app.add_typer(moe_app, name="moe")

from apps.demo import demo_command  # noqa: E402  (light: loads nothing heavy at import)

app.command("demo")(demo_command)

console = Console(stderr=True)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _fail(message: str) -> None:
    """One-line error, non-zero exit, no traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def info() -> None:
    """What this installation has: versions, devices and which kernel paths are usable."""
    import torch

    from kernels.capabilities import HAS_TRITON, TRITON_INTERPRET, triton_status

    table = Table(title="fathom info")
    table.add_column("item")
    table.add_column("value")
    table.add_row("torch", torch.__version__)
    table.add_row("cuda", torch.cuda.get_device_name() if torch.cuda.is_available() else "not available")
    table.add_row("triton installed", str(HAS_TRITON))
    table.add_row("TRITON_INTERPRET", str(TRITON_INTERPRET))
    for device in ("cpu", "cuda"):
        ok, why = triton_status(device)
        table.add_row(f"triton kernels on {device}", "usable" if ok else f"no ({why})")
    from kernels.moe_experts_cpu import cpu_kernel_status

    ok, why = cpu_kernel_status()
    table.add_row("CPU decode kernel (C, AVX-512)", "in use" if ok else f"no ({why}): torch path")
    Console().print(table)


def _stdout() -> Console:
    """Rich console for tables: at least 150 columns when writing to a file or pipe (logs, CI)."""
    out = Console()
    return out if out.is_terminal else Console(width=150)


def _print_results(data: dict) -> None:
    table = Table(title=f"fathom bench {data['benchmark']} ({data['environment']['device']})")
    table.add_column("case", no_wrap=True)
    table.add_column("impl", no_wrap=True)
    for col in ("median ms", "p95 ms", "ratio", "max |diff|"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("note", max_width=60, no_wrap=True, overflow="ellipsis")
    for row in data["results"]:
        note = row.get("skipped", "")
        for key in ("tflops", "dense_matmul_fraction", "expert_weight_gbps", "cpm", "dice", "n_nodules",
                    "p99_ms", "requests_per_s", "error_rate", "mean_batch"):  # fmt: skip
            if key in row:
                note += f"{key}={row[key]} "
        table.add_row(
            row["case"],
            row["impl"],
            f"{row['median_ms']:.2f}" if "median_ms" in row else "-",
            f"{row['p95_ms']:.2f}" if "p95_ms" in row else "-",
            f"{row['ratio']:.3f}" if "ratio" in row else "-",
            f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else "-",
            note.strip(),
        )
    out = _stdout()
    out.print(table)
    targets = Table(title="targets")
    targets.add_column("target", no_wrap=True)
    targets.add_column("value", max_width=50, no_wrap=True, overflow="ellipsis")
    targets.add_column("goal", no_wrap=True)
    targets.add_column("met", no_wrap=True)
    for t in data["targets"]:
        value = "n/a: " + t.get("reason", "") if t["value"] is None else f"{t['value']:.3f}"
        goal = ("<= " if t["better"] == "lower" else ">= ") + f"{t['target']:.3f}"
        targets.add_row(t["name"], value, goal, {True: "yes", False: "NO", None: "-"}[t["met"]])
    out.print(targets)


def _finish(data: dict, json_path: Path | None, write: Callable[[Path], object] | None = None) -> None:
    """The report to ``json_path`` (``write`` puts it there, when given), else as JSON on stdout."""
    if json_path is None:
        print(json.dumps(data, indent=2))
        return
    if write is not None:
        write(json_path)
    console.print(f"report written to {json_path}")


@bench_app.command("moe")
def bench_moe(
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    tokens: Annotated[
        str | None, typer.Option(help="Comma-separated token counts (default 16,512,4096).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Tiny shapes, for smoke tests.")] = False,
    budget: Annotated[float, typer.Option(help="Seconds of timed repeats per measurement.")] = 2.0,
    flush_cache: Annotated[
        bool, typer.Option(help="Evict the CPU caches before every timed call (weights come from DRAM).")
    ] = False,
) -> None:
    """Fathom's MoE layer vs every Hugging Face experts implementation, same weights and inputs."""
    from apps.bench import moe

    if device not in ("cpu", "cuda"):
        _fail(f"--device must be cpu or cuda, got {device!r}")
    try:
        counts = [int(t) for t in tokens.split(",")] if tokens else None
    except ValueError:
        _fail(f"--tokens must be comma-separated integers, got {tokens!r}")
    if counts and min(counts) < 1:
        _fail("--tokens must be positive")
    try:
        with console.status("benchmarking MoE") as status:
            report = moe.run(
                device=device,
                tokens=counts,
                quick=quick,
                budget_s=budget,
                progress=status.update,
                flush_cache=flush_cache,
            )
    except RuntimeError as exc:
        _fail(str(exc))
    data = report.to_dict()
    _print_results(data)
    _finish(data, json_path, report.write)


@bench_app.command("retrieval")
def bench_retrieval(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    quick: Annotated[bool, typer.Option(help="Tiny sizes, for smoke tests.")] = False,
    reranker: Annotated[
        Path | None, typer.Option(help="Local cross-encoder folder for the reranked hybrid row.")
    ] = None,
    router: Annotated[
        Path | None, typer.Option(help="Intent-router folder (default: models/intent-router).")
    ] = None,
    kb: Annotated[Path | None, typer.Option(help="Knowledge-base folder (default: the shipped KB).")] = None,
    banking77: Annotated[
        Path | None,
        typer.Option(help="BANKING77 text,category CSV (default: ../shared BANKING77 train.csv)."),
    ] = None,
    sections: Annotated[
        str, typer.Option(help="Comma-separated sections to run: ann, quality, ask.")
    ] = "ann,quality,ask",
) -> None:
    """FAISS HNSW/IVF-PQ vs exact search, QA recall vs LangChain FAISS, and ask latency vs LangChain."""
    from apps.bench import retrieval

    if reranker is not None and not reranker.is_dir():
        _fail(f"--reranker {reranker} is not a folder (a local cross-encoder is required)")
    if kb is not None and not kb.is_dir():
        _fail(f"--kb {kb} is not a folder")
    inputs: dict[str, object] = {"reranker": reranker, "router_dir": router}
    if kb is not None:
        inputs["kb_dir"] = kb
    if banking77 is not None:
        inputs["banking77"] = banking77
    inputs["sections"] = tuple(s.strip() for s in sections.split(",") if s.strip())
    try:
        cfg = (retrieval.RetrievalBenchConfig.quick if quick else retrieval.RetrievalBenchConfig)(**inputs)
        with console.status("benchmarking retrieval") as status:
            report = retrieval.run(cfg, progress=status.update)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    data = report.to_dict()
    _print_results(data)
    quality = Table(title="recall and throughput")
    for col in ("case", "impl", "recall@1", "recall@5", "recall@10", "MRR", "queries/s"):
        quality.add_column(col, no_wrap=True, justify="left" if col in ("case", "impl") else "right")
    keys = ("recall_at_1", "recall_at_5", "recall_at_10", "mrr", "queries_per_s")
    for row in data["results"]:
        if "recall_at_10" in row:
            cells = [row.get(k) for k in keys]
            quality.add_row(row["case"], row["impl"], *("-" if c is None else f"{c:g}" for c in cells))
    _stdout().print(quality)
    _finish(data, json_path, report.write)


@bench_app.command("fraud")
def bench_fraud(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Handbook folder or transactions file (default: ../shared handbook, else simulated)."
        ),
    ] = None,
    n_batch: Annotated[int, typer.Option(help="Transactions in the batch-throughput run.")] = 200_000,
    n_stream: Annotated[int, typer.Option(help="Transactions streamed through Redis Streams.")] = 2_000,
    rate: Annotated[float, typer.Option(help="Stream producer rate, transactions/s.")] = 500.0,
    quality: Annotated[bool, typer.Option(help="Train ours and the baselines on the same split.")] = True,
    quality_from: Annotated[
        Path | None,
        typer.Option(help="Report the quality table `fathom fraud train` recorded in this model folder."),
    ] = None,
    quality_rows: Annotated[int | None, typer.Option(help="Rows for the quality run (default: all).")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of the quality run (default: the config's).")
    ] = None,
    model: Annotated[
        Path | None, typer.Option("--model", help="Model folder (default: the shipped one).")
    ] = None,
) -> None:
    """Batch tx/s end to end, stream latency through Redis Streams, quality vs LR/RF/xgboost."""
    from apps.bench import fraud

    try:
        with console.status("benchmarking fraud") as status:
            report = fraud.run(
                data=data,
                n_batch=n_batch,
                n_stream=n_stream,
                stream_rate=rate,
                quality=quality,
                quality_from=quality_from,
                quality_rows=quality_rows,
                epochs=epochs,
                model_dir=model,
                json_path=json_path,
                progress=status.update,
            )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    _print_results(report)
    _finish(report, json_path)


@bench_app.command("nodule")
def bench_nodule(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    model: Annotated[
        Path | None, typer.Option("--model", help="Model folder (default: the shipped one).")
    ] = None,
    student: Annotated[
        Path | None, typer.Option(help="Student model folder (default: the shipped student).")
    ] = None,
    slices: Annotated[int, typer.Option(help="Slices of the speed study.")] = 300,
    size: Annotated[int, typer.Option(help="Rows = columns of the speed study.")] = 512,
    repeats: Annotated[int, typer.Option(help="Timed end-to-end runs per model.")] = 3,
    phantoms: Annotated[int, typer.Option(help="Held-out phantoms for CPM and Dice.")] = 10,
    phantom_size: Annotated[str, typer.Option(help="Size of the held-out phantoms.")] = "medium",
    seed: Annotated[int, typer.Option(help="Seed of the study and the held-out phantoms.")] = 0,
    speed: Annotated[bool, typer.Option(help="Time the end-to-end study.")] = True,
    quality: Annotated[bool, typer.Option(help="Score CPM and Dice on held-out phantoms.")] = True,
    baseline: Annotated[bool, typer.Option(help="Time the plain MONAI baselines too.")] = True,
) -> None:
    """Seconds per 512x512x300 CT end to end vs plain MONAI sliding-window inference; CPM and Dice."""
    from apps.bench import nodule

    try:
        with console.status("benchmarking nodule") as status:
            report = nodule.run(
                device=device,
                model_dir=model,
                student_dir=student,
                shape=(slices, size, size),
                repeats=repeats,
                n_phantoms=phantoms,
                phantom_size=phantom_size,
                seed=seed,
                speed=speed,
                quality=quality,
                baseline=baseline,
                json_path=json_path,
                progress=status.update,
            )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    _print_results(report)
    _finish(report, json_path)


@bench_app.command("compress")
def bench_compress(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    models: Annotated[str, typer.Option(help="Comma-separated: fraud, intent.")] = "fraud,intent",
    quick: Annotated[bool, typer.Option(help="Tiny data and timing budgets (smoke run).")] = False,
    fraud_model: Annotated[Path | None, typer.Option(help="Fraud model folder (default: shipped).")] = None,
    fraud_data: Annotated[
        Path | None, typer.Option(help="Handbook folder or labelled transactions (default: the handbook).")
    ] = None,
    intent_model: Annotated[Path | None, typer.Option(help="Router folder (default: shipped).")] = None,
    intent_csv: Annotated[
        Path | None, typer.Option(help="text,category CSV (default: the card's BANKING77 split).")
    ] = None,
    prune: Annotated[str, typer.Option(help="Comma-separated pruning fractions.")] = "0.3,0.5",
    fraud_batch: Annotated[int, typer.Option(help="Transactions per timed fraud batch.")] = 1024,
    intent_batch: Annotated[int, typer.Option(help="Messages per timed intent batch.")] = 32,
    threads: Annotated[int | None, typer.Option(help="torch/onnxruntime threads (default: torch's).")] = None,
) -> None:
    """Pruned, int8 and ONNX fraud model and intent router: size, speed, quality vs fp32."""
    from apps.bench import compress

    try:
        amounts = tuple(float(a) for a in prune.split(",") if a.strip())
        with console.status("benchmarking compression") as status:
            report = compress.run(
                [m.strip() for m in models.split(",") if m.strip()],
                quick=quick,
                fraud_model=fraud_model,
                fraud_data=fraud_data,
                intent_model=intent_model,
                intent_csv=intent_csv,
                fraud_batch=fraud_batch,
                intent_batch=intent_batch,
                prune_amounts=amounts,
                threads=threads,
                json_path=json_path,
                progress=status.update,
            )
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])
    _print_results(report)
    _finish(report, json_path)


@bench_app.command("api")
def bench_api(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="POST /fraud/score requests per second.")] = 200.0,
    duration: Annotated[float, typer.Option(min=1.0, help="Measured seconds per phase.")] = 30.0,
    warmup: Annotated[float, typer.Option(min=0.0, help="Unmeasured seconds before each fraud phase.")] = 5.0,
    quick: Annotated[bool, typer.Option(help="20 requests/s for 3 s (smoke run).")] = False,
    baseline: Annotated[bool, typer.Option(help="Also load a server without micro-batching.")] = True,
    routes: Annotated[bool, typer.Option(help="Also load the other routes (mixed phase).")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads in the server.")] = None,
) -> None:
    """Load test of fathom serve on loopback (locust): requests/s, p50/p99 and errors per route."""
    from apps.bench import api

    try:
        with console.status("benchmarking the API") as status:
            report = api.run(
                rate=rate,
                duration_s=duration,
                warmup_s=warmup,
                quick=quick,
                baseline=baseline,
                routes=routes,
                threads=threads,
                json_path=json_path,
                progress=status.update,
            )
    except (ValueError, RuntimeError, TimeoutError) as exc:
        _fail(str(exc).splitlines()[0])
    _print_results(report)
    _finish(report, json_path)


@bench_app.command("table")
def bench_table(
    path: Annotated[Path, typer.Argument(help="A report written by fathom bench <area> --json.")],
) -> None:
    """Print a benchmark report as Markdown tables."""
    from apps.bench.common import markdown_table, validate_report

    try:
        data = json.loads(path.read_text())
        validate_report(data)
    except FileNotFoundError:
        _fail(f"{path}: no such file")
    except (json.JSONDecodeError, ValueError) as exc:
        _fail(f"{path} is not a benchmark report: {exc}")
    print(markdown_table(data), end="")


@moe_app.command("check")
def moe_check(
    model_dir: Annotated[Path, typer.Argument(help="A local Hugging Face MoE causal LM (safetensors).")],
    prompt: Annotated[str | None, typer.Option(help="Prompt text (needs the model's tokenizer).")] = None,
    new_tokens: Annotated[int, typer.Option(help="Greedy tokens to generate before and after.")] = 8,
    backend: Annotated[str, typer.Option(help="auto, triton or torch")] = "auto",
    hf_experts: Annotated[
        str | None,
        typer.Option(help="Hugging Face experts implementation for the 'before' run (e.g. eager)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Patch every MoE block of a local model with Fathom's and check logits and generation match."""
    import torch

    from core.moe.check import check_patched_model

    if not (model_dir / "config.json").is_file():
        _fail(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    if backend not in ("auto", "triton", "torch"):
        _fail(f"--backend must be auto, triton or torch, got {backend!r}")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout/stderr stay clean for --json consumers

    try:
        extra = {"experts_implementation": hf_experts} if hf_experts else {}
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True, **extra
        )
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"cannot load {model_dir}: {str(exc).splitlines()[0]}")
    if prompt is not None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError):
            _fail(f"--prompt needs a tokenizer in {model_dir}; leave it out to use a fixed token prompt")
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    else:  # a fixed, deterministic prompt of token ids, enough to compare two runs of one model
        input_ids = (torch.arange(3, 15) * 7 % model.config.vocab_size).unsqueeze(0)
    try:
        result = check_patched_model(model, input_ids, new_tokens=new_tokens, backend=backend)  # type: ignore[arg-type]
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    data = {"model": str(model_dir), **result.to_dict()}
    if as_json:
        print(json.dumps(data))
        return
    verdict = "match" if result.same_tokens else "DIFFER"
    print(
        f"{len(result.blocks)} MoE blocks on Fathom's {result.backend} path; max |logit diff| "
        f"{result.max_abs_logit_diff:.2e}; greedy tokens {verdict}; forward "
        f"{result.forward_ms_before:.1f} ms (Hugging Face) -> {result.forward_ms_after:.1f} ms (Fathom)"
    )
    if not result.same_tokens:
        raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(help="Require this key (X-API-Key); default $FATHOM_API_KEY.")
    ] = None,
    fraud_max_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Micro-batching: the most transactions scored in one call across requests (1: off)."
        ),
    ] = 256,
    fraud_max_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="Micro-batching: wait this long for more requests (0: none).")
    ] = 0.0,
    log_level: Annotated[
        str, typer.Option(help="uvicorn's log level: critical, error, warning, info (access log), debug.")
    ] = "info",
) -> None:
    """Serve the suite's HTTP API (FastAPI): /cs, /fraud and /nodule routes, /healthz, /metrics, /docs."""
    from apps.api import serve as run_api

    try:
        if log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
        run_api(
            host,
            port,
            api_key,
            log_level=log_level,
            fraud_max_batch=fraud_max_batch,
            fraud_max_wait_ms=fraud_max_wait_ms,
        )
    except (ValueError, OSError, FileNotFoundError) as exc:
        _fail(str(exc).splitlines()[0])


@app.command()
def ui(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8501,
) -> None:
    """Open the Streamlit front end (customer-service chat and the suite's home page)."""
    from apps.ui import launch

    try:
        code = launch(host, port)
    except ValueError as exc:
        _fail(str(exc))
    raise typer.Exit(code=code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
