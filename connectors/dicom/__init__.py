"""DICOM CT input for the nodule app: read a series into HU with geometry, and catalogue folders/DICOMDIRs.

- ``volume``: ``CTVolume`` (HU array ``(Z, Y, X)``, spacing, origin, direction, UIDs, metadata).
- ``reader``: ``read_series`` for classic single-frame series and enhanced multi-frame CT;
  ``DicomError`` names the file and the problem; ``DicomResampleWarning`` when ``resample=True``
  corrects gantry tilt or uneven spacing.
- ``catalog``: ``scan`` groups a folder or DICOMDIR into studies and series;
  ``pick_ct_series`` chooses the series to analyse.

Compressed transfer syntaxes decode through pydicom's pixel plugins (pylibjpeg-libjpeg,
pylibjpeg-openjpeg, pylibjpeg-rle); without them such files raise ``DicomError`` naming the syntax.
"""

from __future__ import annotations

from connectors.dicom.catalog import Catalog, SeriesInfo, StudyInfo, pick_ct_series, scan
from connectors.dicom.reader import DicomError, DicomResampleWarning, list_dicom_files, read_series
from connectors.dicom.volume import CTVolume

__all__ = [
    "CTVolume",
    "Catalog",
    "DicomError",
    "DicomResampleWarning",
    "SeriesInfo",
    "StudyInfo",
    "list_dicom_files",
    "pick_ct_series",
    "read_series",
    "scan",
]
