"""Scoring a detector on phantoms: FROC/CPM (LUNA16 protocol) and Dice of the reported masks.

Used by ``fathom nodule train`` (validation, model selection), ``fathom nodule evaluate`` and
``fathom bench nodule``. Phantom seeds come in streams: phantom ``i`` of stream ``r`` under seed ``s``
is drawn with ``phantom_seed(1000 * s + r, i)``. Training uses streams 0-2 (``train.STREAMS``);
evaluation uses ``EVAL_STREAM``, so held-out phantoms never coincide with training ones, whatever
the two seeds are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np

from apps.nodule.evaluate import Finding, Truth, dice, froc
from apps.nodule.phantoms import Phantom, PhantomConfig, make_phantom, phantom_seed
from connectors.dicom.volume import CTVolume


def phantom_volume(phantom: Phantom, name: str = "phantom") -> CTVolume:
    """The phantom as the ``CTVolume`` the DICOM reader would give for its series."""
    return CTVolume(
        hu=phantom.hu,
        spacing=phantom.spacing,
        origin=phantom.origin,
        direction=np.eye(3),
        series_uid=f"phantom.{name}",
        study_uid=f"phantom.{name}",
        slice_thickness=phantom.slice_thickness,
    )


EVAL_STREAM = 7


def phantoms(size: str, n: int, seed: int, stream: int = EVAL_STREAM) -> Iterator[Phantom]:
    """``n`` phantoms of the named size from ``stream`` under ``seed`` (see the module docstring)."""
    config = PhantomConfig.named(size)
    for i in range(n):
        yield make_phantom(config, phantom_seed(1000 * seed + stream, i))


def score_detector(detector, scans: Iterable[Phantom]) -> dict:
    """Run ``detector`` on each phantom; CPM, sensitivity at 1 FP/scan, mean Dice, timings.

    Dice compares the reported nodules' mask with the true nodule mask per scan (1.0 when both are
    empty), averaged over scans.
    """
    findings, truths, scan_ids, dices, seconds = [], [], [], [], []
    for i, phantom in enumerate(scans):
        scan = f"scan-{i}"
        scan_ids.append(scan)
        detection = detector.detect(phantom_volume(phantom, scan))
        seconds.append(detection.timings.get("total_s", math.nan))
        findings += [Finding(scan, c.center_mm, c.confidence) for c in detection.candidates]
        truths += [Truth(scan, n.centre_mm, n.diameter_mm) for n in phantom.nodules]
        dices.append(dice(detection.labels > 0, phantom.nodule_mask > 0))
    result = froc(findings, truths, scan_ids)
    out = result.to_dict()
    out["dice"] = float(np.mean(dices)) if dices else math.nan
    out["seconds_per_scan"] = float(np.median(seconds)) if seconds else math.nan
    return out


__all__ = ["EVAL_STREAM", "phantom_volume", "phantoms", "score_detector"]
