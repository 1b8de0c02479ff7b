"""The LUNA16 data set: MetaImage (``.mhd`` + ``.raw``) CT volumes and their nodule annotations.

Layout (as the LUNA16 download unpacks)::

    root/
      subset0/ ... subset9/        <seriesuid>.mhd + <seriesuid>.raw (any subset may be absent)
      annotations.csv              seriesuid,coordX,coordY,coordZ,diameter_mm (world mm)
      candidates.csv               optional: seriesuid,coordX,coordY,coordZ,class
                                   (candidates_V2.csv is preferred when both are there)

The csv files may also lie in ``root/CSVFILES/``. World coordinates are the MetaImage patient
coordinates (ITK's LPS, mm); volumes come back as ``connectors.dicom.CTVolume`` with the same
conventions as the DICOM reader: ``hu`` ``(Z, Y, X)``, ``spacing`` ``(z, y, x)``, ``origin``
``(x, y, z)``, ``direction`` columns = patient directions of the column, row and slice index axes.

The MetaImage header is parsed here (numpy only; no SimpleITK): uncompressed data in a separate
file or after the header (``ElementDataFile = LOCAL``), either byte order, any direction matrix.

Example::

    from apps.nodule.luna16 import Luna16, world_to_voxel

    luna = Luna16("../shared/data/luna16")
    for fold, uids in luna.folds().items():          # the standard 10-fold split
        ...
    uid = luna.series_uids()[0]
    vol = luna.volume(uid)                           # CTVolume, hu (Z, Y, X) float32
    ann = luna.annotations(uid)                      # seriesuid, x_mm, y_mm, z_mm, diameter_mm
    kji = world_to_voxel(ann[["x_mm", "y_mm", "z_mm"]].to_numpy(), vol)   # (N, 3) z, y, x
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from connectors.dicom.volume import CTVolume

# MetaIO element types (metaTypes.h; MET_LONG is 32-bit there) to numpy, without byte order.
ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1",
    "MET_UCHAR": "u1",
    "MET_SHORT": "i2",
    "MET_USHORT": "u2",
    "MET_INT": "i4",
    "MET_UINT": "u4",
    "MET_LONG": "i4",
    "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8",
    "MET_ULONG_LONG": "u8",
    "MET_FLOAT": "f4",
    "MET_DOUBLE": "f8",
}

N_SUBSETS = 10
_SUBSET_RE = re.compile(r"^subset(\d)$")


class MetaImageError(ValueError):
    """A MetaImage file cannot be read; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------------
# MetaImage reading
# ---------------------------------------------------------------------------------------------------


def _split_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's ``key -> value`` (keys as written) and the byte offset just after it.

    The header ends with the ``ElementDataFile`` line (MetaIO's rule), so LOCAL data may follow.
    """
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            end = len(head)
        line = head[pos:end].decode("latin-1").strip()
        pos = end + 1
        if not line:
            continue
        if "=" not in line:
            raise MetaImageError(f"{path}: header line {line[:60]!r} is not 'Key = Value'")
        key, value = (s.strip() for s in line.split("=", 1))
        fields[key] = value
        if key == "ElementDataFile":
            return fields, min(pos, len(head))
    raise MetaImageError(f"{path}: no ElementDataFile line in the header (not a MetaImage file?)")


def _bool(fields: dict[str, str], key: str, path: Path, default: bool = False) -> bool:
    value = fields.get(key)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise MetaImageError(f"{path}: {key} = {value!r} is not True or False")


def _numbers(fields: dict[str, str], keys: tuple[str, ...], n: int, path: Path, default=None) -> np.ndarray:
    """The first of ``keys`` present, as ``n`` floats."""
    for key in keys:
        if key in fields:
            try:
                values = np.array([float(v) for v in fields[key].split()], dtype=np.float64)
            except ValueError:
                raise MetaImageError(f"{path}: {key} = {fields[key]!r} is not a list of numbers") from None
            if values.size != n:
                raise MetaImageError(f"{path}: {key} has {values.size} values, expected {n}")
            return values
    if default is None:
        raise MetaImageError(f"{path}: header lacks {' / '.join(keys)}")
    return np.asarray(default, dtype=np.float64)


def read_mhd(path: str | Path, dtype: np.dtype | type | None = np.float32) -> CTVolume:
    """Read a 3-D MetaImage (``.mhd`` header with its data file, or LOCAL data after the header).

    Args:
        path: The ``.mhd`` file.
        dtype: dtype of ``hu``; ``None`` keeps the stored type (e.g. int16 for LUNA16, half the memory).

    Returns:
        A ``CTVolume`` whose ``series_uid`` is the file's stem (LUNA16 names files by SeriesInstanceUID).

    Raises:
        FileNotFoundError: The header or its data file is missing.
        MetaImageError: The header is malformed or unsupported (compressed, not 3-D, several
            channels, unknown ElementType), or the data size does not match ``DimSize``.

    Shapes:
        hu: ``(Z, Y, X)`` = ``DimSize`` reversed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MetaImage header {path} not found")
    fields, header_end = _split_header(path)

    object_type = fields.get("ObjectType", "Image")
    if object_type.lower() != "image":
        raise MetaImageError(f"{path}: ObjectType = {object_type!r}, only Image is supported")
    ndims = fields.get("NDims")
    if ndims is None or ndims.strip() != "3":
        raise MetaImageError(f"{path}: NDims = {ndims!r}, only 3-D images are supported")
    if _bool(fields, "CompressedData", path):
        raise MetaImageError(f"{path}: compressed .mhd is not supported (CompressedData = True)")
    if not _bool(fields, "BinaryData", path, default=True):
        raise MetaImageError(f"{path}: ASCII data (BinaryData = False) is not supported")
    channels = fields.get("ElementNumberOfChannels", "1").strip()
    if channels != "1":
        raise MetaImageError(f"{path}: ElementNumberOfChannels = {channels}, only 1 is supported")
    element_type = fields.get("ElementType")
    if element_type not in ELEMENT_TYPES:
        raise MetaImageError(
            f"{path}: unknown ElementType {element_type!r} (known: {', '.join(ELEMENT_TYPES)})"
        )
    msb = _bool(fields, "ElementByteOrderMSB", path) or _bool(fields, "BinaryDataByteOrderMSB", path)
    stored = np.dtype((">" if msb else "<") + ELEMENT_TYPES[element_type])

    dims = _numbers(fields, ("DimSize",), 3, path)
    if np.any(dims < 1) or np.any(dims != np.round(dims)):
        raise MetaImageError(f"{path}: DimSize = {fields['DimSize']!r} must be positive integers")
    size_xyz = tuple(int(d) for d in dims)
    spacing_xyz = _numbers(fields, ("ElementSpacing", "ElementSize"), 3, path, default=(1.0, 1.0, 1.0))
    if np.any(spacing_xyz <= 0):
        raise MetaImageError(f"{path}: ElementSpacing = {fields.get('ElementSpacing')!r} must be positive")
    origin = _numbers(fields, ("Offset", "Position", "Origin"), 3, path, default=(0.0, 0.0, 0.0))
    matrix = _numbers(
        fields, ("TransformMatrix", "Orientation", "Rotation"), 9, path, default=np.eye(3).ravel()
    )
    # MetaIO writes the direction of index axis i, then j, then k (ITK MetaImageIO: SetDirection(ii, ...)).
    direction = matrix.reshape(3, 3).T
    if abs(np.linalg.det(direction)) < 1e-6:
        raise MetaImageError(f"{path}: TransformMatrix is singular")

    count = int(np.prod(size_xyz))
    expected = count * stored.itemsize
    data_file = fields["ElementDataFile"]
    header_size = int(float(fields.get("HeaderSize", "0")))
    if data_file.upper() == "LOCAL":
        source, start = path, header_end
        available = path.stat().st_size - header_end
    elif data_file.upper().startswith("LIST") or "%" in data_file:
        raise MetaImageError(f"{path}: ElementDataFile = {data_file!r}: multi-file data is not supported")
    else:
        source = (path.parent / data_file) if not Path(data_file).is_absolute() else Path(data_file)
        if not source.is_file():
            raise FileNotFoundError(f"{path}: data file {source} (ElementDataFile) not found")
        size = source.stat().st_size
        start = max(size - expected, 0) if header_size == -1 else header_size
        available = size - start
    if available != expected:
        raise MetaImageError(
            f"{source}: holds {available} data bytes, expected {expected} "
            f"(DimSize {' '.join(map(str, size_xyz))} x {stored.itemsize} bytes {element_type})"
        )
    with open(source, "rb") as f:
        f.seek(start)
        raw = np.frombuffer(f.read(expected), dtype=stored, count=count)
    hu = raw.reshape(size_xyz[::-1])  # x varies fastest on disk -> (Z, Y, X) in C order
    hu = hu.astype(hu.dtype.newbyteorder("=") if dtype is None else dtype, copy=True)

    return CTVolume(
        hu=hu,
        spacing=tuple(float(s) for s in spacing_xyz[::-1]),
        origin=tuple(float(o) for o in origin),
        direction=direction,
        series_uid=path.stem,
        study_uid="",
        source_files=[str(path)] + ([] if source == path else [str(source)]),
    )


def world_to_voxel(points_mm: np.ndarray, volume: CTVolume) -> np.ndarray:
    """World (patient) positions to fractional voxel indices, using origin, spacing and direction.

    Args:
        points_mm: ``(N, 3)`` positions ``(x, y, z)`` in mm, e.g. LUNA16 ``coordX, coordY, coordZ``.
        volume: The volume whose grid to use.

    Returns:
        ``(N, 3)`` float64 indices ``(z, y, x)`` into ``volume.hu``.
    """
    pts = np.asarray(points_mm, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points_mm must have shape (N, 3) (x, y, z), got {pts.shape}")
    return volume.patient_to_voxel(pts)


def voxel_to_world(indices: np.ndarray, volume: CTVolume) -> np.ndarray:
    """Inverse of :func:`world_to_voxel`.

    Args:
        indices: ``(N, 3)`` voxel indices ``(z, y, x)``, fractional allowed.
        volume: The volume whose grid to use.

    Returns:
        ``(N, 3)`` positions ``(x, y, z)`` in mm.
    """
    idx = np.asarray(indices, dtype=np.float64)
    if idx.ndim != 2 or idx.shape[1] != 3:
        raise ValueError(f"indices must have shape (N, 3) (z, y, x), got {idx.shape}")
    return volume.voxel_to_patient(idx)


# ---------------------------------------------------------------------------------------------------
# The data set folder
# ---------------------------------------------------------------------------------------------------

_ANNOTATION_COLUMNS = {"seriesuid": "seriesuid", "coordX": "x_mm", "coordY": "y_mm", "coordZ": "z_mm"}


def _find_csv(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for folder in (root, root / "CSVFILES"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_table(path: Path, extra: str) -> pd.DataFrame:
    """A LUNA16 csv with its coordinates renamed to ``x_mm, y_mm, z_mm``; ``extra`` is the last column."""
    df = pd.read_csv(path, dtype={"seriesuid": str})
    missing = [c for c in (*_ANNOTATION_COLUMNS, extra) if c not in df.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})"
        )
    df = df.rename(columns=_ANNOTATION_COLUMNS)[["seriesuid", "x_mm", "y_mm", "z_mm", extra]]
    bad = df[["x_mm", "y_mm", "z_mm", extra]].isna().any(axis=1)
    if bad.any():
        raise ValueError(f"{path}: empty or non-numeric values in row(s) {list(df.index[bad][:5] + 2)}")
    return df


class Luna16:
    """A LUNA16 folder: which series lie in which subset, their volumes, annotations and candidates.

    Args:
        root: The folder holding ``subset0`` ... ``subset9`` and ``annotations.csv``.

    Raises:
        FileNotFoundError: ``root``, every subset folder, or ``annotations.csv`` is missing (the
            message names what and where).
        ValueError: A series UID occurs in two subsets, or a csv lacks a column.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"LUNA16 folder {self.root} not found")
        self._subset: dict[str, int] = {}
        self._paths: dict[str, Path] = {}
        subsets = sorted(p for p in self.root.iterdir() if p.is_dir() and _SUBSET_RE.match(p.name))
        if not subsets:
            raise FileNotFoundError(f"LUNA16 folder {self.root} has no subset0 ... subset9 folders")
        for folder in subsets:
            index = int(_SUBSET_RE.match(folder.name).group(1))
            for mhd in sorted(folder.rglob("*.mhd")):  # rglob: some unzip tools nest subsetN/subsetN/
                uid = mhd.stem
                if uid in self._paths:
                    raise ValueError(f"series {uid} is in both {self._paths[uid]} and {mhd}")
                self._subset[uid] = index
                self._paths[uid] = mhd
        self.annotations_path = _find_csv(self.root, ("annotations.csv",))
        if self.annotations_path is None:
            raise FileNotFoundError(
                f"LUNA16 folder {self.root} has no annotations.csv (nor CSVFILES/annotations.csv)"
            )
        self.candidates_path = _find_csv(self.root, ("candidates_V2.csv", "candidates.csv"))
        self._annotations = _read_table(self.annotations_path, "diameter_mm")
        self._candidates: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Luna16({str(self.root)!r}, series={len(self._paths)}, annotations={len(self._annotations)})"

    def series_uids(self) -> list[str]:
        """Every series found in the subsets, sorted."""
        return sorted(self._paths)

    def _check(self, uid: str) -> None:
        if uid not in self._paths:
            raise KeyError(f"series {uid} is not in any subset under {self.root}")

    def subset_of(self, uid: str) -> int:
        """The subset (0-9) holding series ``uid``."""
        self._check(uid)
        return self._subset[uid]

    def mhd_path(self, uid: str) -> Path:
        """The ``.mhd`` header of series ``uid``."""
        self._check(uid)
        return self._paths[uid]

    def volume(self, uid: str, dtype: np.dtype | type | None = np.float32) -> CTVolume:
        """The CT volume of series ``uid`` (see :func:`read_mhd`)."""
        return read_mhd(self.mhd_path(uid), dtype=dtype)

    def annotations(self, uid: str | None = None) -> pd.DataFrame:
        """Annotated nodules (columns ``seriesuid, x_mm, y_mm, z_mm, diameter_mm``), all or of one series.

        Rows of series absent from the subsets on disk are kept in the full table.
        """
        df = self._annotations
        if uid is not None:
            self._check(uid)
            df = df[df["seriesuid"] == uid]
        return df.reset_index(drop=True).copy()

    def truths(self, uid: str) -> list[tuple[np.ndarray, float]]:
        """The nodules of series ``uid`` as ``(center (x, y, z) mm, diameter mm)``."""
        df = self.annotations(uid)
        centers = df[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=np.float64)
        return [(c, float(d)) for c, d in zip(centers, df["diameter_mm"], strict=True)]

    def candidates(self, uid: str | None = None) -> pd.DataFrame:
        """Candidate locations (columns ``seriesuid, x_mm, y_mm, z_mm, class``; class 1 = nodule).

        Raises:
            FileNotFoundError: Neither ``candidates_V2.csv`` nor ``candidates.csv`` is there.
        """
        if self.candidates_path is None:
            raise FileNotFoundError(f"LUNA16 folder {self.root} has no candidates_V2.csv or candidates.csv")
        if self._candidates is None:
            self._candidates = _read_table(self.candidates_path, "class")
            self._candidates["class"] = self._candidates["class"].astype(int)
        df = self._candidates
        if uid is not None:
            self._check(uid)
            df = df[df["seriesuid"] == uid]
        return df.reset_index(drop=True).copy()

    def folds(self) -> dict[int, list[str]]:
        """The standard LUNA16 10-fold split: subset ``i`` is fold ``i`` (only subsets on disk)."""
        out: dict[int, list[str]] = {}
        for uid in self.series_uids():
            out.setdefault(self._subset[uid], []).append(uid)
        return dict(sorted(out.items()))
