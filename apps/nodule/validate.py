"""Scoring a detector on phantoms: FROC/CPM (LUNA16 protocol) and Dice of the reported masks.

Used by ``fathom nodule train`` (validation, model selection), ``fathom nodule evaluate`` and
``fathom bench nodule``. Phantom seeds come in streams: phantom ``i`` of stream ``r`` under seed ``s``
is drawn with ``phantom_seed(1000 * s + r, i)``. Training uses streams 0-3 (``train.STREAMS``);
evaluation uses ``EVAL_STREAM``, so held-out phantoms never coincide with training ones, whatever
the two seeds are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from apps.nodule.evaluate import Finding, Truth, dice, froc
from apps.nodule.phantoms import Phantom, PhantomConfig, make_phantom, phantom_seed
from connectors.dicom.volume import CTVolume


@dataclass
class Scan:
    """One CT with its true nodules, from any source (phantoms, LUNA16, LIDC-IDRI).

    Args:
        scan_id: A name unique within an evaluation.
        volume: The CT.
        truths: ``(centre_mm (x, y, z), diameter_mm)`` per true nodule, patient coordinates.
        mask: The nodules' voxels on the volume's grid when known (phantoms, LIDC contours), else
            None (LUNA16 gives centres and diameters only; training then paints spheres).
    """

    scan_id: str
    volume: CTVolume
    truths: list[tuple[tuple[float, float, float], float]]
    mask: np.ndarray | None = None

    def nodule_mask(self) -> np.ndarray:
        """``mask``, or spheres of the true diameters when it is None; bool ``(Z, Y, X)``."""
        if self.mask is not None:
            return self.mask != 0
        out = np.zeros(self.volume.shape, bool)
        spacing = np.asarray(self.volume.spacing, np.float64)
        for centre, diameter in self.truths:
            kji = self.volume.patient_to_voxel(np.asarray(centre, np.float64))
            r = diameter / 2 / spacing
            lo = np.maximum(np.floor(kji - r).astype(int), 0)
            hi = np.minimum(np.ceil(kji + r).astype(int) + 1, self.volume.shape)
            if np.any(hi <= lo):
                continue
            grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
            inside = (
                sum(((g - c) * s) ** 2 for g, c, s in zip(grid, kji, spacing, strict=True))
                <= (diameter / 2) ** 2
            )
            out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] |= inside
        return out


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


def phantom_scan(phantom: Phantom, name: str = "phantom") -> Scan:
    """A phantom as a ``Scan`` (its exact nodule mask included)."""
    truths = [(tuple(n.centre_mm), float(n.diameter_mm)) for n in phantom.nodules]
    return Scan(name, phantom_volume(phantom, name), truths, phantom.nodule_mask)  # type: ignore[arg-type]


EVAL_STREAM = 7


def phantoms(
    size: str, n: int, seed: int, stream: int = EVAL_STREAM, *, juxtavascular: float = 0.0
) -> Iterator[Phantom]:
    """``n`` phantoms of the named size from ``stream`` under ``seed`` (see the module docstring),
    with ``juxtavascular`` as their ``PhantomConfig.juxtavascular_fraction`` (training only)."""
    config = dataclasses.replace(PhantomConfig.named(size), juxtavascular_fraction=juxtavascular)
    for i in range(n):
        yield make_phantom(config, phantom_seed(1000 * seed + stream, i))


def score_detector(detector, scans: Iterable[Scan | Phantom]) -> dict:
    """Run ``detector`` on each scan; CPM, sensitivity at 1 FP/scan, mean Dice, seconds per scan.

    Dice compares the reported nodules' mask with the true nodule mask per scan (1.0 when both are
    empty), averaged over the scans whose mask is known (None when none is).
    """
    findings, truths, scan_ids, dices, seconds = [], [], [], [], []
    for i, item in enumerate(scans):
        scan = item if isinstance(item, Scan) else phantom_scan(item, f"scan-{i}")
        if scan.scan_id in scan_ids:
            raise ValueError(f"scan id {scan.scan_id!r} appears twice")
        scan_ids.append(scan.scan_id)
        detection = detector.detect(scan.volume)
        seconds.append(detection.timings.get("total_s", math.nan))
        findings += [Finding(scan.scan_id, c.center_mm, c.confidence) for c in detection.candidates]
        truths += [Truth(scan.scan_id, centre, diameter) for centre, diameter in scan.truths]
        if scan.mask is not None:
            dices.append(dice(detection.labels > 0, scan.mask != 0))
    result = froc(findings, truths, scan_ids)
    out = result.to_dict()
    out["dice"] = float(np.mean(dices)) if dices else None
    out["seconds_per_scan"] = float(np.median(seconds)) if seconds else math.nan
    return out


__all__ = ["EVAL_STREAM", "Scan", "phantom_scan", "phantom_volume", "phantoms", "score_detector"]
