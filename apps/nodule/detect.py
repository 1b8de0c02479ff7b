"""Nodule detection on a CT volume: lungs, sliding-window probabilities, candidates, confidence.

``NoduleDetector.detect(volume)``:

1. resample to the model's isotropic working grid and find the lungs (``preprocess``);
2. run the U-Net with MONAI's ``sliding_window_inference`` over the lungs' bounding box plus a
   margin (``crop_to_lungs=False`` runs it over the whole volume: the plain baseline of
   ``fathom bench nodule``);
3. voxels above ``candidate_threshold`` inside the lungs (their mask closed over juxtapleural
   nodules, dilated by two voxels) form connected components, the candidates, each with its centre
   (probability-weighted, patient mm), size, intensity and shape;
4. false-positive reduction: candidates below ``min_diameter_mm`` are dropped; the model's patch
   classifier, when it has one, scores the cube of CT around each candidate (``patches.py``), and
   the ``FalsePositiveReducer`` turns each one's features into its confidence;
5. candidates at or above ``report_threshold`` are the reported nodules; each is measured again on
   the source grid (its probability map interpolated there, thresholded at ``prob_threshold``, or
   at half its peak for a faint one), which gives the label volume for the DICOM SEG, the volume,
   the diameter and the mean HU.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from apps.nodule.model import NoduleModel
from apps.nodule.preprocess import Box, lung_box, lung_mask, resample, window
from connectors.dicom.results import Nodule
from connectors.dicom.volume import CTVolume


@dataclass
class Candidate:
    """One connected component of nodule probability.

    Args:
        center_mm: Probability-weighted centre, LPS patient ``(x, y, z)`` mm.
        center_voxel: The same centre in source array indices ``(k, j, i)``.
        diameter_mm: Diameter of the sphere of the same volume.
        volume_mm3: Volume, mm3 (working grid for candidates, source grid once reported).
        mean_hu: Mean attenuation, HU.
        confidence: The false-positive reducer's score in ``[0, 1]``.
        features: ``FEATURES`` values, in that order.
    """

    center_mm: tuple[float, float, float]
    center_voxel: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    mean_hu: float
    confidence: float
    features: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        """The CLI's nodule shape plus mean HU."""
        return {
            "center_mm": [round(v, 2) for v in self.center_mm],
            "diameter_mm": round(self.diameter_mm, 2),
            "volume_mm3": round(self.volume_mm3, 1),
            "mean_hu": round(self.mean_hu, 1),
            "confidence": round(self.confidence, 4),
        }


@dataclass
class Detection:
    """What ``detect`` found in one volume.

    Args:
        candidates: Every candidate, most confident first (what FROC ranks).
        nodules: The reported candidates (confidence >= ``report_threshold``), most confident first.
        labels: Source-grid label volume ``(Z, Y, X)`` uint16: nodule ``i`` has value ``i + 1``.
        lungs_found: Whether lungs were found (else the network ran over the whole volume).
        timings: Seconds per step.
    """

    candidates: list[Candidate]
    nodules: list[Candidate]
    labels: np.ndarray
    lungs_found: bool
    timings: dict[str, float] = field(default_factory=dict)

    def dicom_nodules(self) -> list[Nodule]:
        """The reported nodules as ``connectors.dicom.results.Nodule`` (labels 1, 2, ...)."""
        return [
            Nodule(
                label=i + 1,
                center_mm=c.center_mm,
                diameter_mm=c.diameter_mm,
                volume_mm3=c.volume_mm3,
                mean_hu=c.mean_hu,
                confidence=c.confidence,
            )
            for i, c in enumerate(self.nodules)
        ]


def _elongation(points_mm: np.ndarray) -> float:
    if len(points_mm) < 3:
        return 1.0
    eig = np.linalg.eigvalsh(np.cov(points_mm.T))
    return float(np.sqrt(max(eig[-1], 0.0) / max(eig[0], 0.25)))


@functools.cache
def window_weights(roi: int, overlap: float, sigma_scale: float = 0.125) -> torch.Tensor:
    """Blending weights of a cubic sliding window (``NoduleNetConfig.blend == "gaussian"``): a
    Gaussian of the distance to its centre (sigma ``sigma_scale * roi``, peak 1), and next to nothing
    (1e-6) in the outer band of ``roi * overlap / 2`` voxels, which the neighbouring window's interior
    covers: the network sees too little around a voxel there, and a nodule cut by the window's edge
    is called background. Voxels at the volume's own border keep the band's predictions, the only
    ones there are. (MONAI's map floors its weights at 1e-3 instead, which lets such edge predictions
    outweigh the others where a voxel is far from every window's centre.)"""
    centre, sigma = (roi - 1) / 2, sigma_scale * roi
    line = torch.exp(-((torch.arange(roi, dtype=torch.float64) - centre) ** 2) / (2 * sigma**2))
    band = int(roi * overlap / 2)
    if band:
        line[:band] = line[roi - band :] = 1e-6
    return (line[:, None, None] * line[None, :, None] * line[None, None, :]).float()


class NoduleDetector:
    """A ``NoduleModel`` ready for inference on CT volumes.

    Args:
        model: The trained model.
        device: ``"cpu"``, ``"cuda"``; None picks CUDA when present.
        crop_to_lungs: Run the network only around the lungs (False: the whole volume).
    """

    def __init__(self, model: NoduleModel, device: str | None = None, *, crop_to_lungs: bool = True) -> None:
        self.model = model
        self.config = model.config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = model.net.to(self.device).eval()
        self.crop_to_lungs = crop_to_lungs

    @classmethod
    def load(cls, model_dir=None, device: str | None = None, *, crop_to_lungs: bool = True) -> NoduleDetector:
        """The model in ``model_dir`` (None: the shipped ``models/nodule-detector``)."""
        return cls(NoduleModel.load(model_dir), device, crop_to_lungs=crop_to_lungs)

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Nodule probability per voxel of a windowed working-grid image ``(Z, Y, X)`` in ``[0, 1]``."""
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(self.device)
        cfg = self.config
        weights = window_weights(cfg.roi, cfg.overlap).to(self.device) if cfg.blend == "gaussian" else None
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            logits = sliding_window_inference(
                x,
                roi_size=(cfg.roi,) * 3,
                sw_batch_size=cfg.sw_batch_size,
                predictor=self.net,
                overlap=cfg.overlap,
                mode="gaussian",
                roi_weight_map=weights,
            )
        return torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()

    def detect(self, volume: CTVolume) -> Detection:
        """Find the nodules of ``volume`` (see the module docstring)."""
        cfg = self.config
        t = cfg.spacing_mm
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        hu = resample(volume.hu, volume.spacing, t)
        lungs = lung_mask(hu, (t, t, t))
        timings["preprocess_s"] = time.perf_counter() - t0

        margin = max(1, int(round(cfg.lung_margin_mm / t)))
        box = lung_box(lungs, margin, min_size=(cfg.roi,) * 3) if self.crop_to_lungs else None
        if box is None:
            box = Box((0, 0, 0), hu.shape)  # type: ignore[arg-type]
        t1 = time.perf_counter()
        image = window(hu, cfg.hu_window)
        prob = np.zeros(hu.shape, np.float32)
        prob[box.slices] = self.probabilities(image[box.slices])
        timings["network_s"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        near = ndimage.binary_dilation(lungs, iterations=2) if lungs.any() else np.ones_like(lungs)
        candidates, comp, ids = self._candidates(prob, hu, image, near, volume)
        order = np.argsort([-c.confidence for c in candidates], kind="stable")
        candidates = [candidates[i] for i in order]
        ids = [ids[i] for i in order]
        reported = [
            (c, cid) for c, cid in zip(candidates, ids, strict=True) if c.confidence >= cfg.report_threshold
        ]
        labels = np.zeros(volume.shape, np.uint16)
        nodules = []
        objects = ndimage.find_objects(comp) if reported else []
        for c, cid in reported:
            # the component's box in the working grid, grown by 2 voxels for the dilation below
            box = tuple(
                slice(max(0, sl.start - 2), min(n, sl.stop + 2))
                for sl, n in zip(objects[cid - 1], comp.shape, strict=True)
            )
            start = np.array([sl.start for sl in box])
            measured = self._measure(c, prob[box], comp[box] == cid, start, volume, labels, len(nodules) + 1)
            if measured is not None:
                nodules.append(measured)
        timings["candidates_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        return Detection(candidates, nodules, labels, bool(lungs.any()), timings)

    def _candidates(
        self, prob: np.ndarray, hu: np.ndarray, image: np.ndarray, near: np.ndarray, volume: CTVolume
    ):
        cfg = self.config
        t = cfg.spacing_mm
        threshold = cfg.prob_threshold if cfg.candidate_threshold is None else cfg.candidate_threshold
        comp, _ = ndimage.label((prob > threshold) & near)
        scale = t / np.asarray(volume.spacing, np.float64)  # working index -> source index
        min_voxels = (np.pi / 6 * cfg.min_diameter_mm**3) / t**3
        rows, found, ids, centres = [], [], [], []
        for cid, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            local = comp[sl] == cid
            count = int(local.sum())
            if count < min_voxels:
                continue
            kji = np.argwhere(local).astype(np.float64) + [s.start for s in sl]
            p = prob[sl][local].astype(np.float64)
            h = hu[sl][local].astype(np.float64)
            volume_mm3 = count * t**3
            centre_w = (kji * p[:, None]).sum(0) / p.sum()
            features = (
                float(np.log(volume_mm3)),
                float(p.max()),
                float(p.mean()),
                _elongation(kji * t),
                count / float(np.prod(local.shape)),
                float(h.mean()),
                float(h.std()),
            )
            centre_src = centre_w * scale
            found.append(
                Candidate(
                    center_mm=tuple(float(v) for v in volume.voxel_to_patient(centre_src)),
                    center_voxel=tuple(float(v) for v in centre_src),
                    diameter_mm=float((6 * volume_mm3 / np.pi) ** (1 / 3)),
                    volume_mm3=volume_mm3,
                    mean_hu=float(h.mean()),
                    confidence=0.0,
                    features=features,
                )
            )
            rows.append(features)
            ids.append(cid)
            centres.append(centre_w)
        if found and self.model.patch is not None:
            logits = self.model.patch.logits(image, np.asarray(centres))
            rows = [row + (float(v),) for row, v in zip(rows, logits, strict=True)]
            for c, row in zip(found, rows, strict=True):
                c.features = row
        if found:
            conf = self.model.reducer.confidence(np.asarray(rows).reshape(len(rows), -1))
            for c, s in zip(found, conf, strict=True):
                c.confidence = float(s)
        return found, comp, ids

    def _measure(
        self,
        c: Candidate,
        prob: np.ndarray,
        member: np.ndarray,
        start: np.ndarray,
        volume: CTVolume,
        labels: np.ndarray,
        value: int,
    ) -> Candidate | None:
        """Re-measure a reported candidate on the source grid and paint it into ``labels``.

        ``prob`` and ``member`` are the working-grid box of the component that begins at ``start``.
        """
        t = self.config.spacing_mm
        spacing = np.asarray(volume.spacing, np.float64)
        member = ndimage.binary_dilation(member, iterations=1)
        found = np.argwhere(member)
        lo_w, hi_w = found.min(0) + start, found.max(0) + 1 + start
        lo = np.maximum(np.floor(lo_w * t / spacing).astype(int) - 1, 0)
        hi = np.minimum(np.ceil(hi_w * t / spacing).astype(int) + 1, volume.shape)
        grids = np.meshgrid(
            *[np.arange(a, b) * s / t - o for a, b, s, o in zip(lo, hi, spacing, start, strict=True)],
            indexing="ij",
        )
        local = ndimage.map_coordinates(np.where(member, prob, 0.0), grids, order=1, mode="constant")
        # a faint candidate (peak under prob_threshold, found at a lower candidate_threshold) is
        # outlined at half its peak
        threshold = min(self.config.prob_threshold, 0.5 * float(prob[member].max()))
        mask = (local > threshold) & (labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] == 0)
        count = int(mask.sum())
        if count == 0:
            return None
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        labels[box][mask] = value
        volume_mm3 = count * float(np.prod(spacing))
        return Candidate(
            center_mm=c.center_mm,
            center_voxel=c.center_voxel,
            diameter_mm=float((6 * volume_mm3 / np.pi) ** (1 / 3)),
            volume_mm3=volume_mm3,
            mean_hu=float(volume.hu[box][mask].mean()),
            confidence=c.confidence,
            features=c.features,
        )


__all__ = ["Candidate", "Detection", "NoduleDetector"]
