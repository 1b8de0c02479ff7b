"""Loader for IBM AMLSim account graphs: accounts, transfers between them, fraud (SAR) labels.

AMLSim (github.com/IBM/AMLSim, Apache-2.0) simulates bank accounts that transfer money, with
money-laundering patterns (cycles, fan-in, ...) planted among them. ``../shared/data/amlsim-sample/``
holds two of its formats (see its SOURCE.txt); ``load_amlsim`` detects which one a folder holds:

- **nodes/transactions** (``20K_fanin200cycle200/``): ``nodes.csv`` with
  ``nodeid, isFraud, init_balance, fraudStep`` and ``transactions.csv`` with
  ``sourceNodeId, targetNodeId, value, time``. A transfer is labelled fraud when both of its
  accounts are fraud accounts; its id is synthesised as ``"<source>-<target>-<row>"`` (row: the
  1-based data row of ``transactions.csv``, so ids are stable).
- **AMLSim output** (``outputs_format_example/``): ``accounts.csv`` (``ACCOUNT_ID``, the SAR flag
  ``isFraud`` or ``IS_SAR``, ``init_balance``, ...) and ``tx.csv`` or ``transactions.csv``
  (``TXN_ID``/``TX_ID``, ``ACCOUNT_ID``/``SENDER_ACCOUNT_ID``,
  ``COUNTER_PARTY_ACCOUNT_NUM``/``RECEIVER_ACCOUNT_ID``, ``TXN_AMOUNT_ORIG``/``TX_AMOUNT``,
  ``start``/``TIMESTAMP`` as the step, optional ``IS_SAR``). A transfer's label is the tx file's own
  SAR flag when it has one, else "both accounts are SAR accounts". Optional ``alerts.csv`` adds
  the bool account column ``alerted``; optional ``cash_tx.csv`` adds ``cash_in`` and ``cash_out``
  (summed amounts per account; cash goes to branches, not accounts, so it makes no edges).

Column names are matched case-insensitively. Usage::

    graph = load_amlsim("../shared/data/amlsim-sample/20K_fanin200cycle200")
    graph.accounts.shape, int(graph.accounts["label"].sum())   # (20000, 4), 1804
    data = graph.to_pyg()             # HeteroData: "account" nodes, "transfers" + "rev_transfers"
    df = graph.to_transactions()      # canonical transactions (apps.fraud.data.CANONICAL)
    features = batch_features(df)     # apps.fraud.batch runs on it unchanged
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from apps.fraud.data import CANONICAL
from connectors.streams.schema import DEFAULT_CURRENCY

if TYPE_CHECKING:  # torch_geometric is imported only by to_pyg
    from torch_geometric.data import HeteroData

NODE_TYPE = "account"
EDGE_TYPE = ("account", "transfers", "account")
REV_EDGE_TYPE = ("account", "rev_transfers", "account")
TRUE_TEXT = frozenset({"1", "true", "t", "yes", "y"})
FALSE_TEXT = frozenset({"0", "false", "f", "no", "n"})

Spec = dict[str, tuple[str, ...]]
# Canonical name -> accepted source column names (case-insensitive), first found wins.
NODES_ACCOUNTS: Spec = {"account_id": ("nodeid",), "label": ("isFraud",), "init_balance": ("init_balance",)}
NODES_TRANSFERS: Spec = {
    "source": ("sourceNodeId",),
    "target": ("targetNodeId",),
    "amount": ("value",),
    "step": ("time",),
}
OUTPUT_ACCOUNTS: Spec = {
    "account_id": ("ACCOUNT_ID", "acct_id"),
    "label": ("isFraud", "IS_SAR", "is_sar"),
    "init_balance": ("init_balance",),
}
OUTPUT_TRANSFERS: Spec = {
    "transaction_id": ("TXN_ID", "TX_ID", "tran_id"),
    "source": ("ACCOUNT_ID", "SENDER_ACCOUNT_ID", "orig_acct"),
    "target": ("COUNTER_PARTY_ACCOUNT_NUM", "RECEIVER_ACCOUNT_ID", "bene_acct"),
    "amount": ("TXN_AMOUNT_ORIG", "TX_AMOUNT", "base_amt"),
    "step": ("start", "TIMESTAMP", "step"),
}
OPTIONAL = ("init_balance",)
TX_SAR = ("IS_SAR", "is_sar", "isSAR")
TX_TYPE = ("TXN_SOURCE_TYPE_CODE", "TX_TYPE", "tx_type")


@dataclass
class AmlsimGraph:
    """An AMLSim account graph.

    Args:
        accounts: one row per account, in file order (the node order of ``to_pyg``): ``account_id``
            (str, unique), ``label`` (bool: fraud/SAR account), ``init_balance`` (float) when the
            source has it, and the source's other attributes (``fraud_step``: nullable int, the step
            an account turned fraud; ``alerted``, ``cash_in``, ``cash_out``, ...).
        transfers: one row per transfer, in file order: ``transaction_id`` (str, unique), ``source``
            and ``target`` (str, account ids), ``amount`` (float >= 0), ``step`` (int, the
            simulation step), ``label`` (bool), and ``tx_type`` when the source has it.
    """

    accounts: pd.DataFrame
    transfers: pd.DataFrame

    def to_pyg(self) -> HeteroData:
        """The graph as ``torch_geometric.data.HeteroData``.

        Shapes (N accounts, E transfers, F = 5 with ``init_balance``, else 4):
            ``data["account"].x``: (N, F) float, columns ``[log1p(init_balance)]`` (clipped at 0),
            ``log1p(in_degree), log1p(out_degree), log1p(in_amount), log1p(out_amount)``.
            ``data["account"].y``: (N,) long, the account label.
            ``data["account", "transfers", "account"]``: ``edge_index`` (2, E) long (row order of
            ``accounts`` as node index), ``edge_attr`` (E, 2) float ``[log1p(amount), step scaled
            to [0, 1]]``, ``edge_time`` (E,) long step, ``y`` (E,) long transfer label.
            ``data["account", "rev_transfers", "account"]``: the same edges reversed.
        """
        import torch
        from torch_geometric.data import HeteroData

        n = len(self.accounts)
        index = pd.Index(self.accounts["account_id"])
        src = index.get_indexer(self.transfers["source"])  # (E,)
        dst = index.get_indexer(self.transfers["target"])  # (E,)
        if (src < 0).any() or (dst < 0).any():
            raise ValueError("to_pyg: transfers name accounts that are not in accounts")
        amount = self.transfers["amount"].to_numpy(dtype=np.float64)  # (E,)
        step = self.transfers["step"].to_numpy(dtype=np.int64)  # (E,)

        columns = []
        if "init_balance" in self.accounts.columns:
            balance = self.accounts["init_balance"].to_numpy(dtype=np.float64)
            columns.append(np.log1p(np.clip(np.nan_to_num(balance), 0, None)))
        columns += [
            np.log1p(np.bincount(dst, minlength=n)),
            np.log1p(np.bincount(src, minlength=n)),
            np.log1p(np.bincount(dst, weights=amount, minlength=n)),
            np.log1p(np.bincount(src, weights=amount, minlength=n)),
        ]
        x = np.stack(columns, axis=1)  # (N, F)
        span = int(step.max() - step.min()) if len(step) else 0
        scaled = (step - step.min()) / span if span > 0 else np.zeros(len(step))
        edge_attr = np.stack([np.log1p(amount), scaled], axis=1)  # (E, 2)

        data = HeteroData()
        data[NODE_TYPE].x = torch.tensor(x, dtype=torch.float32)
        data[NODE_TYPE].y = torch.tensor(self.accounts["label"].to_numpy(dtype=np.int64))
        data[NODE_TYPE].num_nodes = n
        edge_index = torch.tensor(np.stack([src, dst]), dtype=torch.long).reshape(2, -1)  # (2, E)
        attr = torch.tensor(edge_attr, dtype=torch.float32).reshape(-1, 2)
        time = torch.tensor(step, dtype=torch.long)
        y = torch.tensor(self.transfers["label"].to_numpy(dtype=np.int64))
        for edge_type, ei in ((EDGE_TYPE, edge_index), (REV_EDGE_TYPE, edge_index.flip(0))):
            data[edge_type].edge_index = ei
            data[edge_type].edge_attr = attr
            data[edge_type].edge_time = time
            data[edge_type].y = y
        return data

    def to_transactions(
        self, start: str | pd.Timestamp = "2024-01-01", step_seconds: float = 86400
    ) -> pd.DataFrame:
        """The transfers as canonical transactions (``apps.fraud.data.CANONICAL``), sorted by time.

        Args:
            start: the time of step 0 (naive is taken as UTC).
            step_seconds: the length of one step. A transfer's time is
                ``start + step * step_seconds`` plus its rank among its step's transfers (file order)
                in seconds, compressed to fit within the step when the step holds more than
                ``step_seconds`` transfers, so time order is step order, then file order.

        Returns:
            DataFrame with columns ``CANONICAL``: ``customer_id`` = source account, ``terminal_id`` =
            target account, currency EUR, channel ``"transfer"``, ``fraud_type`` ``"amlsim"`` for
            fraud transfers and ``"genuine"`` otherwise; index 0..n-1.
        """
        if step_seconds <= 0:
            raise ValueError(f"step_seconds must be > 0, got {step_seconds}")
        origin = pd.Timestamp(start)
        origin = origin.tz_localize("UTC") if origin.tzinfo is None else origin.tz_convert("UTC")
        t = self.transfers
        step = t["step"].astype(np.int64)
        rank = step.groupby(step).cumcount().to_numpy(dtype=np.float64)
        count = step.map(step.value_counts()).to_numpy(dtype=np.float64)
        spacing = np.minimum(1.0, step_seconds / np.maximum(count, 1.0))
        seconds = step.to_numpy(dtype=np.float64) * step_seconds + rank * spacing
        label = t["label"].astype(bool)
        out = pd.DataFrame(
            {
                "transaction_id": t["transaction_id"].astype(str),
                "timestamp": origin + pd.to_timedelta(seconds, unit="s"),
                "customer_id": t["source"].astype(str),
                "terminal_id": t["target"].astype(str),
                "amount": t["amount"].astype(float),
                "currency": DEFAULT_CURRENCY,
                "channel": "transfer",
                "merchant_category": None,
                "label": label,
                "fraud_type": np.where(label, "amlsim", "genuine"),
            }
        )
        return out.sort_values("timestamp", kind="stable").reset_index(drop=True)[list(CANONICAL)]


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"load_amlsim: {path} does not exist")
    # all text, nothing turned into NaN: each column is checked below and errors quote the raw value
    return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True).fillna("")


def _find(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    lower = {str(c).strip().lower(): c for c in frame.columns}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _columns(frame: pd.DataFrame, path: Path, spec: dict[str, tuple[str, ...]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, candidates in spec.items():
        column = _find(frame, candidates)
        if column is not None:
            found[name] = column
        elif name not in OPTIONAL:
            raise ValueError(
                f"load_amlsim: {path} lacks column {' or '.join(candidates)}; "
                f"has {', '.join(map(str, frame.columns))}"
            )
    return found


def _fail(path: Path, row: int, column: str, value: object, what: str) -> ValueError:
    return ValueError(f"load_amlsim: {path} row {row + 1}: {column} {value!r} is not {what}")


def _ids(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = frame[column].str.strip()
    empty = values == ""
    if empty.any():
        row = int(empty.to_numpy().argmax())
        raise _fail(path, row, column, frame[column].iat[row], "an id")
    return values


def _numbers(
    frame: pd.DataFrame, column: str, path: Path, *, integer: bool = False, minimum: float | None = None
) -> pd.Series:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna() | ~np.isfinite(values)
    what = "a finite number"
    if integer:
        bad |= values.fillna(0) % 1 != 0
        what = "an integer"
    if minimum is not None:
        bad |= values < minimum
        what += f" >= {minimum:g}"
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise _fail(path, row, column, frame[column].iat[row], what)
    return values.astype(np.int64) if integer else values.astype(float)


def _flags(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = frame[column].str.strip().str.lower()
    known = text.isin(TRUE_TEXT | FALSE_TEXT)
    if not known.all():
        row = int((~known).to_numpy().argmax())
        raise _fail(path, row, column, frame[column].iat[row], "a flag (0/1, true/false)")
    return text.isin(TRUE_TEXT)


def _unique(values: pd.Series, path: Path, column: str) -> None:
    duplicated = values.duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax())
        raise ValueError(
            f"load_amlsim: {path} row {row + 1}: {column} {values.iat[row]!r} is a duplicate "
            f"({int(duplicated.sum())} duplicate(s) in all)"
        )


def _known(values: pd.Series, accounts: pd.Series, path: Path, column: str, accounts_path: Path) -> None:
    unknown = ~values.isin(accounts)
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        raise ValueError(
            f"load_amlsim: {path} row {row + 1}: {column} {values.iat[row]!r} names an account that is "
            f"not in {accounts_path.name} ({int(unknown.sum())} such row(s))"
        )


def _accounts(path: Path, spec: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    frame = _read_csv(path)
    cols = _columns(frame, path, spec)
    out = pd.DataFrame({"account_id": _ids(frame, cols["account_id"], path)})
    _unique(out["account_id"], path, cols["account_id"])
    out["label"] = _flags(frame, cols["label"], path)
    if "init_balance" in cols:
        out["init_balance"] = _numbers(frame, cols["init_balance"], path)
    for column in frame.columns:  # the source's other attributes, as text
        if column not in cols.values():
            out[column] = frame[column]
    if "fraudStep" in out.columns:  # nodes format: -1 means never
        step = _numbers(frame, "fraudStep", path, integer=True)
        out = out.drop(columns="fraudStep")
        out["fraud_step"] = step.where(step >= 0).astype("Int64")
    return out


def _transfers(
    path: Path, spec: dict[str, tuple[str, ...]], accounts: pd.DataFrame, accounts_path: Path
) -> pd.DataFrame:
    frame = _read_csv(path)
    cols = _columns(frame, path, spec)
    out = pd.DataFrame(
        {
            "source": _ids(frame, cols["source"], path),
            "target": _ids(frame, cols["target"], path),
        }
    )
    for end in ("source", "target"):
        _known(out[end], accounts["account_id"], path, cols[end], accounts_path)
    out["amount"] = _numbers(frame, cols["amount"], path, minimum=0)
    out["step"] = _numbers(frame, cols["step"], path, integer=True)
    if "transaction_id" in cols:
        out.insert(0, "transaction_id", _ids(frame, cols["transaction_id"], path))
        _unique(out["transaction_id"], path, cols["transaction_id"])
    else:
        rows = pd.Series(np.arange(1, len(out) + 1), index=out.index).astype(str)
        out.insert(0, "transaction_id", out["source"] + "-" + out["target"] + "-" + rows)
    sar = _find(frame, TX_SAR)
    if sar is not None:
        out["label"] = _flags(frame, sar, path)
    else:
        fraud = set(accounts.loc[accounts["label"], "account_id"])
        out["label"] = out["source"].isin(fraud) & out["target"].isin(fraud)
    tx_type = _find(frame, TX_TYPE)
    if tx_type is not None:
        out["tx_type"] = frame[tx_type].str.strip()
    return out


def _alerts(path: Path, accounts: pd.DataFrame, accounts_path: Path) -> pd.Series:
    frame = _read_csv(path)
    column = _columns(frame, path, {"account_id": ("ACCOUNT_ID", "acct_id")})["account_id"]
    ids = _ids(frame, column, path)
    _known(ids, accounts["account_id"], path, column, accounts_path)
    return accounts["account_id"].isin(ids)


def _cash(path: Path, accounts: pd.DataFrame, accounts_path: Path) -> pd.DataFrame:
    frame = _read_csv(path)
    cols = _columns(
        frame,
        path,
        {
            "account_id": ("ACCOUNT_ID", "acct_id"),
            "kind": TX_TYPE,
            "amount": ("TXN_AMOUNT_ORIG", "TX_AMOUNT", "base_amt"),
        },
    )
    ids = _ids(frame, cols["account_id"], path)
    _known(ids, accounts["account_id"], path, cols["account_id"], accounts_path)
    amount = _numbers(frame, cols["amount"], path, minimum=0)
    kind = frame[cols["kind"]].str.strip().str.upper()
    bad = ~kind.isin(["CASH-IN", "CASH-OUT"])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise _fail(path, row, cols["kind"], frame[cols["kind"]].iat[row], "CASH-IN or CASH-OUT")
    out = {}
    for name, code in (("cash_in", "CASH-IN"), ("cash_out", "CASH-OUT")):
        sums = amount[kind == code].groupby(ids[kind == code]).sum()
        out[name] = accounts["account_id"].map(sums).fillna(0.0).astype(float)
    return pd.DataFrame(out)


def load_amlsim(folder: str | Path) -> AmlsimGraph:
    """Read an AMLSim folder in either format (see the module docstring).

    Args:
        folder: holds ``nodes.csv`` + ``transactions.csv``, or ``accounts.csv`` + ``tx.csv`` (or
            ``transactions.csv``) with optional ``alerts.csv`` and ``cash_tx.csv``.

    Returns:
        ``AmlsimGraph`` with accounts and transfers in file order.

    Raises:
        FileNotFoundError: the folder or a required file is missing.
        ValueError: naming file, row and column: a missing column, a non-numeric amount or step, a
            bad flag, an empty or duplicate account or transaction id, a transfer naming an unknown
            account.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"load_amlsim: {folder} is not a folder")
    if (folder / "nodes.csv").exists():
        accounts_path, tx_path = folder / "nodes.csv", folder / "transactions.csv"
        accounts = _accounts(accounts_path, NODES_ACCOUNTS)
        transfers = _transfers(tx_path, NODES_TRANSFERS, accounts, accounts_path)
        return AmlsimGraph(accounts, transfers)
    if (folder / "accounts.csv").exists():
        accounts_path = folder / "accounts.csv"
        found = next((folder / n for n in ("tx.csv", "transactions.csv") if (folder / n).exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"load_amlsim: {folder} has accounts.csv but no tx.csv or transactions.csv"
            )
        accounts = _accounts(accounts_path, OUTPUT_ACCOUNTS)
        transfers = _transfers(found, OUTPUT_TRANSFERS, accounts, accounts_path)
        if (folder / "alerts.csv").exists():
            accounts["alerted"] = _alerts(folder / "alerts.csv", accounts, accounts_path)
        if (folder / "cash_tx.csv").exists():
            accounts = accounts.join(_cash(folder / "cash_tx.csv", accounts, accounts_path))
        return AmlsimGraph(accounts, transfers)
    raise FileNotFoundError(
        f"load_amlsim: {folder} holds neither nodes.csv + transactions.csv nor accounts.csv + tx.csv"
    )
