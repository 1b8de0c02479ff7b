"""What the detector's second stage learns from: every candidate's features with whether it hits a
true nodule (the false-positive reducer), and cubes around nodules and candidates (the patch classifier).

A candidate *hits* a nodule when its centre lies strictly inside the nodule's sphere, as the LUNA16
protocol counts it (``evaluate.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from apps.nodule.detect import NoduleDetector
from apps.nodule.patches import PatchExamples
from apps.nodule.validate import Scan


def hits_a_nodule(centre_mm: Sequence[float], truths: Sequence[tuple[Sequence[float], float]]) -> bool:
    """Whether ``centre_mm`` lies inside one of ``truths`` (``(centre_mm, diameter_mm)`` each)."""
    return any(np.linalg.norm(np.subtract(centre_mm, c)) < d / 2 for c, d in truths)


def candidate_table(detector: NoduleDetector, scans: list[Scan]) -> tuple[np.ndarray, np.ndarray]:
    """Features and hit labels (LUNA16: centre inside a true nodule's sphere) of every candidate."""
    rows, hits = [], []
    for scan in scans:
        detection = detector.detect(scan.volume)
        for c in detection.candidates:
            rows.append(c.features)
            hits.append(hits_a_nodule(c.center_mm, scan.truths))
    return np.asarray(rows, np.float64).reshape(len(rows), -1), np.asarray(hits, bool)


def patch_examples(
    detector: NoduleDetector, scans: list[Scan], items: list[dict], negatives: int, seed: int = 0
) -> list[PatchExamples]:
    """Cubes to train the patch classifier: per scan, the true nodules' centres and the candidates
    that hit one (positives), the candidates that miss and ``negatives`` random crop centres."""
    rng = np.random.default_rng(seed)
    t = detector.config.spacing_mm
    out = []
    for scan, item in zip(scans, items, strict=True):
        label = item["label"][0].numpy()
        shape = label.shape
        nodules, n = ndimage.label(label > 0)
        pos = [np.asarray(c) for c in ndimage.center_of_mass(label > 0, nodules, range(1, n + 1))]
        neg = []
        to_work = np.asarray(scan.volume.spacing, np.float64) / t
        for c in detector.detect(scan.volume).candidates:
            centre = np.asarray(c.center_voxel) * to_work
            (pos if hits_a_nodule(c.center_mm, scan.truths) else neg).append(centre)
        if negatives and len(item["bg"]):
            picks = rng.choice(item["bg"], size=min(negatives, len(item["bg"])), replace=False)
            neg += list(np.stack(np.unravel_index(picks, shape), axis=1))
        out.append(
            PatchExamples(item["image"][0], np.asarray(pos).reshape(-1, 3), np.asarray(neg).reshape(-1, 3))
        )
    return out


__all__ = ["candidate_table", "hits_a_nodule", "patch_examples"]
