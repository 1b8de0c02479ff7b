"""Nodule detection scores: FROC and CPM following the LUNA16 protocol, and the Dice overlap of masks.

The protocol is that of Setio et al. 2017, "Validation, comparison, and combination of algorithms for
automatic detection of pulmonary nodules in computed tomography images: the LUNA16 challenge", and its
evaluation script ``noduleCADEvaluationLUNA16.py``:

- A finding *hits* a true nodule of the same scan when its centre lies strictly inside the nodule's
  sphere: ``|finding - nodule| < diameter / 2`` (the script tests ``dist < radius**2``; a centre exactly on
  the surface is a miss). A finding inside two overlapping nodules hits both.
- Each true nodule counts once, at the confidence of its highest-confidence hit. Further hits on a nodule
  are neither true nor false positives: they are ignored, as LUNA16 ignores them.
- A finding that hits no nodule is a false positive.
- Thresholds sweep the distinct confidences from high to low; at threshold ``t`` the findings with
  ``confidence >= t`` are kept. Tied findings are kept or dropped together, so the result does not depend
  on the order of the input.
- FPs per scan = false positives / number of scans. Every scan in ``scan_ids`` counts, with or without
  nodules, which is why the scans are passed explicitly.
- Sensitivity at an FP rate is the highest sensitivity among the operating points with FPs/scan <= rate
  (0 when none is). This is step interpolation of the FROC curve. The LUNA16 script calls ``np.interp``
  on the same curve, which equals the step value except where a threshold adds true and false positives
  at once (tied confidences): there ``np.interp`` draws a diagonal no threshold can reach, and this
  module keeps the conservative, attainable value.
- CPM (competition performance metric) = the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs/scan.

With no true nodules sensitivity is undefined: the sensitivities and CPM are NaN, ``n_truths`` is 0 and
``note`` says why. With no findings every sensitivity is 0.

Example::

    import json

    from apps.nodule.evaluate import Finding, Truth, froc

    truths = [Truth("scan-1", (10.0, 20.0, 30.0), diameter_mm=8.0)]
    findings = [
        Finding("scan-1", (11.0, 20.0, 30.0), confidence=0.9),  # hit
        Finding("scan-2", (50.0, 50.0, 50.0), confidence=0.4),  # false positive
    ]
    result = froc(findings, truths, scan_ids=["scan-1", "scan-2"])
    result.cpm                 # 1.0: the nodule is found before any false positive
    result.sensitivity_at(1)   # 1.0
    json.dumps(result.to_dict())
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

FP_RATES = (0.125, 0.25, 0.5, 1, 2, 4, 8)

# FPs/scan is a ratio of integers; the slack keeps e.g. 1 FP over 8 scans at exactly rate 0.125.
_RATE_SLACK = 1e-9


def _point(value: Sequence[float], what: str) -> tuple[float, float, float]:
    point = tuple(float(v) for v in value)
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ValueError(f"{what} must be 3 finite numbers (mm), got {value!r}")
    return point  # type: ignore[return-value]


@dataclass(frozen=True)
class Finding:
    """One detection (a CAD mark).

    Args:
        scan_id: The scan it was found in; must be one of the ``scan_ids`` passed to ``froc``.
        center_mm: Centre in world coordinates, mm (any fixed axis order, the same as the truths').
        confidence: Detection score; higher is more confident. Must be finite.
    """

    scan_id: str
    center_mm: tuple[float, float, float]
    confidence: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _point(self.center_mm, f"Finding center_mm ({self.scan_id})"))
        confidence = float(self.confidence)
        if not math.isfinite(confidence):
            raise ValueError(f"Finding confidence must be finite, got {self.confidence!r} ({self.scan_id})")
        object.__setattr__(self, "confidence", confidence)


@dataclass(frozen=True)
class Truth:
    """One true nodule, a sphere.

    Args:
        scan_id: The scan it is in; must be one of the ``scan_ids`` passed to ``froc``.
        center_mm: Centre in world coordinates, mm.
        diameter_mm: Diameter, mm, > 0; a finding hits when it is closer than ``diameter_mm / 2``.
    """

    scan_id: str
    center_mm: tuple[float, float, float]
    diameter_mm: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _point(self.center_mm, f"Truth center_mm ({self.scan_id})"))
        diameter = float(self.diameter_mm)
        if not (math.isfinite(diameter) and diameter > 0):
            raise ValueError(f"Truth diameter_mm must be finite and > 0, got {self.diameter_mm!r}")
        object.__setattr__(self, "diameter_mm", diameter)


@dataclass(frozen=True, eq=False)
class FrocResult:
    """The FROC curve and its summary.

    Args:
        fp_rates: The FP/scan rates the sensitivities are read at.
        sensitivities: Sensitivity at each of ``fp_rates`` (NaN when ``n_truths == 0``).
        cpm: Mean of ``sensitivities``.
        fps_per_scan: Curve, false positives per scan at each threshold (non-decreasing).
        sensitivity: Curve, fraction of true nodules detected at each threshold (non-decreasing).
        thresholds: Curve, the distinct confidences, decreasing; point ``i`` keeps ``confidence >= t[i]``.
        n_scans: Scans in the FP denominator.
        n_truths: True nodules.
        n_ignored: Findings that were neither TP nor FP (extra hits on a nodule).
        note: Why the scores are NaN, or empty.

    Shapes:
        fps_per_scan, sensitivity, thresholds: ``(P,)``, one point per distinct confidence of a TP or FP;
        ``P == 0`` without findings.
    """

    fp_rates: tuple[float, ...]
    sensitivities: tuple[float, ...]
    cpm: float
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    n_scans: int
    n_truths: int
    n_ignored: int = 0
    note: str = field(default="")

    def sensitivity_at(self, rate: float) -> float:
        """Highest sensitivity with FPs/scan <= ``rate`` (step interpolation; see the module docstring)."""
        return _step_sensitivity(self.fps_per_scan, self.sensitivity, self.n_truths, rate)

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN becomes ``None``); rates are keyed like ``"0.125"`` and ``"1"``."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        out = {
            "cpm": clean(self.cpm),
            "sensitivity_at_1fp": clean(self.sensitivity_at(1.0)),
            "sensitivities": {
                f"{r:g}": clean(s) for r, s in zip(self.fp_rates, self.sensitivities, strict=True)
            },
            "n_scans": self.n_scans,
            "n_truths": self.n_truths,
        }
        if self.note:
            out["note"] = self.note
        return out


def _step_sensitivity(fps_per_scan: np.ndarray, sensitivity: np.ndarray, n_truths: int, rate: float) -> float:
    if n_truths == 0:
        return math.nan
    reachable = fps_per_scan <= rate + _RATE_SLACK
    return float(sensitivity[reachable].max()) if reachable.any() else 0.0


def _check_rates(fp_rates: Iterable[float]) -> tuple[float, ...]:
    rates = tuple(float(r) for r in fp_rates)
    if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"fp_rates must be a non-empty sequence of finite rates > 0, got {rates!r}")
    return rates


def _check_scans(scan_ids: Iterable[str], findings: Sequence[Finding], truths: Sequence[Truth]) -> int:
    ids = list(scan_ids)
    if not ids:
        raise ValueError("scan_ids is empty: FPs per scan needs at least one scan")
    known = set(ids)
    if len(known) != len(ids):
        duplicates = sorted(s for s, n in Counter(ids).items() if n > 1)
        raise ValueError(f"scan_ids has duplicates, which would inflate the denominator: {duplicates[:5]}")
    for kind, items in (("findings", findings), ("truths", truths)):
        unknown = sorted({item.scan_id for item in items} - known)
        if unknown:
            raise ValueError(
                f"{len(unknown)} scan id(s) in {kind} are not in scan_ids, e.g. {unknown[:5]}; "
                "pass every evaluated scan in scan_ids"
            )
    return len(ids)


def _events(findings: Sequence[Finding], truths: Sequence[Truth]) -> tuple[np.ndarray, np.ndarray, int]:
    """Confidences at which nodules are first detected, confidences of FPs, and the ignored count."""
    truths_by_scan: dict[str, list[Truth]] = defaultdict(list)
    findings_by_scan: dict[str, list[Finding]] = defaultdict(list)
    for t in truths:
        truths_by_scan[t.scan_id].append(t)
    for f in findings:
        findings_by_scan[f.scan_id].append(f)

    tp_conf: list[float] = []
    fp_conf: list[float] = []
    n_ignored = 0
    for scan_id, scan_findings in findings_by_scan.items():
        conf = np.array([f.confidence for f in scan_findings])  # (F,)
        scan_truths = truths_by_scan.get(scan_id, [])
        if not scan_truths:
            fp_conf.extend(conf.tolist())
            continue
        fc = np.array([f.center_mm for f in scan_findings])  # (F, 3)
        tc = np.array([t.center_mm for t in scan_truths])  # (T, 3)
        radius2 = (np.array([t.diameter_mm for t in scan_truths]) / 2.0) ** 2  # (T,)
        hits = ((fc[:, None, :] - tc[None, :, :]) ** 2).sum(-1) < radius2[None, :]  # (F, T)
        hit_any = hits.any(axis=1)
        fp_conf.extend(conf[~hit_any].tolist())
        detected = hits.any(axis=0)
        best = np.where(hits, conf[:, None], -np.inf).max(axis=0)  # (T,)
        tp_conf.extend(best[detected].tolist())
        # One finding per detected nodule is its TP (argmax: the first of tied best hits); the other hits
        # are ignored. A finding that is the TP of two overlapping nodules is still one finding.
        chosen = np.argmax(np.where(hits, conf[:, None], -np.inf), axis=0)[detected]
        n_ignored += int(hit_any.sum()) - len(np.unique(chosen))
    return np.array(tp_conf, dtype=float), np.array(fp_conf, dtype=float), n_ignored


def froc(
    findings: Iterable[Finding],
    truths: Iterable[Truth],
    scan_ids: Iterable[str],
    *,
    fp_rates: Iterable[float] = FP_RATES,
) -> FrocResult:
    """FROC analysis of detections against true nodules, LUNA16 protocol (see the module docstring).

    Args:
        findings: Detections in any order.
        truths: True nodules.
        scan_ids: Every evaluated scan, with or without nodules or findings; the FP/scan denominator.
        fp_rates: FPs/scan rates for the sensitivities and the CPM; LUNA16's seven by default.

    Returns:
        The curve, the sensitivity at each rate and their mean, the CPM.

    Raises:
        ValueError: ``scan_ids`` empty or with duplicates, a finding or truth in a scan not in
            ``scan_ids``, or a bad rate.
    """
    findings = list(findings)
    truths = list(truths)
    rates = _check_rates(fp_rates)
    n_scans = _check_scans(scan_ids, findings, truths)
    n_truths = len(truths)

    tp_conf, fp_conf, n_ignored = _events(findings, truths)
    thresholds = np.unique(np.concatenate([tp_conf, fp_conf]))[::-1]  # (P,) decreasing
    # Counts of events with confidence >= each threshold, via the ascending sorted confidences.
    n_tp = len(tp_conf) - np.searchsorted(np.sort(tp_conf), thresholds, side="left")
    n_fp = len(fp_conf) - np.searchsorted(np.sort(fp_conf), thresholds, side="left")
    fps_per_scan = n_fp / n_scans
    note = ""
    if n_truths:
        sensitivity = n_tp / n_truths
    else:
        sensitivity = np.full(len(thresholds), np.nan)
        note = "no true nodules: sensitivity and CPM are undefined (NaN)"
    if not findings:
        note = note or "no findings: every sensitivity is 0"

    fps_per_scan = fps_per_scan.astype(float)
    sensitivity = sensitivity.astype(float)
    sensitivities = tuple(_step_sensitivity(fps_per_scan, sensitivity, n_truths, r) for r in rates)
    return FrocResult(
        fp_rates=rates,
        sensitivities=sensitivities,
        cpm=float(np.mean(sensitivities)),
        fps_per_scan=fps_per_scan,
        sensitivity=sensitivity,
        thresholds=thresholds.astype(float),
        n_scans=n_scans,
        n_truths=n_truths,
        n_ignored=n_ignored,
        note=note,
    )


def dice(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Dice overlap ``2 |P & T| / (|P| + |T|)`` of two masks (non-zero is inside); 1.0 when both are empty.

    Args:
        pred_mask: Predicted mask, any dtype.
        true_mask: Reference mask, same shape.

    Shapes:
        pred_mask, true_mask: any, equal, e.g. ``(Z, Y, X)``.
    """
    pred = np.asarray(pred_mask) != 0
    true = np.asarray(true_mask) != 0
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs true {true.shape}")
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred & true).sum()) / total
