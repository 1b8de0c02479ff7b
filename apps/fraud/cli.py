"""``fathom fraud``: the fraud commands (simulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

fraud_app = typer.Typer(help="Fraud: simulated transactions, features, scoring.", no_args_is_help=True)

OUT_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@fraud_app.callback()
def _main() -> None:
    """Fraud: simulated transactions, features, scoring."""


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
