"""Group a folder or a DICOMDIR into studies and series, and pick the CT series to analyse.

``scan`` reads headers only (no pixel data). For a DICOMDIR, pydicom's ``FileSet`` gives the list of
referenced files, whose headers are then read like a folder's, so both paths report the same fields.
Files that are not DICOM, cannot be read, or are referenced by the DICOMDIR but absent are listed in
``Catalog.skipped`` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from connectors.dicom.reader import DicomError, _import_pydicom, list_dicom_files

log = logging.getLogger(__name__)

_HEADER_TAGS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "StudyDescription",
    "StudyDate",
    "SeriesNumber",
    "ImageType",
    "NumberOfFrames",
    "SliceThickness",
    "Rows",
    "Columns",
    "SOPClassUID",
]


@dataclass
class SeriesInfo:
    """One series as found on disk.

    Args:
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: The Modality of its files ("mixed:CT,MR" when they disagree).
        description: SeriesDescription.
        number: SeriesNumber, ``None`` when absent.
        files: Its files, sorted by path.
        n_frames: Images in the series (a multi-frame file counts its frames).
        slice_thickness: SliceThickness of the first file, mm, when given.
        localizer: Whether ImageType marks it as a localizer (scout).
    """

    series_uid: str
    study_uid: str
    modality: str
    description: str = ""
    number: int | None = None
    files: list[Path] = field(default_factory=list)
    n_frames: int = 0
    slice_thickness: float | None = None
    localizer: bool = False

    @property
    def n_files(self) -> int:
        return len(self.files)


@dataclass
class StudyInfo:
    """One study and its series."""

    study_uid: str
    date: str = ""
    description: str = ""
    series: list[SeriesInfo] = field(default_factory=list)


@dataclass
class Catalog:
    """What ``scan`` found: studies with their series, and the files it skipped with the reason."""

    root: Path
    studies: list[StudyInfo] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def series(self) -> list[SeriesInfo]:
        """All series of all studies."""
        return [s for st in self.studies for s in st.series]


def _dicomdir_files(path: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    pydicom = _import_pydicom()
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(pydicom.dcmread(path))
    except Exception as e:  # pydicom raises ValueError, InvalidDicomError, ... for broken DICOMDIRs
        raise DicomError(f"DICOMDIR cannot be read ({type(e).__name__}: {e})", path) from e
    files = []
    for inst in fs:
        p = Path(inst.path)
        if p.is_file():
            files.append(p)
        else:
            skipped.append((p, "referenced by the DICOMDIR but missing"))
    return files


def _source_files(source: str | Path | Iterable[str | Path], skipped: list) -> tuple[Path, list[Path]]:
    """The catalogue's root and the files to read (see ``scan``)."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir() and (root / "DICOMDIR").is_file():
            return root, _dicomdir_files(root / "DICOMDIR", skipped)
        if root.is_dir():
            return root, list_dicom_files(root, skipped)
        if root.is_file():
            return root, _dicomdir_files(root, skipped)
        raise DicomError("no such file or folder", root)
    files = [Path(p) for p in source]
    if not files:
        raise DicomError("no files given")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DicomError(f"no such file(s): {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    return Path(os.path.commonpath([str(p.resolve().parent) for p in files])), files


def scan(source: str | Path | Iterable[str | Path]) -> Catalog:
    """Group the DICOM files of a folder, those a DICOMDIR references, or the files given, into
    studies and series.

    Args:
        source: A folder (searched recursively; a DICOMDIR at its top is used when present), a
            DICOMDIR file, or a list of files (only those are read; ``root`` is their common folder).

    Returns:
        The ``Catalog``; studies and series are sorted by UID and series number.

    Raises:
        DicomError: When the source does not exist or a DICOMDIR cannot be parsed.
    """
    pydicom = _import_pydicom()
    skipped: list[tuple[Path, str]] = []
    root, files = _source_files(source, skipped)

    series: dict[str, SeriesInfo] = {}
    studies: dict[str, StudyInfo] = {}
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception as e:  # damaged header: record and go on with the other files
            skipped.append((p, f"unreadable DICOM header ({type(e).__name__}: {e})"))
            continue
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        if not series_uid or not study_uid:
            skipped.append((p, "missing StudyInstanceUID or SeriesInstanceUID"))
            continue
        modality = str(ds.get("Modality", "") or "").strip() or "unknown"
        info = series.get(series_uid)
        if info is None:
            number = ds.get("SeriesNumber")
            thickness = ds.get("SliceThickness")
            info = series[series_uid] = SeriesInfo(
                series_uid=series_uid,
                study_uid=study_uid,
                modality=modality,
                description=str(ds.get("SeriesDescription", "") or ""),
                number=int(number) if number not in (None, "") else None,
                slice_thickness=float(thickness) if thickness not in (None, "") else None,
            )
            study = studies.setdefault(
                study_uid,
                StudyInfo(
                    study_uid, str(ds.get("StudyDate", "") or ""), str(ds.get("StudyDescription", "") or "")
                ),
            )
            study.series.append(info)
        elif modality not in info.modality.removeprefix("mixed:").split(","):
            kinds = sorted(set(info.modality.removeprefix("mixed:").split(",")) | {modality})
            info.modality = "mixed:" + ",".join(kinds)
        info.files.append(p)
        info.n_frames += int(ds.get("NumberOfFrames", 1) or 1)
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        info.localizer = info.localizer or "LOCALIZER" in image_type
    for s in series.values():
        s.files.sort()
    ordered = sorted(studies.values(), key=lambda st: st.study_uid)
    for st in ordered:
        st.series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.series_uid))
    for p, why in skipped:
        log.info("skipped %s: %s", p, why)
    return Catalog(root=root, studies=ordered, skipped=skipped)


def pick_ct_series(catalog: Catalog, *, min_images: int = 1) -> SeriesInfo:
    """Choose the CT series to analyse.

    Rule: among series whose modality is CT and that are not localizers (ImageType LOCALIZER) and hold
    at least ``min_images`` images, take the one with the most images (the full-coverage
    reconstruction); ties go to the thinnest SliceThickness, then the lowest SeriesNumber, then the UID.

    Args:
        catalog: From ``scan``.
        min_images: Fewest images a series needs to be considered.

    Returns:
        The chosen ``SeriesInfo`` (read it with ``read_series(series.files)``).

    Raises:
        DicomError: When no series qualifies; the message lists what the catalog holds.
    """
    candidates = [
        s for s in catalog.series if s.modality == "CT" and not s.localizer and s.n_frames >= min_images
    ]
    if not candidates:
        found = ", ".join(
            f"{s.modality} ({s.n_frames} images{', localizer' if s.localizer else ''})"
            for s in catalog.series
        )
        raise DicomError(
            f"no CT series with at least {min_images} image(s); found: {found or 'no series'}", catalog.root
        )

    def key(s: SeriesInfo):
        thickness = s.slice_thickness if s.slice_thickness is not None else float("inf")
        return (-s.n_frames, thickness, s.number if s.number is not None else 1 << 30, s.series_uid)

    return min(candidates, key=key)
