"""``CTVolume``: a CT image in Hounsfield units with the geometry that places it in the patient.

Conventions (the same as ITK/SimpleITK and MONAI's DICOM readers, in LPS patient coordinates):

- ``hu[k, j, i]`` is slice ``k``, row ``j``, column ``i``; shape ``(Z, Y, X)``.
- ``spacing`` is ``(z, y, x)`` in mm, array order: between slices, between rows, between columns.
- ``origin`` is the patient position ``(x, y, z)`` in mm of the centre of voxel ``(0, 0, 0)``.
- ``direction`` is 3x3; its columns are the patient-space unit vectors of the column index ``i``
  (DICOM row direction), the row index ``j`` (DICOM column direction) and the slice index ``k``
  (the image-plane normal, towards increasing slice position).

Also here: the two resampling steps the reader applies when asked (``deshear_slices`` for gantry
tilt, ``restack_uniform`` for uneven slice spacing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units and its patient geometry.

    Args:
        hu: Voxel values in HU (after rescale slope/intercept), float32.
        spacing: ``(z, y, x)`` voxel spacing in mm.
        origin: ``(x, y, z)`` patient position in mm of voxel ``(0, 0, 0)``.
        direction: 3x3 matrix; columns are the directions of the x (column), y (row) and
            z (slice) index axes in patient space.
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: Always ``"CT"`` for volumes made by the reader.
        manufacturer: Manufacturer (0008,0070), "" when absent.
        slice_thickness: Nominal slice thickness in mm (0018,0050), ``None`` when absent.
        kernel: Convolution kernel (0018,1210), "" when absent.
        rescale_type: Rescale Type (0028,1054) when given ("HU", or e.g. "US" for derived maps).
        source_files: The files the volume came from, in slice order (one per slice, or the single
            multi-frame file).
        resampled: What the reader resampled and why (empty when the data are as acquired).

    Shapes:
        hu: ``(Z, Y, X)``; spacing ``(3,)``; origin ``(3,)``; direction ``(3, 3)``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_uid: str
    study_uid: str
    modality: str = "CT"
    manufacturer: str = ""
    slice_thickness: float | None = None
    kernel: str = ""
    rescale_type: str = ""
    source_files: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume.hu must be 3-D (Z, Y, X), got shape {self.hu.shape}")
        self.direction = np.asarray(self.direction, dtype=np.float64)
        if self.direction.shape != (3, 3):
            raise ValueError(f"CTVolume.direction must be 3x3, got shape {self.direction.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"CTVolume.spacing must be three positive numbers, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """The 4x4 matrix taking homogeneous ``(k, j, i, 1)`` array indices to patient ``(x, y, z, 1)``.

        Returns:
            ``(4, 4)`` float64 array.
        """
        sz, sy, sx = self.spacing
        m = np.eye(4)
        # Array index order is (k, j, i) = (z, y, x): column 0 of the affine moves along the slices.
        m[:3, 0] = self.direction[:, 2] * sz
        m[:3, 1] = self.direction[:, 1] * sy
        m[:3, 2] = self.direction[:, 0] * sx
        m[:3, 3] = self.origin
        return m

    def voxel_to_patient(self, indices: np.ndarray) -> np.ndarray:
        """Map array indices ``(k, j, i)`` (fractional allowed) to patient coordinates in mm.

        Args:
            indices: ``(..., 3)`` voxel indices in array order ``(z, y, x)``.

        Returns:
            ``(..., 3)`` patient positions ``(x, y, z)`` in mm (LPS).

        Raises:
            ValueError: When the last axis is not of length 3.
        """
        idx = np.asarray(indices, dtype=np.float64)
        if idx.shape[-1] != 3:
            raise ValueError(f"indices must have a last axis of 3 (k, j, i), got shape {idx.shape}")
        a = self.affine
        return idx @ a[:3, :3].T + a[:3, 3]

    def patient_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`voxel_to_patient`.

        Args:
            points: ``(..., 3)`` patient positions ``(x, y, z)`` in mm.

        Returns:
            ``(..., 3)`` fractional array indices ``(k, j, i)``.
        """
        pts = np.asarray(points, dtype=np.float64)
        a = self.affine
        return (pts - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T


def deshear_slices(
    hu: np.ndarray, inplane: np.ndarray, row: np.ndarray, col: np.ndarray, pixel_spacing: tuple[float, float]
) -> np.ndarray:
    """Gantry-tilt correction: shift each slice within its plane so all slices share slice 0's in-plane grid.

    Slice ``k``'s pixel ``(j, i)`` lies at ``p0 + s_k n + (i dx + q_k.row) row + (j dy + q_k.col) col``,
    where ``q_k`` is the in-plane part of its offset from slice 0; sampling at ``(j - q_k.col / dy,
    i - q_k.row / dx)`` (bilinear, the dcm2niix approach) puts it at ``p0 + s_k n + i dx row + j dy col``.
    Pixels shifted in from outside the image take the volume's minimum.

    Args:
        hu: The stack, slices ordered along the normal.
        inplane: Each slice's offset from slice 0 minus its component along the normal, patient mm.
        row: Unit row direction (DICOM ImageOrientationPatient[:3]).
        col: Unit column direction (ImageOrientationPatient[3:]).
        pixel_spacing: ``(dy, dx)`` in mm (DICOM PixelSpacing order).

    Returns:
        The corrected stack, same shape and dtype.

    Shapes:
        hu: ``(Z, Y, X)``; inplane: ``(Z, 3)``; row, col: ``(3,)``.
    """
    from scipy import ndimage

    fill = float(hu.min())
    out = np.empty_like(hu)
    for k in range(hu.shape[0]):
        b = float(np.dot(inplane[k], col)) / pixel_spacing[0]
        a = float(np.dot(inplane[k], row)) / pixel_spacing[1]
        out[k] = ndimage.shift(hu[k], (b, a), order=1, mode="constant", cval=fill)
    return out


def restack_uniform(hu: np.ndarray, s: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate a stack with uneven slice positions onto ``s[0] + m * step``, ``m = 0, 1, ...``.

    Args:
        hu: The stack.
        s: Slice positions along the normal in mm, strictly increasing.
        step: The new slice spacing in mm.

    Returns:
        The resampled stack and its slice positions (the last at or before ``s[-1]``).

    Shapes:
        hu: ``(Z, Y, X)``; s: ``(Z,)``; returns ``(Z', Y, X)`` and ``(Z',)``.
    """
    n_out = int(np.floor((s[-1] - s[0]) / step + 1e-6)) + 1
    targets = s[0] + step * np.arange(n_out)
    hi = np.clip(np.searchsorted(s, targets, side="right"), 1, len(s) - 1)
    lo = hi - 1
    w = ((targets - s[lo]) / (s[hi] - s[lo])).astype(np.float32)[:, None, None]  # (Z', 1, 1)
    return hu[lo] * (1 - w) + hu[hi] * w, targets
