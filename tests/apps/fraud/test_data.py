from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from apps.fraud.batch import batch_features
from apps.fraud.data import CANONICAL, load_handbook
from connectors.streams.schema import parse_transaction

HEADER = (
    "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,"
    "TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"
)


def _write(path: Path, rows: list[str], header: str = HEADER) -> Path:
    text = "\n".join([header, *rows]) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def daily(tmp_path: Path) -> Path:
    folder = tmp_path / "handbook"
    folder.mkdir()
    _write(folder / "2018-04-02.csv", ["3,2018-04-02 08:00:00,7,0012,120.5,115200,1,1,2"])
    _write(
        folder / "2018-04-01.csv.gz",
        ["1,2018-04-01 09:00:00,596,3156,57.16,32400,0,0,0", "0,2018-04-01 00:00:31,596,3156,300.0,31,0,1,1"],
    )
    (folder / "notes.txt").write_text("not data")
    return folder


def test_folder_to_canonical_sorted(daily: Path) -> None:
    df = load_handbook(daily)
    assert tuple(df.columns) == CANONICAL
    assert df["transaction_id"].tolist() == ["0", "1", "3"]
    assert df["terminal_id"].tolist() == ["3156", "3156", "0012"]  # ids stay text: leading zeros kept
    assert df["label"].tolist() == [True, False, True]
    assert df["fraud_type"].tolist() == ["unusual_amount", "genuine", "compromised_terminal"]
    assert str(df["timestamp"].dt.tz) == "UTC" and df["timestamp"].is_monotonic_increasing
    tx = parse_transaction(
        {k: v for k, v in df.iloc[0].to_dict().items() if k != "fraud_type"}, unknown="forbid"
    )
    assert tx.amount == 300.0 and tx.label is True


def test_file_list_and_nrows(daily: Path) -> None:
    files = [daily / "2018-04-02.csv", daily / "2018-04-01.csv.gz"]
    assert len(load_handbook(files)) == 3
    assert load_handbook(daily, nrows=2)["transaction_id"].tolist() == ["0", "1"]  # first file by name


def test_parquet(daily: Path, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    raw = pd.read_csv(daily / "2018-04-01.csv.gz", dtype=str)
    raw.to_parquet(tmp_path / "day.parquet")
    assert load_handbook([tmp_path / "day.parquet"])["amount"].tolist() == [300.0, 57.16]


@pytest.mark.parametrize(
    ("row", "header", "message"),
    [
        ("0,2018-04-01 00:00:31,596,3156,-3,31,0,0,0", HEADER, "row 1: TX_AMOUNT '-3.0'|row 1: TX_AMOUNT"),
        ("0,2018-04-01 00:00:31,596,3156,abc,31,0,0,0", HEADER, "TX_AMOUNT 'abc'"),
        ("0,yesterday,596,3156,1,31,0,0,0", HEADER, "TX_DATETIME 'yesterday'"),
        ("0,2018-04-01 00:00:31,596,3156,1,31,0,2,0", HEADER, "TX_FRAUD"),
        (
            "0,2018-04-01 00:00:31,596,1",
            "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TX_AMOUNT",
            "lacks column.*TERMINAL_ID",
        ),
    ],
)
def test_bad_rows_named(tmp_path: Path, row: str, header: str, message: str) -> None:
    path = _write(tmp_path / "bad.csv", [row], header)
    with pytest.raises(ValueError, match=message):
        load_handbook(path)


def test_bad_sources(tmp_path: Path, daily: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_handbook(tmp_path / "nope")
    (tmp_path / "pk").mkdir()
    (tmp_path / "pk" / "2018-04-01.pkl").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="pickles"):
        load_handbook(tmp_path / "pk")
    with pytest.raises(ValueError, match="pickles are not read"):
        load_handbook([tmp_path / "pk" / "2018-04-01.pkl"])
    _write(daily / "2018-04-03.csv", ["1,2018-04-03 09:00:00,1,2,3.0,0,2,0,0"])
    with pytest.raises(ValueError, match="duplicate TRANSACTION_ID"):
        load_handbook(daily)


@pytest.mark.realdata
def test_real_handbook_first_days(shared_data: Path) -> None:
    folder = shared_data / "fraud-handbook"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    df = load_handbook(folder, nrows=20_000)  # about the first two days
    assert len(df) == 20_000 and tuple(df.columns) == CANONICAL
    assert df["timestamp"].iloc[0] == pd.Timestamp("2018-04-01 00:00:31", tz="UTC")
    assert df["timestamp"].is_monotonic_increasing and df["transaction_id"].is_unique
    assert 0 < df["label"].mean() < 0.05
    assert set(df["fraud_type"]) <= {"genuine", "unusual_amount", "compromised_terminal", "compromised_card"}
    features = batch_features(df.head(3000))
    assert features.notna().all().all() and features["card_n_1d"].max() > 0
