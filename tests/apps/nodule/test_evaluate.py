from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from apps.nodule.evaluate import FP_RATES, Finding, FrocResult, Truth, dice, froc

ORIGIN = (0.0, 0.0, 0.0)


def _hand_case() -> tuple[list[Finding], list[Truth], list[str]]:
    """3 scans, 3 nodules; scan C has none. Expected operating points worked out in the test below."""
    truths = [
        Truth("A", ORIGIN, 10.0),  # n1
        Truth("A", (50.0, 0.0, 0.0), 6.0),  # n2
        Truth("B", ORIGIN, 8.0),  # n3
    ]
    findings = [
        Finding("A", (1.0, 1.0, 1.0), 0.9),  # TP n1
        Finding("C", ORIGIN, 0.8),  # FP (scan without nodules)
        Finding("A", (2.0, 0.0, 0.0), 0.7),  # second hit on n1: ignored
        Finding("B", (0.0, 3.0, 0.0), 0.6),  # TP n3
        Finding("B", (30.0, 0.0, 0.0), 0.5),  # FP
        Finding("A", (100.0, 0.0, 0.0), 0.4),  # FP
        Finding("C", (5.0, 5.0, 5.0), 0.3),  # FP
        Finding("A", (50.0, 2.0, 0.0), 0.2),  # TP n2
    ]
    return findings, truths, ["A", "B", "C"]


def test_hand_computed_case():
    result = froc(*_hand_case())
    # threshold: TP FP -> FPs/scan, sensitivity
    # 0.9: 1 0 -> 0, 1/3 | 0.8: 1 1 -> 1/3, 1/3 | 0.6: 2 1 -> 1/3, 2/3 | 0.5: 2 2 -> 2/3, 2/3
    # 0.4: 2 3 -> 1, 2/3 | 0.3: 2 4 -> 4/3, 2/3 | 0.2: 3 4 -> 4/3, 1   (0.7 is ignored: no point)
    np.testing.assert_allclose(result.thresholds, [0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    np.testing.assert_allclose(result.fps_per_scan, np.array([0, 1, 1, 2, 3, 4, 4]) / 3)
    np.testing.assert_allclose(result.sensitivity, np.array([1, 1, 2, 2, 2, 2, 3]) / 3)
    expected = [Fraction(1, 3), Fraction(1, 3), Fraction(2, 3), Fraction(2, 3), 1, 1, 1]
    assert result.sensitivities == pytest.approx([float(e) for e in expected], abs=1e-12)
    assert result.cpm == pytest.approx(float(sum(expected) / 7), abs=1e-12)  # 5/7
    assert result.fp_rates == tuple(float(r) for r in FP_RATES)
    assert (result.n_scans, result.n_truths, result.n_ignored) == (3, 3, 1)
    assert result.note == ""


def test_input_order_does_not_matter():
    findings, truths, scans = _hand_case()
    a = froc(findings, truths, scans)
    b = froc(findings[::-1], truths[::-1], scans[::-1])
    assert a.sensitivities == b.sensitivities
    np.testing.assert_array_equal(a.fps_per_scan, b.fps_per_scan)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)


def test_double_hit_is_neither_tp_nor_fp():
    truths = [Truth("A", ORIGIN, 10.0)]
    findings = [
        Finding("A", (1.0, 0.0, 0.0), 0.8),  # extra hit, listed first
        Finding("A", (0.0, 1.0, 0.0), 0.9),  # best hit: the TP
        Finding("A", (0.0, 0.0, 2.0), 0.85),  # another extra hit
        Finding("A", (40.0, 0.0, 0.0), 0.7),  # FP
    ]
    result = froc(findings, truths, ["A"])
    np.testing.assert_allclose(result.thresholds, [0.9, 0.7])
    np.testing.assert_allclose(result.fps_per_scan, [0.0, 1.0])
    np.testing.assert_allclose(result.sensitivity, [1.0, 1.0])
    assert result.n_ignored == 2
    assert result.cpm == 1.0


def test_double_hit_with_equal_confidence_counts_once():
    truths = [Truth("A", ORIGIN, 10.0)]
    findings = [Finding("A", (1.0, 0.0, 0.0), 0.5), Finding("A", (-1.0, 0.0, 0.0), 0.5)]
    result = froc(findings, truths, ["A"])
    np.testing.assert_allclose(result.sensitivity, [1.0])
    np.testing.assert_allclose(result.fps_per_scan, [0.0])
    assert result.n_ignored == 1


def test_one_finding_inside_two_overlapping_nodules_hits_both():
    truths = [Truth("A", ORIGIN, 10.0), Truth("A", (4.0, 0.0, 0.0), 10.0)]
    result = froc([Finding("A", (2.0, 0.0, 0.0), 0.9)], truths, ["A"])
    np.testing.assert_allclose(result.sensitivity, [1.0])
    assert result.n_ignored == 0


@pytest.mark.parametrize(
    ("center", "hit"),
    [
        ((5.0, 0.0, 0.0), False),  # exactly on the surface: LUNA16 uses dist < radius
        ((4.999, 0.0, 0.0), True),
        ((0.0, 0.0, -5.0), False),
        ((3.0, 3.0, 3.0), False),  # |c| = 5.196 > 5 although every axis is within 5
        ((2.8, 2.8, 2.8), True),  # |c| = 4.85
    ],
)
def test_radius_boundary(center, hit):
    result = froc([Finding("A", center, 0.9)], [Truth("A", ORIGIN, 10.0)], ["A"])
    if hit:
        np.testing.assert_allclose((result.fps_per_scan, result.sensitivity), [[0.0], [1.0]])
    else:
        np.testing.assert_allclose((result.fps_per_scan, result.sensitivity), [[1.0], [0.0]])


def test_finding_in_another_scan_does_not_hit():
    truths = [Truth("A", ORIGIN, 10.0)]
    result = froc([Finding("B", ORIGIN, 0.9)], truths, ["A", "B"])
    np.testing.assert_allclose(result.sensitivity, [0.0])
    np.testing.assert_allclose(result.fps_per_scan, [0.5])


def test_scans_without_truths_count_in_the_denominator():
    truths = [Truth("A", ORIGIN, 10.0)]
    findings = [Finding("A", (30.0, 0.0, 0.0), 0.9), Finding("A", ORIGIN, 0.5)]  # FP first, then the TP
    one = froc(findings, truths, ["A"])
    assert one.fps_per_scan.tolist() == [1.0, 1.0]
    assert one.sensitivity_at(0.5) == 0.0
    assert one.sensitivity_at(1) == 1.0
    four = froc(findings, truths, ["A", "B", "C", "D"])
    assert four.fps_per_scan.tolist() == [0.25, 0.25]
    assert four.sensitivities[:2] == (0.0, 1.0)  # 0.125 then 0.25
    eight = froc(findings, truths, [f"s{i}" for i in range(7)] + ["A"])
    assert eight.sensitivities[0] == 1.0  # 1 FP / 8 scans is exactly rate 0.125


def test_tied_tp_and_fp_enter_together():
    truths = [Truth("A", ORIGIN, 10.0)]
    findings = [Finding("A", (30.0, 0.0, 0.0), 0.5), Finding("A", ORIGIN, 0.5)]
    for order in (findings, findings[::-1]):
        result = froc(order, truths, ["A"])
        np.testing.assert_allclose(result.thresholds, [0.5])
        np.testing.assert_allclose(result.fps_per_scan, [1.0])
        # Step interpolation: no threshold gives the nodule at 0.5 FPs/scan (np.interp would say 0.5).
        assert result.sensitivity_at(0.5) == 0.0
        assert result.sensitivity_at(1) == 1.0


def test_perfect_detector_scores_one():
    truths = [Truth(s, (10.0 * i, 0.0, 0.0), 6.0) for i, s in enumerate("ABC")]
    findings = [Finding(t.scan_id, t.center_mm, 0.9) for t in truths]
    findings += [Finding("A", (200.0, 0.0, 0.0), 0.1)] * 20  # low-confidence FPs do not matter
    result = froc(findings, truths, ["A", "B", "C", "D"])
    assert result.sensitivities == (1.0,) * 7
    assert result.cpm == 1.0


def test_no_findings_gives_zeros():
    result = froc([], [Truth("A", ORIGIN, 10.0)], ["A", "B"])
    assert result.sensitivities == (0.0,) * 7
    assert result.cpm == 0.0
    assert result.fps_per_scan.shape == result.sensitivity.shape == result.thresholds.shape == (0,)
    assert "no findings" in result.note


def test_only_false_positives_gives_zeros():
    result = froc([Finding("B", ORIGIN, 0.3)], [Truth("A", ORIGIN, 10.0)], ["A", "B"])
    assert result.cpm == 0.0


@pytest.mark.parametrize("findings", [[], [Finding("A", ORIGIN, 0.4)]])
def test_no_truths_gives_nan_and_a_note(findings):
    result = froc(findings, [], ["A"])
    assert result.n_truths == 0
    assert all(math.isnan(s) for s in result.sensitivities)
    assert math.isnan(result.cpm)
    assert "no true nodules" in result.note
    d = result.to_dict()
    assert d["cpm"] is None and d["sensitivity_at_1fp"] is None
    json.dumps(d, allow_nan=False)


def test_to_dict_is_json_ready():
    d = froc(*_hand_case()).to_dict()
    assert set(d) == {"cpm", "sensitivity_at_1fp", "sensitivities", "n_scans", "n_truths"}
    assert list(d["sensitivities"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert d["sensitivity_at_1fp"] == d["sensitivities"]["1"] == pytest.approx(2 / 3)
    assert d["cpm"] == pytest.approx(5 / 7)
    assert (d["n_scans"], d["n_truths"]) == (3, 3)
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_custom_fp_rates():
    result = froc(*_hand_case(), fp_rates=[1, 2])
    assert result.sensitivities == pytest.approx([2 / 3, 1.0])
    assert result.cpm == pytest.approx(5 / 6)
    assert isinstance(result, FrocResult)


def test_unknown_scan_id_in_findings_is_refused():
    with pytest.raises(ValueError, match=r"findings are not in scan_ids.*'Z'"):
        froc([Finding("Z", ORIGIN, 0.5)], [], ["A"])


def test_unknown_scan_id_in_truths_is_refused():
    with pytest.raises(ValueError, match=r"truths are not in scan_ids.*'Z'"):
        froc([], [Truth("Z", ORIGIN, 5.0)], ["A"])


@pytest.mark.parametrize(
    ("scan_ids", "message"), [([], "scan_ids is empty"), (["A", "B", "A"], r"duplicates.*'A'")]
)
def test_bad_scan_ids(scan_ids, message):
    with pytest.raises(ValueError, match=message):
        froc([], [], scan_ids)


@pytest.mark.parametrize("rates", [[], [0.0], [-1.0], [math.inf], [1.0, math.nan]])
def test_bad_fp_rates(rates):
    with pytest.raises(ValueError, match="fp_rates"):
        froc([], [], ["A"], fp_rates=rates)


@pytest.mark.parametrize("confidence", [math.nan, math.inf, -math.inf])
def test_non_finite_confidence_is_refused(confidence):
    with pytest.raises(ValueError, match="confidence must be finite"):
        Finding("A", ORIGIN, confidence)


@pytest.mark.parametrize("center", [(0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (0.0, math.nan, 0.0)])
def test_bad_centers_are_refused(center):
    with pytest.raises(ValueError, match="center_mm"):
        Finding("A", center, 0.5)
    with pytest.raises(ValueError, match="center_mm"):
        Truth("A", center, 5.0)


@pytest.mark.parametrize("diameter", [0.0, -3.0, math.nan, math.inf])
def test_bad_diameter_is_refused(diameter):
    with pytest.raises(ValueError, match="diameter_mm"):
        Truth("A", ORIGIN, diameter)


def test_numpy_values_are_converted():
    f = Finding("A", np.array([1, 2, 3]), np.float32(0.5))
    assert f.center_mm == (1.0, 2.0, 3.0) and type(f.confidence) is float


def test_dice():
    a = np.zeros((3, 4, 5), dtype=bool)
    b = np.zeros_like(a)
    assert dice(a, b) == 1.0  # both empty
    a[0, :2, :2] = True  # 4 voxels
    assert dice(a, b) == 0.0
    assert dice(a, a) == 1.0
    b[0, :2, :1] = True  # 2 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 2))
    assert dice(a.astype(np.int16) * 7, b.astype(np.uint8)) == pytest.approx(2 / 3)  # non-zero is inside


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def _brute_force_curve(findings, truths, n_scans):
    """Independent reference: at each threshold, re-match the kept findings from scratch."""
    points = []
    for t in sorted({f.confidence for f in findings}, reverse=True):
        kept = [f for f in findings if f.confidence >= t]

        def inside(f, n):
            return f.scan_id == n.scan_id and math.dist(f.center_mm, n.center_mm) < n.diameter_mm / 2

        detected = sum(any(inside(f, n) for f in kept) for n in truths)
        fps = sum(not any(inside(f, n) for n in truths) for f in kept)
        points.append((t, fps / n_scans, detected / len(truths)))
    # Thresholds that add only ignored hits leave the curve unchanged; drop the repeats.
    unique = [p for i, p in enumerate(points) if i == 0 or p[1:] != points[i - 1][1:]]
    return unique


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    scans = [f"s{i}" for i in range(4)]
    truths = [
        Truth(str(rng.choice(scans)), tuple(rng.uniform(0, 40, 3)), float(rng.uniform(4, 20)))
        for _ in range(6)
    ]
    findings = [
        Finding(str(rng.choice(scans)), tuple(rng.uniform(0, 40, 3)), float(rng.integers(0, 8)) / 8)
        for _ in range(20)
    ]
    for _ in range(20):  # near a nodule: hits, double hits and near misses
        t = truths[rng.integers(len(truths))]
        center = tuple(np.asarray(t.center_mm) + rng.normal(0, t.diameter_mm / 3, 3))
        findings.append(Finding(t.scan_id, center, float(rng.integers(0, 8)) / 8))
    result = froc(findings, truths, scans)
    reference = _brute_force_curve(findings, truths, len(scans))
    got = list(zip(result.thresholds, result.fps_per_scan, result.sensitivity, strict=True))
    got = [p for i, p in enumerate(got) if i == 0 or p[1:] != got[i - 1][1:]]
    np.testing.assert_allclose(got, reference)
    for rate, sens in zip(result.fp_rates, result.sensitivities, strict=True):
        assert sens == max([s for _, f, s in reference if f <= rate], default=0.0)
