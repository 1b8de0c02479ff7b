"""Read one CT series (classic single-frame files or an enhanced multi-frame file) into a ``CTVolume``.

What is checked, and what happens when a check fails (a ``DicomError`` names the file and the problem):

- each file is DICOM, readable to the end, has Modality CT, pixel data that decode (compressed
  transfer syntaxes go through pydicom's pixel plugins: pylibjpeg-libjpeg for JPEG and JPEG-LS,
  pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle or pydicom's own RLE decoder), and the geometry
  tags ImagePositionPatient, ImageOrientationPatient and PixelSpacing (per frame for enhanced CT);
- all slices belong to one series, share size, orientation and pixel spacing, and no two lie at the
  same position;
- slices are ordered by their position along the image-plane normal (never by file name or
  InstanceNumber);
- **missing slices** (a gap that is a whole multiple of the usual spacing): always an error, since
  interpolating over absent anatomy could hide a nodule;
- **uneven spacing** (other gaps): an error by default; with ``resample=True`` the stack is linearly
  interpolated onto the median spacing, with a ``DicomResampleWarning``;
- **gantry tilt** (slice positions that step off the image normal): an error by default; with
  ``resample=True`` each slice is shifted within its plane (linear interpolation, the dcm2niix
  approach) so the stack is orthogonal, with a ``DicomResampleWarning``.

Voxel values become HU with each slice's RescaleSlope/RescaleIntercept (or the Pixel Value
Transformation of each frame).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from connectors.dicom.volume import CTVolume, deshear_slices, restack_uniform

log = logging.getLogger(__name__)

_ENHANCED_CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_ORIENTATION_TOL = 1e-4  # direction cosines are stored with 6-7 decimals
_POSITION_TOL_MM = 0.01
_SPACING_REL_TOL = 0.01
_TILT_TOL = 1e-3  # tan of the angle between the slice step and the normal (~0.06 degrees)


class DicomError(ValueError):
    """A DICOM input that cannot become a correct CT volume; the message names the file and the problem.

    Args:
        reason: What is wrong.
        path: The file (or folder) concerned, when there is one.
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class DicomResampleWarning(UserWarning):
    """The reader resampled the data (gantry tilt or uneven spacing) because ``resample=True`` asked it to."""


@dataclass
class _Frame:
    """One 2-D image of the series and where it lies."""

    path: Path
    ds: object  # pydicom Dataset (kept to decode pixels once all geometry checks have passed)
    frame: int | None  # index in a multi-frame file, None for a single-frame file
    position: np.ndarray  # (3,) patient mm
    orientation: np.ndarray  # (6,) row cosines then column cosines
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x)
    slope: float
    intercept: float

    @property
    def label(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} frame {self.frame + 1}"


def _import_pydicom():
    try:
        import pydicom
    except ImportError as e:  # pragma: no cover - pydicom is a dependency
        raise DicomError("pydicom is not installed (pip install 'pydicom>=3,<4')") from e
    return pydicom


def list_dicom_files(folder: Path, skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files under ``folder`` (recursively) that carry the DICOM Part 10 ``DICM`` prefix; DICOMDIRs excluded.

    Args:
        folder: A directory.
        skipped: When given, each file left out is appended as ``(path, reason)``.

    Returns:
        Sorted paths. Other files (README, SOURCE.txt, ...) are left out and logged at INFO.

    Raises:
        DicomError: When a file cannot be opened.
    """
    found = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            with p.open("rb") as f:
                head = f.read(132)
        except OSError as e:
            raise DicomError(f"cannot read file ({e})", p) from e
        if len(head) == 132 and head[128:] == b"DICM" and p.name.upper() != "DICOMDIR":
            found.append(p)
        else:
            why = (
                "a DICOMDIR" if p.name.upper() == "DICOMDIR" else "not a DICOM Part 10 file (no DICM prefix)"
            )
            log.info("skipping %s: %s", p, why)
            if skipped is not None:
                skipped.append((p, why))
    return found


def _resolve(source: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(source, str | Path):
        p = Path(source)
        if p.is_dir():
            files = list_dicom_files(p)
            if not files:
                raise DicomError("folder holds no DICOM files", p)
            return files
        if not p.exists():
            raise DicomError("no such file or folder", p)
        return [p]
    files = [Path(s) for s in source]
    if not files:
        raise DicomError("no files given")
    for p in files:
        if not p.is_file():
            raise DicomError("no such file", p)
    return files


def _read(path: Path):
    pydicom = _import_pydicom()
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as e:
        raise DicomError(f"not a DICOM file ({e})", path) from e
    except Exception as e:  # pydicom raises many types for damaged files (EOFError, struct.error, ...)
        raise DicomError(f"unreadable or truncated DICOM file ({type(e).__name__}: {e})", path) from e
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise DicomError("is a DICOMDIR, not an image; use connectors.dicom.scan() to list its series", path)
    modality = str(ds.get("Modality", "") or "").strip()
    if not modality:
        # pydicom stops silently at the end of a file cut between elements: say that it may be truncated
        raise DicomError(
            f"Modality tag missing: not an image object, or a truncated file ({path.stat().st_size} bytes, "
            f"{len(ds)} elements readable)",
            path,
        )
    if modality != "CT":
        raise DicomError(f"modality is {modality!r}, expected 'CT'", path)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(f"SamplesPerPixel is {ds.SamplesPerPixel}: a colour image, not CT grey levels", path)
    if "PixelData" not in ds:
        raise DicomError("no pixel data (PixelData element absent, or the file is truncated before it)", path)
    return ds


def _floats(value, n: int, what: str, label: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DicomError(f"{what} is not numeric ({value!r})", label) from e
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DicomError(f"{what} must hold {n} finite numbers, got {value!r}", label)
    return arr


def _rescale(item, label: str) -> tuple[float, float]:
    slope = item.get("RescaleSlope", 1.0)
    intercept = item.get("RescaleIntercept", 0.0)
    try:
        return float(slope if slope not in (None, "") else 1.0), float(
            intercept if intercept not in (None, "") else 0.0
        )
    except (TypeError, ValueError) as e:
        raise DicomError(
            f"RescaleSlope/RescaleIntercept not numeric ({slope!r}, {intercept!r})", label
        ) from e


def _classic_frame(path: Path, ds) -> _Frame:
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds or ds.get(tag) in (None, ""):
            raise DicomError(f"missing geometry tag {tag}", path)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomError(
            f"multi-frame ({ds.NumberOfFrames} frames) without per-frame functional groups", path
        )
    ps = _floats(ds.PixelSpacing, 2, "PixelSpacing", str(path))
    slope, intercept = _rescale(ds, str(path))
    return _Frame(
        path=path,
        ds=ds,
        frame=None,
        position=_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", str(path)),
        orientation=_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", str(path)),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        slope=slope,
        intercept=intercept,
    )


def _group_item(ds, frame_item, seq: str, label: str, required: bool = True):
    """The item of functional group ``seq`` for one frame: per-frame first, then shared."""
    for holder in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if holder is not None and seq in holder and len(holder[seq].value) > 0:
            return holder[seq].value[0]
    if required:
        raise DicomError(f"missing functional group {seq} (needed for geometry)", label)
    return None


def _enhanced_frames(path: Path, ds) -> list[_Frame]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    n = int(ds.get("NumberOfFrames", 0) or 0)
    if not per_frame or len(per_frame) != n:
        got = len(per_frame) if per_frame else 0
        raise DicomError(f"NumberOfFrames is {n} but PerFrameFunctionalGroupsSequence has {got} items", path)
    frames = []
    for f, item in enumerate(per_frame):
        label = f"{path} frame {f + 1}"
        pos = _group_item(ds, item, "PlanePositionSequence", label).get("ImagePositionPatient")
        ori = _group_item(ds, item, "PlaneOrientationSequence", label).get("ImageOrientationPatient")
        ps = _group_item(ds, item, "PixelMeasuresSequence", label).get("PixelSpacing")
        for name, value in (
            ("ImagePositionPatient", pos),
            ("ImageOrientationPatient", ori),
            ("PixelSpacing", ps),
        ):
            if value in (None, ""):
                raise DicomError(f"missing geometry tag {name}", label)
        transform = _group_item(ds, item, "PixelValueTransformationSequence", label, required=False)
        slope, intercept = _rescale(transform if transform is not None else ds, label)
        ps_arr = _floats(ps, 2, "PixelSpacing", label)
        frames.append(
            _Frame(
                path=path,
                ds=ds,
                frame=f,
                position=_floats(pos, 3, "ImagePositionPatient", label),
                orientation=_floats(ori, 6, "ImageOrientationPatient", label),
                pixel_spacing=(float(ps_arr[0]), float(ps_arr[1])),
                slope=slope,
                intercept=intercept,
            )
        )
    return frames


def _check_same(frames: list[_Frame]) -> None:
    first = frames[0]
    uid0 = str(first.ds.get("SeriesInstanceUID", ""))
    if not uid0:
        raise DicomError("missing SeriesInstanceUID", first.label)
    series = {str(f.ds.get("SeriesInstanceUID", "")) for f in frames}
    if len(series) > 1:
        listing = ", ".join(sorted(series))
        raise DicomError(
            f"files from {len(series)} series mixed in one read ({listing}); read one series at a time"
        )
    size0 = (int(first.ds.Rows), int(first.ds.Columns))
    for f in frames[1:]:
        size = (int(f.ds.Rows), int(f.ds.Columns))
        if size != size0:
            raise DicomError(f"image size {size} differs from {size0} of {first.label}", f.label)
        if np.max(np.abs(f.orientation - first.orientation)) > _ORIENTATION_TOL:
            raise DicomError(
                f"ImageOrientationPatient {f.orientation.tolist()} differs from {first.orientation.tolist()} "
                f"of {first.label} (a localizer or reformat mixed into the series?)",
                f.label,
            )
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise DicomError(f"PixelSpacing {f.pixel_spacing} differs from {first.pixel_spacing}", f.label)


def _axes(frame: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, c = frame.orientation[:3], frame.orientation[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 0.5 or nc < 0.5 or abs(float(np.dot(r, c))) / (nr * nc) > 1e-3:
        raise DicomError(
            f"ImageOrientationPatient {frame.orientation.tolist()} is not two orthogonal unit vectors",
            frame.label,
        )
    r, c = r / nr, c / nc
    return r, c, np.cross(r, c)


def _pixels(frames: list[_Frame]) -> np.ndarray:
    """Decode and rescale to HU, in the order of ``frames``.

    Returns:
        ``(Z, Y, X)`` float32. Each file is decoded once, then its pixel data are released.
    """
    rows, cols = int(frames[0].ds.Rows), int(frames[0].ds.Columns)
    out = np.empty((len(frames), rows, cols), np.float32)
    decoded: dict[int, np.ndarray] = {}  # multi-frame files: decoded once for all their frames
    remaining: dict[int, int] = {}
    for f in frames:
        remaining[id(f.ds)] = remaining.get(id(f.ds), 0) + 1
    for z, f in enumerate(frames):
        key = id(f.ds)
        if key not in decoded:
            ts = f.ds.file_meta.get("TransferSyntaxUID", "unknown")
            try:
                decoded[key] = f.ds.pixel_array
            except Exception as e:  # plugin missing, truncated or corrupt data: pydicom raises varied types
                name = getattr(ts, "name", str(ts))
                raise DicomError(f"cannot decode pixel data (transfer syntax {name}): {e}", f.path) from e
        arr = decoded[key]
        # pydicom returns (rows, cols) for a one-frame file, multi-frame or not
        img = arr[f.frame] if f.frame is not None and arr.ndim == 3 else arr
        if img.shape != (rows, cols):
            raise DicomError(f"pixel data has shape {arr.shape}; expected {rows}x{cols} grey levels", f.label)
        out[z] = img
        out[z] *= np.float32(f.slope)
        out[z] += np.float32(f.intercept)
        remaining[key] -= 1
        if remaining[key] == 0:  # keep peak memory near the output volume for long series
            del decoded[key]
            del f.ds.PixelData
    return out


def read_series(
    source: str | Path | Iterable[str | Path],
    *,
    resample: bool = False,
) -> CTVolume:
    """Read one CT series into a volume in HU with its geometry.

    Args:
        source: A folder (every DICOM Part 10 file under it, recursively), one file (a single slice or
            an enhanced multi-frame CT), or a list of files.
        resample: Correct gantry tilt and uneven slice spacing by resampling (with a
            ``DicomResampleWarning``) instead of raising. Missing slices always raise.

    Returns:
        The ``CTVolume``; ``hu`` has shape ``(Z, Y, X)`` with slices ordered along the image normal.

    Raises:
        DicomError: Naming the file and the problem: not DICOM, truncated, DICOMDIR, not CT, no pixel
            data, undecodable pixel data, missing or inconsistent geometry, several series, duplicate
            positions, missing slices, uneven spacing or gantry tilt (the last two unless ``resample``).
    """
    files = _resolve(source)
    frames: list[_Frame] = []
    for path in files:
        ds = _read(path)
        if "PerFrameFunctionalGroupsSequence" in ds:
            frames.extend(_enhanced_frames(path, ds))
        else:
            sop = str(ds.get("SOPClassUID", ""))
            if sop in _ENHANCED_CT_SOP_CLASSES:
                raise DicomError(
                    f"{_ENHANCED_CT_SOP_CLASSES[sop]} without PerFrameFunctionalGroupsSequence", path
                )
            frames.append(_classic_frame(path, ds))
    _check_same(frames)
    r, c, n = _axes(frames[0])

    s = np.array([float(np.dot(f.position, n)) for f in frames])
    order = np.argsort(s, kind="stable")
    frames = [frames[i] for i in order]
    s = s[order]
    gaps = np.diff(s)
    for k in np.flatnonzero(gaps < _POSITION_TOL_MM):
        raise DicomError(
            f"two slices at the same position ({s[k]:.3f} mm along the normal): {frames[k].label} and "
            f"{frames[k + 1].label} (repeated acquisition or duplicate file?)"
        )

    notes: list[str] = []
    offsets = np.stack([f.position - frames[0].position for f in frames])  # (Z, 3)
    inplane = offsets - np.outer(offsets @ n, n)  # (Z, 3): the part of each step that is not along n
    tilt_needs_fix = False
    if len(frames) > 1:
        drift = float(np.linalg.norm(inplane, axis=1).max())
        along = float(s[-1] - s[0])
        if drift > _POSITION_TOL_MM and drift > _TILT_TOL * along:
            angle = float(np.degrees(np.arctan2(drift, along)))
            tag = frames[0].ds.get("GantryDetectorTilt")
            said = f", GantryDetectorTilt {float(tag):g}" if tag not in (None, "") else ""
            msg = f"gantry tilt: slice positions step {angle:.2f} degrees off the image normal{said}"
            if not resample:
                raise DicomError(
                    f"{msg}; pass resample=True to shift slices in-plane onto an orthogonal grid"
                )
            notes.append(f"{msg}; slices shifted in-plane (linear interpolation)")
            tilt_needs_fix = True

    step_fix: float | None = None
    if len(frames) == 1:
        ds = frames[0].ds
        z = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
        if z in (None, "") and frames[0].frame is not None:
            pm = _group_item(
                ds, ds.PerFrameFunctionalGroupsSequence[0], "PixelMeasuresSequence", frames[0].label
            )
            z = pm.get("SpacingBetweenSlices") or pm.get("SliceThickness")
        if z in (None, "") or float(z) <= 0:
            raise DicomError(
                "single slice without SliceThickness/SpacingBetweenSlices: slice spacing unknown",
                frames[0].label,
            )
        spacing_z = float(z)
    else:
        d = float(np.median(gaps))
        tol = max(_POSITION_TOL_MM, _SPACING_REL_TOL * d)
        if np.all(np.abs(gaps - d) <= tol):
            spacing_z = float(s[-1] - s[0]) / (len(s) - 1)
        else:
            mult = gaps / d
            whole = np.abs(mult - np.round(mult)) * d <= tol
            if np.all(whole) and np.any(np.round(mult) >= 2):
                k = int(np.flatnonzero(np.round(mult) >= 2)[0])
                missing = int(np.sum(np.round(mult) - 1))
                raise DicomError(
                    f"{missing} missing slice(s): gap of {gaps[k]:.3f} mm between {frames[k].label} and "
                    f"{frames[k + 1].label}, usual spacing {d:.3f} mm"
                )
            msg = f"uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm, median {d:.3f} mm)"
            if not resample:
                raise DicomError(f"{msg}; pass resample=True to interpolate onto {d:.3f} mm")
            notes.append(f"{msg}; linearly interpolated onto {d:.3f} mm")
            step_fix = d
            spacing_z = d

    hu = _pixels(frames)
    if tilt_needs_fix:
        hu = deshear_slices(hu, inplane, r, c, frames[0].pixel_spacing)
    if step_fix is not None:
        hu, _ = restack_uniform(hu, s, step_fix)
    for note in notes:
        warnings.warn(
            f"series {frames[0].ds.get('SeriesInstanceUID', '')}: {note}", DicomResampleWarning, stacklevel=2
        )

    ds0 = frames[0].ds
    rescale_type = ""
    if frames[0].frame is not None:
        t = _group_item(
            ds0, ds0.PerFrameFunctionalGroupsSequence[0], "PixelValueTransformationSequence", "", False
        )
        rescale_type = str(t.get("RescaleType", "")) if t is not None else ""
    rescale_type = rescale_type or str(ds0.get("RescaleType", "") or "")
    # "HU" is the defined term; vendors also write "Hounsfield Units" (and GE's "Houndsfield Unit")
    if rescale_type and not rescale_type.strip().upper().startswith(("HU", "HOUNSFIELD", "HOUNDSFIELD")):
        warnings.warn(
            f"{frames[0].path}: RescaleType is {rescale_type!r}, not 'HU': values may not be in HU",
            UserWarning,
            stacklevel=2,
        )
    thickness = ds0.get("SliceThickness")
    if thickness in (None, "") and frames[0].frame is not None:
        pm = _group_item(ds0, ds0.PerFrameFunctionalGroupsSequence[0], "PixelMeasuresSequence", "", False)
        thickness = pm.get("SliceThickness") if pm is not None else None
    kernel = ds0.get("ConvolutionKernel", "")
    if not isinstance(kernel, str):
        kernel = "\\".join(str(k) for k in kernel)
    sources = list(dict.fromkeys(str(f.path) for f in frames))
    return CTVolume(
        hu=np.ascontiguousarray(hu, dtype=np.float32),
        spacing=(spacing_z, frames[0].pixel_spacing[0], frames[0].pixel_spacing[1]),
        origin=tuple(float(v) for v in frames[0].position),
        direction=np.column_stack([r, c, n]),
        series_uid=str(ds0.get("SeriesInstanceUID", "")),
        study_uid=str(ds0.get("StudyInstanceUID", "")),
        manufacturer=str(ds0.get("Manufacturer", "") or ""),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        kernel=str(kernel or ""),
        rescale_type=rescale_type,
        source_files=sources,
        resampled=notes,
    )
