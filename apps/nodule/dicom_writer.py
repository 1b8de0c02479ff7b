"""Write a phantom as a real CT series (one DICOM file per slice) plus its ground truth.

Layout of ``write_phantom(phantom, folder)``::

    folder/dicom/slice_0000.dcm ...   CT Image Storage, explicit VR little endian, signed 16-bit,
                                      RescaleIntercept -1024, RescaleSlope 1 (HU = stored - 1024)
    folder/masks.npz                  lung_mask (bool), nodule_mask (int16 labels), tissue (uint8), compressed
    folder/truth.json                 geometry, UIDs and one record per nodule (``NoduleTruth``)

Slices are axial (ImageOrientationPatient ``1\\0\\0\\0\\1\\0``), ordered by increasing z; the masks are in
the same ``(Z, Y, X)`` order as ``connectors.dicom.read_series`` returns. UIDs derive from the phantom's
seed, so the same seed writes the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from apps.nodule.phantoms import TISSUES, Phantom

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
_AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _uid(seed: int, *parts: str) -> str:
    """A valid UID, the same for the same seed and parts (pydicom hashes the entropy sources)."""
    return generate_uid(entropy_srcs=["fathom-nodule-phantom", str(seed), *parts])


def _slice_dataset(phantom: Phantom, k: int, uids: dict[str, str], patient_id: str) -> Dataset:
    """Slice ``k``: Patient, Study, Series, Frame of Reference, Equipment, Image, CT and SOP modules."""
    sz, sy, sx = phantom.spacing
    position = np.asarray(phantom.origin) + np.array([0.0, 0.0, k * sz])
    sop_uid = _uid(phantom.seed, "sop", str(k))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Synthetic chest CT phantom"
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = uids["series"]
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Chest phantom {phantom.slice_thickness:g} mm"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    # Frame of Reference
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "Fathom"
    ds.ManufacturerModelName = "nodule phantom"
    # General Image + CT Image
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = RESCALE_SLOPE
    ds.RescaleType = "HU"
    # Image Plane
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = list(_AXIAL)
    ds.PixelSpacing = [round(float(sy), 6), round(float(sx), 6)]  # (row spacing, column spacing)
    ds.SliceThickness = round(float(phantom.slice_thickness), 4)
    ds.SliceLocation = round(float(position[2]), 4)
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = phantom.hu.shape[1:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    stored = np.clip(np.rint((phantom.hu[k] - RESCALE_INTERCEPT) / RESCALE_SLOPE), -32768, 32767)
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    return ds


def write_series(phantom: Phantom, folder: str | Path, patient_id: str | None = None) -> list[Path]:
    """Write ``phantom.hu`` as a CT series, one file per slice.

    Args:
        phantom: The phantom.
        folder: Where the ``slice_NNNN.dcm`` files go (created).
        patient_id: PatientID; default ``PHANTOM-<seed>``.

    Returns:
        The files, in slice order (increasing z).

    Raises:
        ValueError: When ``phantom.hu`` is not 3-D.
    """
    if phantom.hu.ndim != 3:
        raise ValueError(f"phantom.hu must be (Z, Y, X), got shape {phantom.hu.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = series_uids(phantom)
    pid = patient_id or f"PHANTOM-{phantom.seed}"
    paths = []
    for k in range(phantom.hu.shape[0]):
        path = folder / f"slice_{k:04d}.dcm"
        _slice_dataset(phantom, k, uids, pid).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_uids(phantom: Phantom) -> dict[str, str]:
    """Study, series and frame-of-reference UIDs of a phantom (deterministic in its seed)."""
    return {name: _uid(phantom.seed, name) for name in ("study", "series", "frame_of_reference")}


def write_phantom(phantom: Phantom, folder: str | Path, patient_id: str | None = None) -> dict:
    """Write the series, the masks and the truth of one phantom.

    Args:
        phantom: The phantom.
        folder: Output folder (created); receives ``dicom/``, ``masks.npz`` and ``truth.json``.
        patient_id: PatientID; default ``PHANTOM-<seed>``.

    Returns:
        The truth dictionary that was written to ``truth.json``.
    """
    folder = Path(folder)
    files = write_series(phantom, folder / "dicom", patient_id)
    np.savez_compressed(
        folder / "masks.npz",
        lung_mask=phantom.lung_mask.astype(bool),
        nodule_mask=phantom.nodule_mask.astype(np.int16),
        tissue=phantom.tissue.astype(np.uint8),
    )
    truth = {
        "seed": phantom.seed,
        "shape_zyx": list(phantom.shape),
        "spacing_zyx_mm": list(phantom.spacing),
        "origin_xyz_mm": list(phantom.origin),
        "slice_thickness_mm": phantom.slice_thickness,
        "uids": series_uids(phantom),
        "dicom_files": [str(p.relative_to(folder)) for p in files],
        "rescale": {"slope": RESCALE_SLOPE, "intercept": RESCALE_INTERCEPT},
        "tissue_labels": TISSUES,
        "masks": {"file": "masks.npz", "order": "(Z, Y, X), slices by increasing z as read_series returns"},
        "nodules": [n.to_dict() for n in phantom.nodules],
    }
    (folder / "truth.json").write_text(json.dumps(truth, indent=2))
    return truth
