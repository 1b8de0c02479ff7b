from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from apps.fraud.amlsim import EDGE_TYPE, NODE_TYPE, REV_EDGE_TYPE, load_amlsim
from apps.fraud.batch import batch_features
from apps.fraud.data import CANONICAL

AMLSIM = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "amlsim-sample"

NODES = ["nodeid,isFraud,init_balance,fraudStep", "0,0,100.0,-1", "1,1,50.5,3", "2,1,0,2", "3,0,20,-1"]
TRANSACTIONS = [
    "sourceNodeId,targetNodeId,value,time",
    "1,2,10.0,3",
    "0,1,5.5,1",
    "2,1,7.25,3",
    "3,0,1.0,1",
    "0,3,2.0,2",
]
ACCOUNTS = [
    "ACCOUNT_ID,PRIMARY_CUSTOMER_ID,init_balance,start,end,country,business,suspicious,isFraud,modelID",
    "10,C_10,100.0,1,50,US,I,False,false,0",
    "11,C_11,200.0,1,50,US,I,False,true,0",
    "12,C_12,300.0,1,50,US,I,False,true,0",
]
TX = [
    "TXN_ID,ACCOUNT_ID,COUNTER_PARTY_ACCOUNT_NUM,TXN_SOURCE_TYPE_CODE,tx_count,TXN_AMOUNT_ORIG,start,end",
    "7,11,12,WIRE,1,50.0,2,2",
    "3,10,11,CHECK,1,20.0,1,1",
    "9,12,10,CREDIT,1,30.0,2,2",
]
ALERTS = [
    "ALERT_KEY,ALERT_TEXT,ACCOUNT_ID,CUSTOMER_ID,EVENT_DATE,CHECK_NAME,Organization_Type,Escalated_To_Case_Investigation",
    "0,1,12,12,20170218,cycle,INDIVIDUAL,YES",
]
CASH = [
    "TXN_ID,ACCOUNT_ID,BRANCH_ID,TXN_SOURCE_TYPE_CODE,tx_count,TXN_AMOUNT_ORIG,RUN_DATE,end",
    "1,10,3,CASH-OUT,1,4.0,1,1",
    "2,10,3,CASH-OUT,1,6.0,2,2",
    "4,11,0,CASH-IN,1,8.5,2,2",
]


def _write(folder: Path, files: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def nodes_folder(tmp_path: Path) -> Path:
    return _write(tmp_path / "nodes", {"nodes.csv": NODES, "transactions.csv": TRANSACTIONS})


@pytest.fixture
def output_folder(tmp_path: Path) -> Path:
    files = {"accounts.csv": ACCOUNTS, "tx.csv": TX, "alerts.csv": ALERTS, "cash_tx.csv": CASH}
    return _write(tmp_path / "outputs", files)


def test_nodes_format(nodes_folder: Path) -> None:
    graph = load_amlsim(nodes_folder)
    accounts, transfers = graph.accounts, graph.transfers
    assert accounts["account_id"].tolist() == ["0", "1", "2", "3"]
    assert accounts["label"].tolist() == [False, True, True, False]
    assert accounts["init_balance"].tolist() == [100.0, 50.5, 0.0, 20.0]
    assert accounts["fraud_step"].isna().tolist() == [True, False, False, True]
    assert accounts["fraud_step"].iloc[1] == 3
    assert transfers["transaction_id"].tolist() == ["1-2-1", "0-1-2", "2-1-3", "3-0-4", "0-3-5"]
    assert transfers["source"].tolist() == ["1", "0", "2", "3", "0"]
    assert transfers["amount"].tolist() == [10.0, 5.5, 7.25, 1.0, 2.0]
    assert transfers["step"].tolist() == [3, 1, 3, 1, 2]
    # a transfer is fraud when both accounts are fraud accounts
    assert transfers["label"].tolist() == [True, False, True, False, False]


def test_output_format(output_folder: Path) -> None:
    graph = load_amlsim(output_folder)
    accounts, transfers = graph.accounts, graph.transfers
    assert accounts["account_id"].tolist() == ["10", "11", "12"]
    assert accounts["label"].tolist() == [False, True, True]
    assert accounts["init_balance"].tolist() == [100.0, 200.0, 300.0]
    assert accounts["alerted"].tolist() == [False, False, True]
    assert accounts["cash_out"].tolist() == [10.0, 0.0, 0.0]
    assert accounts["cash_in"].tolist() == [0.0, 8.5, 0.0]
    assert accounts["country"].tolist() == ["US"] * 3
    assert transfers["transaction_id"].tolist() == ["7", "3", "9"]
    assert transfers["source"].tolist() == ["11", "10", "12"]
    assert transfers["target"].tolist() == ["12", "11", "10"]
    assert transfers["step"].tolist() == [2, 1, 2]
    assert transfers["tx_type"].tolist() == ["WIRE", "CHECK", "CREDIT"]
    assert transfers["label"].tolist() == [True, False, False]


def test_output_format_tx_sar_flag_wins(tmp_path: Path) -> None:
    tx = [
        "TX_ID,SENDER_ACCOUNT_ID,RECEIVER_ACCOUNT_ID,TX_TYPE,TX_AMOUNT,TIMESTAMP,IS_SAR,ALERT_ID",
        "1,11,12,TRANSFER,5.0,0,False,-1",
        "2,10,11,TRANSFER,6.0,1,True,4",
    ]
    folder = _write(tmp_path, {"accounts.csv": ACCOUNTS, "transactions.csv": tx})
    transfers = load_amlsim(folder).transfers
    assert transfers["label"].tolist() == [False, True]
    assert transfers["amount"].tolist() == [5.0, 6.0] and transfers["step"].tolist() == [0, 1]


def test_to_pyg(nodes_folder: Path) -> None:
    data = load_amlsim(nodes_folder).to_pyg()
    data.validate()
    node = data[NODE_TYPE]
    assert node.x.shape == (4, 5) and node.x.dtype == torch.float32
    assert node.y.tolist() == [0, 1, 1, 0] and node.y.dtype == torch.long
    expected = torch.log1p(
        torch.tensor([100.0, 1.0, 2.0, 1.0, 7.5])
    )  # account 0: balance, in/out degree, amounts
    torch.testing.assert_close(node.x[0], expected)
    forward, reverse = data[EDGE_TYPE], data[REV_EDGE_TYPE]
    assert forward.edge_index.tolist() == [[1, 0, 2, 3, 0], [2, 1, 1, 0, 3]]
    assert torch.equal(reverse.edge_index, forward.edge_index.flip(0))
    assert forward.edge_attr.shape == (5, 2)
    torch.testing.assert_close(forward.edge_attr[:, 1], torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5]))
    torch.testing.assert_close(forward.edge_attr[0, 0], torch.log1p(torch.tensor(10.0)))
    assert forward.edge_time.tolist() == [3, 1, 3, 1, 2] and forward.edge_time.dtype == torch.long
    assert forward.y.tolist() == [1, 0, 1, 0, 0]


def test_to_pyg_without_balance_or_edges(tmp_path: Path) -> None:
    accounts = ["ACCOUNT_ID,IS_SAR", "a,0", "b,1"]
    tx = ["TXN_ID,ACCOUNT_ID,COUNTER_PARTY_ACCOUNT_NUM,TXN_AMOUNT_ORIG,start"]
    data = load_amlsim(_write(tmp_path, {"accounts.csv": accounts, "tx.csv": tx})).to_pyg()
    data.validate()
    assert data[NODE_TYPE].x.shape == (2, 4)
    assert data[EDGE_TYPE].edge_index.shape == (2, 0) and data[EDGE_TYPE].edge_attr.shape == (0, 2)


def test_to_transactions(nodes_folder: Path) -> None:
    df = load_amlsim(nodes_folder).to_transactions(start="2024-01-01", step_seconds=3600)
    assert tuple(df.columns) == CANONICAL
    assert df["timestamp"].is_monotonic_increasing and str(df["timestamp"].dt.tz) == "UTC"
    # step order, then file order within a step (+1 s per earlier transfer of the same step)
    assert df["transaction_id"].tolist() == ["0-1-2", "3-0-4", "0-3-5", "1-2-1", "2-1-3"]
    start = pd.Timestamp("2024-01-01", tz="UTC")
    assert df["timestamp"].tolist() == [
        start + pd.Timedelta(hours=1),
        start + pd.Timedelta(hours=1, seconds=1),
        start + pd.Timedelta(hours=2),
        start + pd.Timedelta(hours=3),
        start + pd.Timedelta(hours=3, seconds=1),
    ]
    assert df["customer_id"].tolist()[0] == "0" and df["terminal_id"].tolist()[0] == "1"
    assert set(df["currency"]) == {"EUR"} and set(df["channel"]) == {"transfer"}
    assert df["merchant_category"].isna().all()
    assert df["label"].tolist() == [False, False, False, True, True]
    assert df["fraud_type"].tolist() == ["genuine"] * 3 + ["amlsim"] * 2
    features = batch_features(df)
    assert features.shape[0] == 5 and features.notna().all().all()


def test_to_transactions_crowded_step_stays_within_step(nodes_folder: Path) -> None:
    df = load_amlsim(nodes_folder).to_transactions(step_seconds=1)  # 2 transfers in a 1 s step
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique
    assert df["transaction_id"].tolist() == ["0-1-2", "3-0-4", "0-3-5", "1-2-1", "2-1-3"]
    with pytest.raises(ValueError, match="step_seconds"):
        load_amlsim(nodes_folder).to_transactions(step_seconds=0)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_amlsim(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="neither nodes.csv"):
        load_amlsim(tmp_path)
    _write(tmp_path / "n", {"nodes.csv": NODES})
    with pytest.raises(FileNotFoundError, match="transactions.csv does not exist"):
        load_amlsim(tmp_path / "n")
    _write(tmp_path / "o", {"accounts.csv": ACCOUNTS})
    with pytest.raises(FileNotFoundError, match="no tx.csv or transactions.csv"):
        load_amlsim(tmp_path / "o")


@pytest.mark.parametrize(
    ("file", "row", "value", "match"),
    [
        ("nodes.csv", 2, "1,x,50.5,3", r"nodes.csv row 2: isFraud 'x' is not a flag"),
        ("nodes.csv", 1, "0,0,abc,-1", r"nodes.csv row 1: init_balance 'abc' is not a finite number"),
        ("nodes.csv", 3, "2,1,0,2.5", r"nodes.csv row 3: fraudStep '2.5' is not an integer"),
        ("nodes.csv", 4, "1,0,20,-1", r"nodes.csv row 4: nodeid '1' is a duplicate"),
        ("nodes.csv", 1, ",0,100.0,-1", r"nodes.csv row 1: nodeid '' is not an id"),
        (
            "transactions.csv",
            2,
            "0,1,five,1",
            r"transactions.csv row 2: value 'five' is not a finite number >= 0",
        ),
        (
            "transactions.csv",
            3,
            "2,1,-7,3",
            r"transactions.csv row 3: value '-7' is not a finite number >= 0",
        ),
        ("transactions.csv", 1, "1,2,10.0,t3", r"transactions.csv row 1: time 't3' is not an integer"),
        ("transactions.csv", 4, "3,99,1.0,1", r"transactions.csv row 4: targetNodeId '99' names an account"),
        ("transactions.csv", 5, "42,3,2.0,2", r"transactions.csv row 5: sourceNodeId '42' names an account"),
    ],
)
def test_bad_values_name_file_row_column(
    nodes_folder: Path, file: str, row: int, value: str, match: str
) -> None:
    rows = list(NODES if file == "nodes.csv" else TRANSACTIONS)
    rows[row] = value
    _write(nodes_folder, {file: rows})
    with pytest.raises(ValueError, match=match):
        load_amlsim(nodes_folder)


@pytest.mark.parametrize(
    ("file", "header", "match"),
    [
        (
            "nodes.csv",
            "nodeid,fraud,init_balance,fraudStep",
            r"nodes.csv lacks column isFraud; has nodeid, fraud",
        ),
        ("transactions.csv", "sourceNodeId,targetNodeId,amount,time", r"transactions.csv lacks column value"),
        (
            "accounts.csv",
            "ID,x,init_balance,a,b,c,d,e,isFraud,m",
            r"accounts.csv lacks column ACCOUNT_ID or acct_id",
        ),
        (
            "tx.csv",
            "TXN_ID,ACCOUNT_ID,COUNTER_PARTY_ACCOUNT_NUM,a,b,amt,start,end",
            r"tx.csv lacks column TXN_AMOUNT",
        ),
    ],
)
def test_missing_columns(nodes_folder: Path, output_folder: Path, file: str, header: str, match: str) -> None:
    folder = nodes_folder if file in ("nodes.csv", "transactions.csv") else output_folder
    rows = {"nodes.csv": NODES, "transactions.csv": TRANSACTIONS, "accounts.csv": ACCOUNTS, "tx.csv": TX}[
        file
    ]
    _write(folder, {file: [header, *rows[1:]]})
    with pytest.raises(ValueError, match=match):
        load_amlsim(folder)


def test_output_format_errors(output_folder: Path) -> None:
    _write(output_folder, {"tx.csv": [*TX, "7,10,12,WIRE,1,1.0,3,3"]})
    with pytest.raises(ValueError, match=r"tx.csv row 4: TXN_ID '7' is a duplicate"):
        load_amlsim(output_folder)
    _write(output_folder, {"tx.csv": TX, "alerts.csv": [*ALERTS, "1,1,77,77,20170128,cycle,INDIVIDUAL,YES"]})
    with pytest.raises(
        ValueError, match=r"alerts.csv row 2: ACCOUNT_ID '77' names an account that is not in"
    ):
        load_amlsim(output_folder)
    _write(output_folder, {"alerts.csv": ALERTS, "cash_tx.csv": [*CASH, "5,10,3,CASH-SIDEWAYS,1,2.0,1,1"]})
    with pytest.raises(
        ValueError, match=r"cash_tx.csv row 4: TXN_SOURCE_TYPE_CODE 'CASH-SIDEWAYS' is not CASH-IN"
    ):
        load_amlsim(output_folder)
    _write(output_folder, {"cash_tx.csv": CASH, "accounts.csv": [*ACCOUNTS, ACCOUNTS[1]]})
    with pytest.raises(ValueError, match=r"accounts.csv row 4: ACCOUNT_ID '10' is a duplicate"):
        load_amlsim(output_folder)


@pytest.mark.realdata
def test_real_20k_graph() -> None:
    folder = AMLSIM / "20K_fanin200cycle200"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    graph = load_amlsim(folder)
    assert len(graph.accounts) == 20_000 and int(graph.accounts["label"].sum()) == 1_804
    assert len(graph.transfers) == 120_558 and graph.transfers["transaction_id"].is_unique
    assert 0 < int(graph.transfers["label"].sum()) < len(graph.transfers)
    data = graph.to_pyg()
    assert data.validate()
    assert data[NODE_TYPE].x.shape == (20_000, 5) and int(data[NODE_TYPE].y.sum()) == 1_804
    assert data[EDGE_TYPE].edge_index.shape == (2, 120_558)
    assert data[REV_EDGE_TYPE].edge_index.shape == (2, 120_558)
    assert torch.isfinite(data[NODE_TYPE].x).all() and torch.isfinite(data[EDGE_TYPE].edge_attr).all()
    assert (
        float(data[EDGE_TYPE].edge_attr[:, 1].min()) == 0.0
        and float(data[EDGE_TYPE].edge_attr[:, 1].max()) == 1.0
    )
    df = graph.to_transactions()
    assert tuple(df.columns) == CANONICAL and len(df) == 120_558
    assert df["timestamp"].is_monotonic_increasing and df["timestamp"].is_unique


@pytest.mark.realdata
def test_real_output_format_example() -> None:
    folder = AMLSIM / "outputs_format_example"
    if not folder.is_dir():
        pytest.skip(f"{folder} absent")
    graph = load_amlsim(folder)
    assert len(graph.accounts) == 30 and int(graph.accounts["label"].sum()) == 4
    assert graph.accounts["alerted"].sum() == 2 and len(graph.transfers) == 45
    assert graph.to_pyg().validate()
    assert tuple(graph.to_transactions().columns) == CANONICAL
