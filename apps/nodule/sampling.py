"""Where ``fathom nodule train`` centres its positive crops: every nodule equally often, whatever
its size; the nodules the network misses (``nodule_peaks``) more often (``hard_weight``); centres
moved off the nodule by up to ``crop_shift`` voxels (``NoduleTrainConfig``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

POSITIVES_PER_NODULE = 64


def nodule_voxels(label: np.ndarray) -> list[np.ndarray]:
    """Flat indices of the voxels of each nodule (connected component of ``label > 0``)."""
    nodules, n = ndimage.label(label > 0)
    if n == 0:
        return []
    order = np.argsort(nodules.ravel(), kind="stable")
    counts = np.bincount(nodules.ravel(), minlength=n + 1)
    return np.split(order[counts[0] :], np.cumsum(counts[1:])[:-1])


def positive_indices(
    parts: list[np.ndarray],
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    shift: int = 0,
) -> np.ndarray:
    """Crop centres for the positive crops: ``POSITIVES_PER_NODULE`` voxels of every nodule (times
    its weight), so a 4 mm nodule is cropped as often as a 30 mm one (per-voxel sampling would show
    the network mostly the large ones), and a hard one ``weight`` times as often; each moved by up
    to ``shift`` voxels per axis (inside the volume of ``shape``)."""
    if not parts:
        return np.zeros(0, np.int64)
    weights = np.ones(len(parts), np.int64) if weights is None else np.asarray(weights, np.int64)
    centres = np.concatenate(
        [
            rng.choice(part, size=POSITIVES_PER_NODULE * int(w), replace=True)
            for part, w in zip(parts, weights, strict=True)
        ]
    )
    if not shift:
        return centres
    if shape is None:
        raise ValueError("positive_indices: shift needs the volume's shape")
    kji = np.stack(np.unravel_index(centres, shape), axis=1) + rng.integers(
        -shift, shift + 1, (len(centres), 3)
    )
    return np.ravel_multi_index(tuple(np.clip(kji, 0, np.asarray(shape) - 1).T), shape)


@torch.inference_mode()
def nodule_peaks(
    net: torch.nn.Module, image: torch.Tensor, parts: list[np.ndarray], patch: int, device, batch: int = 4
) -> np.ndarray:
    """The network's peak nodule probability over each nodule's voxels, on a ``patch``-sized crop
    of ``image`` (``(1, Z, Y, X)``, windowed) centred on the nodule, as in training."""
    shape = np.asarray(image.shape[1:])
    crops, masks = [], []
    for part in parts:
        kji = np.stack(np.unravel_index(part, tuple(shape)), axis=1)
        lo = np.clip(np.round(kji.mean(0)).astype(int) - patch // 2, 0, np.maximum(shape - patch, 0))
        box = tuple(slice(a, a + patch) for a in lo)
        crop = image[(slice(None), *box)]
        mask = np.zeros((patch,) * 3, bool)
        local = kji - lo
        inside = np.all(local < patch, axis=1)
        mask[tuple(local[inside].T)] = True
        pad = [v for s in reversed(crop.shape[1:]) for v in (0, patch - s)]
        crops.append(F.pad(crop, pad) if any(pad) else crop)
        masks.append(mask)
    peaks = np.zeros(len(parts))
    for start in range(0, len(parts), batch):
        x = torch.stack(crops[start : start + batch]).to(device)
        prob = torch.softmax(net(x).float(), dim=1)[:, 1].cpu().numpy()
        for j, p in enumerate(prob):
            peaks[start + j] = float(p[masks[start + j]].max()) if masks[start + j].any() else 0.0
    return peaks


__all__ = ["POSITIVES_PER_NODULE", "nodule_peaks", "nodule_voxels", "positive_indices"]
