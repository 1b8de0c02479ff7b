"""Loaders for the fraud app: the Fraud Detection Handbook's transactions in the canonical schema.

The handbook (Le Borgne et al., github.com/Fraud-Detection-Handbook/simulated-data-raw) ships
daily files with columns ``TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT,
TX_TIME_SECONDS, TX_TIME_DAYS, TX_FRAUD, TX_FRAUD_SCENARIO``. ``../shared/data/fraud-handbook/``
holds them converted to CSV (gzip); see its SOURCE.txt. ``load_handbook`` reads a folder or a list
of such files (CSV, CSV.gz, Parquet) into the canonical columns of
``connectors.streams.schema.Transaction`` plus ``fraud_type``, sorted by time::

    df = load_handbook("../shared/data/fraud-handbook", nrows=20_000)

The original daily ``.pkl`` files are refused: unpickling runs code (DESIGN.md: no pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from connectors.streams.schema import ALIASES, DEFAULT_CURRENCY

HANDBOOK_REQUIRED = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT")
# TX_FRAUD_SCENARIO -> fraud_type, named like the simulator's typologies where they match
HANDBOOK_SCENARIOS = {0: "genuine", 1: "unusual_amount", 2: "compromised_terminal", 3: "compromised_card"}
SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
CANONICAL = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "terminal_id",
    "amount",
    "currency",
    "channel",
    "merchant_category",
    "label",
    "fraud_type",
)


def handbook_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The data files a folder or list names, in name order (daily files sort by date).

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without CSV/Parquet files.
        ValueError: a file of another kind (e.g. the original ``.pkl`` files).
    """
    paths = [Path(source)] if isinstance(source, str | Path) else [Path(p) for p in source]
    if not paths:
        raise FileNotFoundError("load_handbook: no files given")
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.lower().endswith(SUFFIXES))
            if not found:
                pickles = sorted(p.name for p in path.glob("*.pkl"))
                hint = (
                    f" (only pickles {pickles[:3]}, which are not read: convert them to CSV)"
                    if pickles
                    else ""
                )
                raise FileNotFoundError(f"load_handbook: no {', '.join(SUFFIXES)} files in {path}{hint}")
            files += found
        elif path.is_file():
            if not path.name.lower().endswith(SUFFIXES):
                why = (
                    " (pickles are not read: unpickling runs code; convert to CSV)"
                    if path.suffix == ".pkl"
                    else ""
                )
                raise ValueError(f"load_handbook: {path} is not {', '.join(SUFFIXES)}{why}")
            files.append(path)
        else:
            raise FileNotFoundError(f"load_handbook: {path} does not exist")
    return files


def _read(path: Path, nrows: int | None) -> pd.DataFrame:
    if path.name.lower().endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
        return frame.head(nrows) if nrows is not None else frame
    ids = {c: str for c in ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")}
    return pd.read_csv(path, dtype=ids, nrows=nrows)


def _canonical(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    missing = [c for c in HANDBOOK_REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"load_handbook: {path} lacks column(s) {', '.join(missing)}; "
            f"has {', '.join(map(str, frame.columns))}"
        )
    out = pd.DataFrame({ALIASES[c.lower()]: frame[c] for c in HANDBOOK_REQUIRED})
    for column in ("transaction_id", "customer_id", "terminal_id"):
        values = out[column]
        if values.isna().any():
            raise ValueError(f"load_handbook: {path}: {int(values.isna().sum())} row(s) without {column}")
        out[column] = values.astype(str).str.strip()
    stamps = pd.to_datetime(out["timestamp"], errors="coerce")
    if stamps.isna().any():
        row = int(stamps.isna().to_numpy().argmax())
        raise ValueError(
            f"load_handbook: {path} row {row + 1}: TX_DATETIME {out['timestamp'].iat[row]!r} is not a time"
        )
    out["timestamp"] = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    amount = pd.to_numeric(out["amount"], errors="coerce")
    bad = amount.isna() | ~amount.between(0, float("inf"))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ValueError(
            f"load_handbook: {path} row {row + 1}: TX_AMOUNT {frame['TX_AMOUNT'].iat[row]!r} "
            "is not a finite number >= 0"
        )
    out["amount"] = amount.astype(float)
    out["currency"] = DEFAULT_CURRENCY
    out["channel"] = None
    out["merchant_category"] = None
    if "TX_FRAUD" in frame.columns:
        label = pd.to_numeric(frame["TX_FRAUD"], errors="coerce")
        if label.isna().any() or not label.isin([0, 1]).all():
            row = int((label.isna() | ~label.isin([0, 1])).to_numpy().argmax())
            raise ValueError(
                f"load_handbook: {path} row {row + 1}: TX_FRAUD {frame['TX_FRAUD'].iat[row]!r} is not 0/1"
            )
        out["label"] = label.astype(bool)
    else:
        out["label"] = pd.Series([None] * len(frame), dtype=object)
    if "TX_FRAUD_SCENARIO" in frame.columns:
        scenario = pd.to_numeric(frame["TX_FRAUD_SCENARIO"], errors="coerce")
        out["fraud_type"] = scenario.map(HANDBOOK_SCENARIOS).fillna("unknown").astype(str)
    else:
        out["fraud_type"] = None
    return out


def load_handbook(source: str | Path | Sequence[str | Path], *, nrows: int | None = None) -> pd.DataFrame:
    """Read Fraud Detection Handbook files into canonical transactions.

    Args:
        source: a folder (all its CSV/CSV.gz/Parquet files) or a list of files.
        nrows: read at most this many rows in all (files in name order), e.g. the first days.

    Returns:
        DataFrame with columns ``CANONICAL``: string ids, tz-aware UTC ``timestamp``, float ``amount``,
        bool ``label`` (None without ``TX_FRAUD``), ``fraud_type`` from ``TX_FRAUD_SCENARIO``
        (``HANDBOOK_SCENARIOS``); sorted by time (stable), index 0..n-1.

    Raises:
        FileNotFoundError, ValueError: naming the file, row and column at fault, or duplicate ids.
    """
    if nrows is not None and nrows < 1:
        raise ValueError(f"nrows must be >= 1, got {nrows}")
    frames = []
    left = nrows
    for path in handbook_files(source):
        if left is not None and left <= 0:
            break
        frame = _canonical(_read(path, left), path)
        frames.append(frame)
        left = None if left is None else left - len(frame)
    df = pd.concat(frames, ignore_index=True)
    duplicated = df["transaction_id"].duplicated()
    if duplicated.any():
        ids = df.loc[duplicated, "transaction_id"].head(3).tolist()
        raise ValueError(f"load_handbook: {int(duplicated.sum())} duplicate TRANSACTION_ID(s), e.g. {ids}")
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)[list(CANONICAL)]


def load_transactions(path: str | Path, *, nrows: int | None = None) -> pd.DataFrame:
    """Read a transactions file (CSV, CSV.gz, Parquet) in the handbook's or the canonical columns.

    Column names are matched case-insensitively through ``connectors.streams.schema.ALIASES``
    (``TX_DATETIME``, ``card_id``, ``is_fraud``...). Output as ``load_handbook``: ``CANONICAL``
    columns, string ids, UTC ``timestamp``, float ``amount``, bool ``label`` (None when the file
    has none), sorted by time.

    Raises:
        FileNotFoundError: no such file. ValueError: a missing column, a bad value (naming the
            file, row and column), duplicate transaction ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"transactions file {path} does not exist")
    if not path.name.lower().endswith(SUFFIXES):
        raise ValueError(f"{path}: transactions must be {', '.join(SUFFIXES)}")
    if path.name.lower().endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
        frame = frame.head(nrows) if nrows is not None else frame
    else:
        frame = pd.read_csv(path, dtype=str, nrows=nrows, keep_default_na=False, na_values=[""])
    if "TX_DATETIME" in frame.columns:
        return load_handbook(path, nrows=nrows)
    renamed: dict[str, str] = {}
    for column in frame.columns:
        name = ALIASES.get(str(column).strip().lower(), str(column).strip().lower())
        if name in renamed.values():
            raise ValueError(f"{path}: two columns give {name!r}")
        renamed[column] = name
    frame = frame.rename(columns=renamed)
    missing = [
        c for c in ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount") if c not in frame
    ]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}"
        )
    out = pd.DataFrame(index=frame.index)
    for column in ("transaction_id", "customer_id", "terminal_id"):
        values = frame[column]
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if empty.any():
            raise ValueError(f"{path} row {int(empty.to_numpy().argmax()) + 1}: empty {column}")
        out[column] = values.astype(str).str.strip()
    stamps = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True, format="mixed")
    if stamps.isna().any():
        row = int(stamps.isna().to_numpy().argmax())
        raise ValueError(f"{path} row {row + 1}: timestamp {frame['timestamp'].iat[row]!r} is not a time")
    out["timestamp"] = stamps
    amount = pd.to_numeric(frame["amount"], errors="coerce")
    bad = amount.isna() | ~amount.between(0, float("inf"))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ValueError(
            f"{path} row {row + 1}: amount {frame['amount'].iat[row]!r} is not a finite number >= 0"
        )
    out["amount"] = amount.astype(float)
    for column, default in (("currency", DEFAULT_CURRENCY), ("channel", None), ("merchant_category", None)):
        out[column] = frame[column].where(frame[column].notna(), default) if column in frame else default
    if "label" in frame:
        text = frame["label"].astype(str).str.strip().str.lower()
        mapping = {"1": True, "0": False, "true": True, "false": False, "1.0": True, "0.0": False}
        label = text.map(mapping)
        unknown = label.isna() & frame["label"].notna()
        if unknown.any():
            row = int(unknown.to_numpy().argmax())
            raise ValueError(f"{path} row {row + 1}: label {frame['label'].iat[row]!r} is not 0/1/true/false")
        out["label"] = label.astype(object).where(label.notna(), None)
        if out["label"].notna().all():
            out["label"] = out["label"].astype(bool)
    else:
        out["label"] = None
    out["fraud_type"] = frame.get("fraud_type", None)
    duplicated = out["transaction_id"].duplicated()
    if duplicated.any():
        ids = out.loc[duplicated, "transaction_id"].head(3).tolist()
        raise ValueError(f"{path}: {int(duplicated.sum())} duplicate transaction id(s), e.g. {ids}")
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)[list(CANONICAL)]
