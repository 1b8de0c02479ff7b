from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from apps.nodule.phantoms import TISSUES, PhantomConfig, make_phantom, phantom_seed
from tests.apps.nodule.conftest import tiny_config


def _interior(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


def test_same_seed_same_phantom_other_seed_differs():
    a, b, c = (make_phantom(tiny_config(), s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.nodule_mask, b.nodule_mask)
    assert [n.to_dict() for n in a.nodules] == [n.to_dict() for n in b.nodules]
    assert not np.array_equal(a.hu, c.hu)


def test_tiny_shape_geometry_and_dtypes(tiny_phantom):
    p = tiny_phantom
    assert p.shape == (32, 64, 64)
    assert p.hu.dtype == np.float32 and p.nodule_mask.dtype == np.int16 and p.lung_mask.dtype == bool
    assert p.spacing[0] == p.slice_thickness == 2.5
    assert 150 / 64 <= p.spacing[1] == p.spacing[2] <= 170 / 64
    assert p.hu.min() >= -1024 and p.hu.max() <= 3071


def test_sizes_and_thicknesses_vary_with_seed():
    cfg = PhantomConfig.small()
    seen = set()
    for s in range(12):
        rng = np.random.default_rng(s)  # make_phantom's first draws: size, then thickness
        seen.add((int(rng.choice(cfg.in_plane_sizes)), float(rng.choice(cfg.slice_thicknesses))))
    assert len({size for size, _ in seen}) == 2 and len({t for _, t in seen}) == 3


@pytest.mark.parametrize(
    "tissue, low, high",
    [
        ("air", -1024, -950),
        ("fat", -140, -60),
        ("soft_tissue", 20, 75),
        ("lung", -900, -790),
        ("bone", 500, 900),
    ],
)
def test_tissue_hu_ranges(tiny_phantom, tissue, low, high):
    inner = _interior(tiny_phantom.tissue == TISSUES[tissue])
    assert inner.sum() > 20, f"too few interior {tissue} voxels to measure"
    median = float(np.median(tiny_phantom.hu[inner]))
    assert low <= median <= high, f"{tissue}: median {median:.0f} HU outside [{low}, {high}]"


def test_anatomy_has_airways_vessels_ribs_and_spine(tiny_phantom):
    t = tiny_phantom.tissue
    assert (t == TISSUES["airway"]).sum() > 50  # trachea + bronchi
    assert (t == TISSUES["vessel"]).sum() > 20
    assert (t[:, :, :] == TISSUES["vessel"])[~tiny_phantom.lung_mask].sum() == 0  # vessels stay in the lungs
    # two lungs, one either side of the midline
    labels, n = ndimage.label(tiny_phantom.lung_mask[16])
    assert n == 2
    # bone in several separate pieces in one slice: ribs and the spine
    assert ndimage.label(t[16] == TISSUES["bone"])[1] >= 5


def test_noise_level_is_realistic(tiny_phantom):
    inner = _interior(tiny_phantom.tissue == TISSUES["soft_tissue"], 2)
    sd = float(tiny_phantom.hu[inner].std())
    low, high = PhantomConfig.tiny().noise_hu
    assert 0.6 * low <= sd <= 1.3 * high


def test_nodules_inside_lungs_with_labels_and_sizes(mixed_phantoms):
    n_total = 0
    for p in mixed_phantoms:
        assert np.all(p.lung_mask[p.nodule_mask > 0])
        assert sorted(np.unique(p.nodule_mask[p.nodule_mask > 0]).tolist()) == [n.label for n in p.nodules]
        voxel = float(np.prod(p.spacing))
        for n in p.nodules:
            n_total += 1
            count = int((p.nodule_mask == n.label).sum())
            assert n.volume_mm3 == pytest.approx(count * voxel)
            assert n.diameter_mm == pytest.approx((6 * n.volume_mm3 / np.pi) ** (1 / 3))
            assert 7.0 <= n.target_diameter_mm <= 14.0
            low = 0.7  # juxtapleural ones keep at least half their volume (0.79 of the diameter)
            assert low * n.target_diameter_mm <= n.diameter_mm <= 1.3 * n.target_diameter_mm
            kji = np.argwhere(p.nodule_mask == n.label).mean(axis=0)
            np.testing.assert_allclose(n.centre_voxel, kji)
            np.testing.assert_allclose(n.centre_mm, p.voxel_to_patient(kji))
            assert n.shape_source == "parametric"
    assert n_total >= 10


def test_density_classes(mixed_phantoms):
    types = set()
    for p in mixed_phantoms:
        for n in p.nodules:
            types.add(n.nodule_type)
            values = p.hu[p.nodule_mask == n.label]
            if n.nodule_type == "solid":
                assert -60 <= n.mean_hu <= 120
            elif n.nodule_type == "ground-glass":
                assert -750 <= n.mean_hu <= -450
                assert np.percentile(values, 90) < -300
            else:  # ground glass with a solid core (blurred by partial volume at 2.5 mm voxels)
                assert -650 < n.mean_hu < 60
                assert values.max() - np.median(values) > 200 and values.min() < -450  # denser core
    assert types == {"solid", "part-solid", "ground-glass"}


def test_juxtapleural_nodules_touch_the_lung_wall():
    for fraction, expect in ((1.0, True), (0.0, False)):
        p = make_phantom(tiny_config(juxtapleural_fraction=fraction, n_nodules=(2, 2)), seed=11)
        assert p.nodules, "no nodule placed"
        outside = ~p.lung_mask
        for n in p.nodules:
            grown = ndimage.binary_dilation(p.nodule_mask == n.label)
            assert n.juxtapleural is expect
            assert bool((grown & outside).any()) is expect


def test_juxtavascular_nodules_sit_on_a_vessel():
    p = make_phantom(
        tiny_config(juxtavascular_fraction=1.0, juxtapleural_fraction=0.0, n_nodules=(2, 2)), seed=11
    )
    assert len(p.nodules) == 2
    vessels = p.tissue == TISSUES["vessel"]
    for n in p.nodules:
        assert n.juxtavascular and not n.juxtapleural
        assert (ndimage.binary_dilation(p.nodule_mask == n.label) & vessels).any(), n
    assert not any(n.juxtavascular for n in make_phantom(tiny_config(n_nodules=(2, 2)), seed=11).nodules)


def test_a_seed_still_draws_the_phantom_it_drew():
    """Figures of different commits are compared on the same held-out phantoms: an option that is
    off (``juxtavascular_fraction`` 0) draws no random number. A deliberate change of the generator
    changes this digest, and every benchmark figure with it."""
    p = make_phantom(tiny_config(), seed=7)
    assert hashlib.sha256(p.tissue.tobytes() + p.nodule_mask.tobytes()).hexdigest()[:16] == "a14da4143e829815"


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="diameter_mm"):
        PhantomConfig(diameter_mm=(10.0, 5.0))
    with pytest.raises(ValueError, match="juxtapleural_fraction"):
        PhantomConfig(juxtapleural_fraction=1.5)
    with pytest.raises(ValueError, match="juxtavascular_fraction"):
        PhantomConfig(juxtavascular_fraction=-0.1)
    with pytest.raises(ValueError, match="unknown phantom size 'huge'"):
        PhantomConfig.named("huge")


def test_phantom_seeds_are_distinct_streams():
    seeds = {phantom_seed(s, i) for s in range(3) for i in range(3)}
    assert len(seeds) == 9
    assert phantom_seed(1, 0) != phantom_seed(0, 1)


def test_missing_lidc_file_falls_back_to_parametric(tmp_path):
    p = make_phantom(tiny_config(use_lidc=True, lidc_path=str(tmp_path / "absent.sqlite")), seed=2)
    assert p.nodules and all(n.shape_source == "parametric" for n in p.nodules)
