"""From a CT volume in HU to what the nodule network sees, the same way in training and inference.

1. ``resample``: MONAI's ``Spacing`` onto an isotropic working grid (1.5 mm by default), trilinear
   for the image, nearest for label maps. Array order stays ``(Z, Y, X)``; the affine handed to
   MONAI holds only the spacing, so nothing is flipped.
2. ``lung_mask``: air below -400 HU that does not touch the in-plane border of its slice (outside
   air always does), its largest 3-D components (lungs, airways), closed and hole-filled slice by
   slice so nodules and vessels inside the lungs, and nodules on the pleura, belong to it.
3. ``lung_box``: the lungs' bounding box plus a margin, so juxtapleural nodules are inside it;
   the network only runs there.
4. ``window``: HU clipped to ``[-1000, 400]`` and scaled to ``[0, 1]`` (MONAI ``ScaleIntensityRange``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

HU_WINDOW = (-1000.0, 400.0)
AIR_HU = -400.0


@dataclass(frozen=True)
class Box:
    """A box of array indices ``[start, stop)`` per axis ``(Z, Y, X)``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """For indexing an array."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Size per axis."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]


def resample(
    array: np.ndarray, spacing: tuple[float, float, float], target_mm: float, *, labels: bool = False
) -> np.ndarray:
    """``array`` ``(Z, Y, X)`` at ``spacing`` (mm) resampled to ``target_mm`` isotropic (MONAI ``Spacing``).

    Voxel ``(0, 0, 0)`` keeps its position; the grid covers the same extent. ``labels=True`` uses
    nearest neighbour and returns the input dtype; otherwise trilinear, float32.

    Raises:
        ValueError: A non-3-D array or a non-positive spacing.
    """
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    if array.ndim != 3:
        raise ValueError(f"resample needs a 3-D (Z, Y, X) array, got shape {array.shape}")
    if len(spacing) != 3 or min(spacing) <= 0 or target_mm <= 0:
        raise ValueError(f"spacing and target must be positive mm, got {spacing} -> {target_mm}")
    dtype = array.dtype
    data = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    affine = torch.diag(torch.tensor([*map(float, spacing), 1.0], dtype=torch.float64))
    out = Spacing(pixdim=(target_mm,) * 3, mode="nearest" if labels else "bilinear", padding_mode="border")(
        MetaTensor(data, affine=affine)
    )
    result = out.as_tensor()[0].numpy()
    return result.astype(dtype) if labels else result.astype(np.float32, copy=False)


def window(hu: np.ndarray | torch.Tensor, hu_window: tuple[float, float] = HU_WINDOW):
    """HU clipped to ``hu_window`` and scaled to ``[0, 1]`` (MONAI ``ScaleIntensityRange``)."""
    from monai.transforms import ScaleIntensityRange

    lo, hi = hu_window
    out = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(hu)
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def lung_mask(
    hu: np.ndarray, spacing: tuple[float, float, float], *, min_volume_ml: float = 5.0, close_mm: float = 10.0
) -> np.ndarray:
    """The lungs (with airways, vessels and nodules inside them) of a chest CT, bool ``(Z, Y, X)``.

    Air (< -400 HU) connected to the in-plane border of any slice is outside the body; of the rest,
    the largest 3-D components are kept (every component at least a tenth of the largest and at
    least ``min_volume_ml``). Holes are then filled and the outline closed slice by slice with a
    disk of radius ``close_mm``, which takes in juxtapleural nodules (bites out of the lung's edge
    that hole filling misses). An empty mask means no lungs were found (not a chest CT, or a field
    of view inside the lung).
    """
    air = hu < AIR_HU
    # outside air: what is connected, within its slice, to the border of the slice
    outside = np.zeros_like(air)
    for k in range(air.shape[0]):
        lab, n = ndimage.label(air[k])
        if n == 0:
            continue
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        outside[k] = np.isin(lab, edge[edge > 0])
    inner = air & ~outside
    lab, n = ndimage.label(inner)
    if n == 0:
        return np.zeros_like(air)
    sizes = np.bincount(lab.ravel())[1:].astype(np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    largest = sizes.max()
    keep = np.flatnonzero((sizes >= 0.1 * largest) & (sizes * voxel_ml >= min_volume_ml)) + 1
    mask = np.isin(lab, keep)
    r = max(0, int(round(close_mm / min(spacing[1], spacing[2]))))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2) <= r * r
    ny, nx = mask.shape[1:]
    for k in range(mask.shape[0]):
        if mask[k].any():
            plane = mask[k]
            if r:
                plane = ndimage.binary_closing(np.pad(plane, r), structure=disk)[r : r + ny, r : r + nx]
            mask[k] = ndimage.binary_fill_holes(plane)
    return mask


def lung_box(mask: np.ndarray, margin: int, *, min_size: tuple[int, int, int] = (1, 1, 1)) -> Box | None:
    """The bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array) and to at least
    ``min_size`` where the array allows; None for an empty mask."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        n = mask.shape[axis]
        a, b = max(0, int(idx[0]) - margin), min(n, int(idx[-1]) + 1 + margin)
        short = min_size[axis] - (b - a)
        if short > 0:
            a = max(0, a - (short + 1) // 2)
            b = min(n, a + min_size[axis])
            a = max(0, b - min_size[axis])
        start.append(a)
        stop.append(b)
    return Box(tuple(start), tuple(stop))  # type: ignore[arg-type]


__all__ = ["HU_WINDOW", "Box", "lung_box", "lung_mask", "resample", "window"]
