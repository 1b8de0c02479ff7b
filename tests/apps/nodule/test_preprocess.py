"""The working grid, the lung mask and the crop box the detector runs in."""

from __future__ import annotations

import numpy as np
import pytest

from apps.nodule.phantoms import PhantomConfig, make_phantom
from apps.nodule.preprocess import Box, lung_box, lung_mask, resample, window


@pytest.fixture(scope="module")
def small_phantom():
    return make_phantom(PhantomConfig.small(), seed=4)


def test_resample_keeps_extent_and_label_values(small_phantom):
    p = small_phantom
    img = resample(p.hu, p.spacing, 3.0)
    lab = resample(p.nodule_mask, p.spacing, 3.0, labels=True)
    assert img.dtype == np.float32 and lab.dtype == p.nodule_mask.dtype
    assert img.shape == lab.shape
    for n, s, m in zip(p.shape, p.spacing, img.shape, strict=True):
        assert abs((m - 1) * 3.0 - (n - 1) * s) <= 3.0  # same extent, one working voxel of slack
    assert set(np.unique(lab)) <= set(np.unique(p.nodule_mask))  # nearest: no invented labels
    # voxel (0, 0, 0) stays put: the corner value survives
    assert img[0, 0, 0] == pytest.approx(p.hu[0, 0, 0], abs=1.0)


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        resample(np.zeros((4, 4)), (1, 1, 1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros((4, 4, 4)), (1, 0, 1), 1.0)


def test_lung_mask_matches_the_phantom_lungs(small_phantom):
    p = small_phantom
    t = 2.0
    hu = resample(p.hu, p.spacing, t)
    truth = resample(p.lung_mask.astype(np.uint8), p.spacing, t, labels=True).astype(bool)
    mask = lung_mask(hu, (t, t, t))
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.9
    # nodules inside the lung lie inside the mask (holes filled); juxtapleural ones, bites out of
    # the lung's edge, at least touch it (the detector keeps components that touch the lungs)
    nodules = resample(p.nodule_mask, p.spacing, t, labels=True)
    for n in p.nodules:
        inside = mask[nodules == n.label].mean()
        assert inside > 0 if n.juxtapleural else inside > 0.8, (n, inside)


def test_lung_mask_is_empty_without_lungs():
    body = np.full((20, 40, 40), -1000.0, np.float32)
    body[:, 5:35, 5:35] = 40.0  # soft tissue, no air inside
    assert not lung_mask(body, (2.0, 2.0, 2.0)).any()


def test_lung_box_margin_and_minimum_size():
    mask = np.zeros((30, 50, 50), bool)
    mask[10:12, 20:30, 5:8] = True
    box = lung_box(mask, 2, min_size=(8, 8, 8))
    assert isinstance(box, Box)
    assert box.start[1] == 18 and box.stop[1] == 32
    assert all(s >= 8 for s in box.shape)
    assert mask[box.slices].sum() == mask.sum()
    assert lung_box(np.zeros_like(mask), 2) is None


def test_window_maps_the_hu_range_to_unit_interval():
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0], np.float32)
    out = np.asarray(window(hu))
    assert out[0] == 0.0 and out[1] == 0.0 and out[3] == 1.0 and out[4] == 1.0
    assert out[2] == pytest.approx(0.5)
