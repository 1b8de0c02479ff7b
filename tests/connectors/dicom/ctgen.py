"""Write small synthetic CT slices with pydicom, for the reader and catalog tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_slice(
    pixels: np.ndarray,
    *,
    position: tuple[float, float, float],
    orientation: tuple[float, ...] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    series_uid: str,
    study_uid: str,
    slope: float = 1.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    instance: int = 1,
    thickness: float = 1.0,
) -> Dataset:
    """One CT slice as a dataset (stored pixels are ``pixels``, int16).

    Shapes:
        pixels: ``(Y, X)``.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SYNTH"
    ds.PatientName = "Synthetic^Phantom"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.Modality = modality
    ds.Manufacturer = "Fathom test"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.PixelSpacing = [pixel_spacing[0], pixel_spacing[1]]
    ds.SliceThickness = thickness
    ds.ConvolutionKernel = "STANDARD"
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_series(
    folder: Path,
    z_positions: list[float],
    *,
    shape: tuple[int, int] = (6, 5),
    step: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] = AXIAL,
    series_uid: str | None = None,
    study_uid: str | None = None,
    **kwargs,
) -> list[Path]:
    """Write one series, one file per position; slice ``k`` stores ``100 * k + row * 10 + col``.

    ``z_positions`` are distances along ``step`` (default: the image normal) from ``(-10, -20, 0)``.
    Files are named in reverse order of position, so sorting by name would be wrong.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    r, c = np.array(orientation[:3]), np.array(orientation[3:])
    direction = np.array(step) if step is not None else np.cross(r, c)
    paths = []
    for k, z in enumerate(z_positions):
        rows, cols = np.mgrid[: shape[0], : shape[1]]
        pixels = (100 * k + 10 * rows + cols).astype(np.int16)
        pos = np.array([-10.0, -20.0, 0.0]) + z * direction
        ds = ct_slice(
            pixels,
            position=tuple(pos),
            orientation=orientation,
            series_uid=series_uid,
            study_uid=study_uid,
            instance=k + 1,
            **kwargs,
        )
        p = folder / f"im{len(z_positions) - k:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
