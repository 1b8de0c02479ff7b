"""Fathom's own card-transaction simulator: genuine spending plus five fraud typologies.

Genuine behaviour: each customer lives at a point of a 100 x 100 map, shops at the nearest
physical terminals plus a few e-commerce merchants and one ATM, makes a Poisson number of
transactions a day (more on Fridays and Saturdays, fewer on Sundays), mostly in the daytime, with
amounts around their own mean. Fraud typologies (``fraud_type``):

- ``card_testing``: a burst of tiny amounts (0.5-2) at e-commerce terminals new to the card within
  minutes, then one large amount.
- ``compromised_terminal``: every transaction at one terminal for some days is fraud.
- ``account_takeover``: a card suddenly used at new e-commerce terminals for high amounts over 1-3 days.
- ``unusual_amount``: a genuine-looking transaction with 5-15 times the card's usual amount.
- ``mule_ring``: a group of cards withdraws round sums through a few shared ATMs over a few days.

Output is a DataFrame in the canonical schema (``connectors.streams.schema.Transaction`` fields)
plus ``fraud_type`` (``"genuine"`` for genuine rows), sorted by time, deterministic for a seed::

    df = simulate(n_customers=50, n_terminals=100, days=30, seed=0)
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from apps.fraud.data import CANONICAL

TYPOLOGIES = ("card_testing", "compromised_terminal", "account_takeover", "unusual_amount", "mule_ring")
COLUMNS = CANONICAL  # the loader's canonical columns: simulated and real data are interchangeable
WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.75])  # Monday .. Sunday
POS_MCC = np.array(["5411", "5812", "5541", "5311", "5912", "5999", "4121", "5814"])
ECOM_MCC = np.array(["5732", "5999", "4722", "5815", "5964"])
ATM_MCC = "6011"


@dataclass(frozen=True)
class _Terminals:
    xy: np.ndarray  # (T, 2)
    channel: np.ndarray  # (T,) "pos" | "ecom" | "atm"
    mcc: np.ndarray  # (T,)


def _make_terminals(rng: np.random.Generator, n: int) -> _Terminals:
    channel = rng.choice(np.array(["pos", "ecom", "atm"]), size=n, p=[0.75, 0.15, 0.10])
    # at least one of each channel, so every customer profile and typology can be built
    channel[:3] = ["pos", "ecom", "atm"]
    mcc = np.where(
        channel == "pos",
        rng.choice(POS_MCC, size=n),
        np.where(channel == "ecom", rng.choice(ECOM_MCC, size=n), ATM_MCC),
    )
    return _Terminals(rng.uniform(0, 100, size=(n, 2)), channel, mcc)


def simulate(
    n_customers: int = 200,
    n_terminals: int = 400,
    days: int = 60,
    start: str | _dt.date = "2024-01-01",
    seed: int = 0,
    fraud_rate: float = 0.01,
    typology_weights: dict[str, float] | None = None,
    mean_tx_per_day: float = 1.5,
    n_physical_terminals: int = 8,
    n_ecom_terminals: int = 3,
) -> pd.DataFrame:
    """Simulate card transactions with labelled fraud.

    Args:
        n_customers: number of cards (>= 10, so a mule ring fits).
        n_terminals: number of terminals (>= 10); 75% point of sale, 15% e-commerce, 10% ATM.
        days: number of days simulated (>= 3).
        start: first day (UTC midnight), a date or ``YYYY-MM-DD``.
        seed: random seed; the same arguments give the same DataFrame.
        fraud_rate: target fraction of fraudulent transactions (0 <= rate < 0.5); each typology gets
            its share of it and at least one event when the rate is above 0.
        typology_weights: relative share per typology (default equal); names from ``TYPOLOGIES``.
        mean_tx_per_day: average genuine transactions per card per day (each card draws its own
            rate uniformly from 0.2x to 1.8x of this).
        n_physical_terminals: nearest point-of-sale terminals each customer uses.
        n_ecom_terminals: e-commerce merchants each customer uses.

    Returns:
        DataFrame with columns ``COLUMNS``, sorted by ``timestamp`` (UTC), ``transaction_id`` "0".. in
        that order, ``label`` bool.
    """
    if n_customers < 10 or n_terminals < 10:
        raise ValueError(f"need n_customers >= 10 and n_terminals >= 10, got {n_customers} and {n_terminals}")
    if days < 3:
        raise ValueError(f"days must be >= 3, got {days}")
    if not 0 <= fraud_rate < 0.5:
        raise ValueError(f"fraud_rate must be in [0, 0.5), got {fraud_rate}")
    weights = dict.fromkeys(TYPOLOGIES, 1.0) if typology_weights is None else dict(typology_weights)
    unknown = set(weights) - set(TYPOLOGIES)
    if unknown:
        raise ValueError(f"unknown typologies {sorted(unknown)}; known: {', '.join(TYPOLOGIES)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"typology_weights must be >= 0 with a positive sum, got {weights}")
    start_ts = (
        pd.Timestamp(start).tz_localize("UTC") if pd.Timestamp(start).tzinfo is None else pd.Timestamp(start)
    )
    start_s = start_ts.normalize().timestamp()

    rng = np.random.default_rng(seed)
    terms = _make_terminals(rng, n_terminals)
    pos_ids = np.flatnonzero(terms.channel == "pos")
    ecom_ids = np.flatnonzero(terms.channel == "ecom")
    atm_ids = np.flatnonzero(terms.channel == "atm")

    # --- customer profiles ---
    home = rng.uniform(0, 100, size=(n_customers, 2))
    mean_amount = rng.uniform(8, 90, size=n_customers)
    std_amount = mean_amount * rng.uniform(0.2, 0.6, size=n_customers)
    rate = mean_tx_per_day * rng.uniform(0.2, 1.8, size=n_customers)
    p_ecom = rng.uniform(0.0, 0.25, size=n_customers)
    p_atm = rng.uniform(0.02, 0.08, size=n_customers)
    k_pos, k_ecom = min(n_physical_terminals, len(pos_ids)), min(n_ecom_terminals, len(ecom_ids))
    dist = np.linalg.norm(home[:, None, :] - terms.xy[pos_ids][None, :, :], axis=2)  # (C, P)
    own_pos = pos_ids[np.argsort(dist, axis=1)[:, :k_pos]]  # (C, k_pos)
    own_ecom = np.stack([rng.choice(ecom_ids, size=k_ecom, replace=False) for _ in range(n_customers)])
    atm_dist = np.linalg.norm(home[:, None, :] - terms.xy[atm_ids][None, :, :], axis=2)
    own_atm = atm_ids[np.argmin(atm_dist, axis=1)]  # (C,)

    # --- genuine transactions ---
    weekday = (start_ts.weekday() + np.arange(days)) % 7
    counts = rng.poisson(rate[:, None] * WEEKDAY_FACTOR[weekday][None, :])  # (C, D)
    cust = np.repeat(np.repeat(np.arange(n_customers), days), counts.ravel())
    day = np.repeat(np.tile(np.arange(days), n_customers), counts.ravel())
    n = len(cust)
    daytime = rng.random(n) < 0.9  # 90% around early afternoon, the rest any time
    sec = np.where(daytime, rng.normal(13.5 * 3600, 3.5 * 3600, n), rng.uniform(0, 86_400, n))
    sec = np.clip(sec, 0, 86_399)
    u = rng.random(n)
    kind = np.where(u < p_atm[cust], 2, np.where(u < p_atm[cust] + p_ecom[cust], 1, 0))
    term = np.where(
        kind == 0,
        own_pos[cust, rng.integers(0, k_pos, n)],
        np.where(kind == 1, own_ecom[cust, rng.integers(0, k_ecom, n)], own_atm[cust]),
    )
    amount = np.maximum(rng.normal(mean_amount[cust], std_amount[cust]), 0.5)
    amount = np.where(kind == 2, 20 * np.ceil(2 * amount / 20), amount)  # ATM: round sums
    genuine = pd.DataFrame(
        {
            "time": start_s + day * 86_400.0 + sec,
            "customer": cust,
            "terminal": term,
            "amount": np.round(amount, 2),
            "fraud_type": "genuine",
        }
    )

    # --- fraud ---
    target = fraud_rate * n / max(1e-9, 1 - fraud_rate)
    share = {k: weights.get(k, 0.0) / sum(weights.values()) for k in TYPOLOGIES}
    end_s = start_s + days * 86_400.0
    added: list[dict] = []
    count = dict.fromkeys(TYPOLOGIES, 0)

    def want(kind_name: str) -> bool:
        goal = share[kind_name] * target
        return fraud_rate > 0 and share[kind_name] > 0 and (count[kind_name] == 0 or count[kind_name] < goal)

    def add(t: float, c: int, term_id: int, amt: float, kind_name: str) -> None:
        if t < end_s:
            added.append(
                {
                    "time": t,
                    "customer": c,
                    "terminal": term_id,
                    "amount": round(amt, 2),
                    "fraud_type": kind_name,
                }
            )
            count[kind_name] += 1

    def new_ecom(c: int, k: int) -> np.ndarray:
        pool = np.setdiff1d(ecom_ids, own_ecom[c])
        pool = pool if len(pool) else ecom_ids
        return rng.choice(pool, size=k, replace=len(pool) < k)

    guard = 0
    while want("card_testing") and guard < 10_000:
        guard += 1
        c, t = int(rng.integers(n_customers)), start_s + rng.uniform(0, days - 0.2) * 86_400
        k = int(rng.integers(3, 9))
        for i, term_id in enumerate(new_ecom(c, k)):
            add(t + i * rng.uniform(20, 120), c, int(term_id), rng.uniform(0.5, 2.0), "card_testing")
        add(
            t + k * 120 + rng.uniform(300, 3600),
            c,
            int(new_ecom(c, 1)[0]),
            rng.uniform(300, 1500),
            "card_testing",
        )
    guard = 0
    while want("account_takeover") and guard < 10_000:
        guard += 1
        c, t = int(rng.integers(n_customers)), start_s + rng.uniform(0, days - 1) * 86_400
        k = int(rng.integers(3, 9))
        for term_id, dt in zip(
            new_ecom(c, k), np.sort(rng.uniform(0, rng.uniform(1, 3) * 86_400, k)), strict=True
        ):
            add(
                t + dt,
                c,
                int(term_id),
                mean_amount[c] * rng.uniform(4, 10) + rng.uniform(50, 200),
                "account_takeover",
            )
    guard = 0
    while want("mule_ring") and guard < 10_000:
        guard += 1
        cards = rng.choice(n_customers, size=int(rng.integers(4, 9)), replace=False)
        atms = rng.choice(atm_ids, size=min(len(atm_ids), int(rng.integers(2, 4))), replace=False)
        t0 = start_s + rng.uniform(0, days - 3) * 86_400
        for c in cards:
            for _ in range(int(rng.integers(2, 6))):
                add(
                    t0 + rng.uniform(0, 3) * 86_400,
                    int(c),
                    int(rng.choice(atms)),
                    50 * rng.integers(4, 19),
                    "mule_ring",
                )
    frauds = pd.DataFrame(added, columns=genuine.columns)

    # modify genuine rows: compromised terminals, unusual amounts
    fraud_type = genuine["fraud_type"].to_numpy(dtype=object).copy()
    amounts = genuine["amount"].to_numpy().copy()
    busy = genuine["terminal"].value_counts()
    candidates = busy[busy >= 3].index.to_numpy()
    guard = 0
    while want("compromised_terminal") and len(candidates) and guard < 1000:
        guard += 1
        term_id = rng.choice(candidates)
        t0 = start_s + rng.uniform(0, days - 2) * 86_400
        t1 = t0 + rng.uniform(3, 10) * 86_400
        hit = (genuine["terminal"].to_numpy() == term_id) & (genuine["time"].to_numpy() >= t0)
        hit &= (genuine["time"].to_numpy() < t1) & (fraud_type == "genuine")
        fraud_type[hit] = "compromised_terminal"
        count["compromised_terminal"] += int(hit.sum())
    guard = 0
    while want("unusual_amount") and guard < 100_000:
        guard += 1
        i = int(rng.integers(n))
        if fraud_type[i] != "genuine":
            continue
        c = genuine["customer"].iat[i]
        amounts[i] = round(mean_amount[c] * rng.uniform(5, 15), 2)
        fraud_type[i] = "unusual_amount"
        count["unusual_amount"] += 1
    genuine["fraud_type"], genuine["amount"] = fraud_type, amounts

    allrows = pd.concat([genuine, frauds], ignore_index=True) if len(frauds) else genuine
    allrows = allrows.sort_values(["time", "customer"], kind="stable").reset_index(drop=True)
    term_idx = allrows["terminal"].to_numpy(dtype=int)
    out = pd.DataFrame(
        {
            "transaction_id": np.arange(len(allrows)).astype(str),
            "timestamp": pd.to_datetime(
                np.round(allrows["time"].to_numpy(dtype=float) * 1000).astype(np.int64), unit="ms", utc=True
            ),
            "customer_id": "C" + allrows["customer"].astype(int).astype(str).str.zfill(5),
            "terminal_id": "T" + pd.Series(term_idx).astype(str).str.zfill(5),
            "amount": allrows["amount"].astype(float),
            "currency": "EUR",
            "channel": terms.channel[term_idx],
            "merchant_category": terms.mcc[term_idx],
            "label": (allrows["fraud_type"] != "genuine").to_numpy(),
            "fraud_type": allrows["fraud_type"].astype(str),
        }
    )
    return out[list(COLUMNS)]
