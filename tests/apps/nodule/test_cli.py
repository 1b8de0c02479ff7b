from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from apps.nodule.cli import nodule_app
from connectors.dicom import read_series

runner = CliRunner()


def test_phantoms_writes_series_masks_and_truth(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        nodule_app, ["phantoms", "--n", "2", "--seed", "3", "--out", str(out), "--size", "tiny"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 phantom series" in result.output and str(out) in result.output
    index = json.loads((out / "index.json").read_text())
    assert [p["name"] for p in index["phantoms"]] == ["phantom_000", "phantom_001"]
    for item in index["phantoms"]:
        folder = out / item["name"]
        truth = json.loads((folder / "truth.json").read_text())
        assert len(truth["nodules"]) == item["n_nodules"]
        assert (folder / "masks.npz").is_file()
        assert read_series(folder / "dicom").shape == tuple(truth["shape_zyx"])
    # same seed, same output
    again = tmp_path / "again"
    runner.invoke(nodule_app, ["phantoms", "--n", "2", "--seed", "3", "--out", str(again), "--size", "tiny"])
    for name in ("phantom_000", "phantom_001"):
        assert (out / name / "truth.json").read_text() == (again / name / "truth.json").read_text()


def test_phantoms_rejects_bad_options(tmp_path):
    result = runner.invoke(nodule_app, ["phantoms", "--n", "1", "--out", str(tmp_path), "--size", "huge"])
    assert result.exit_code == 2 and "--size must be one of tiny, small, medium, default" in result.output
    result = runner.invoke(nodule_app, ["phantoms", "--n", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--n must be >= 1" in result.output
    (tmp_path / "file").write_text("x")
    result = runner.invoke(nodule_app, ["phantoms", "--out", str(tmp_path / "file"), "--size", "tiny"])
    assert result.exit_code == 2 and "is not a folder" in result.output


def test_deid_folder_removes_phi_and_keeps_the_series_readable(tmp_path, monkeypatch):
    import pydicom

    from connectors.dicom.deid import remaining_phi

    src = tmp_path / "phantoms"
    runner.invoke(nodule_app, ["phantoms", "--n", "1", "--seed", "1", "--out", str(src), "--size", "tiny"])
    series = src / "phantom_000" / "dicom"
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.InstitutionName = "Doe^Jane", "St Example Hospital"
        ds.save_as(path)
    out = tmp_path / "clean"
    monkeypatch.delenv("FATHOM_DEID_SALT", raising=False)
    result = runner.invoke(nodule_app, ["deid", str(series), "--out", str(out), "--json"])
    assert result.exit_code == 2 and "salt" in result.output  # no secret, no run
    monkeypatch.setenv("FATHOM_DEID_SALT", "test-secret")
    result = runner.invoke(nodule_app, ["deid", str(series), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = [Path(p) for p in json.loads(result.stdout)["written"]]
    assert len(written) == len(list(series.glob("*.dcm")))
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and "Doe" not in str(ds.PatientName)
        assert "InstitutionName" not in ds and not remaining_phi(ds)
    assert read_series(out).shape == read_series(series).shape
    missing = runner.invoke(nodule_app, ["deid", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and "does not exist" in missing.output
