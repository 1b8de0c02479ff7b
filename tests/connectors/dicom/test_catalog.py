import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from connectors.dicom import DicomError, pick_ct_series, read_series, scan
from tests.connectors.dicom.ctgen import ct_slice, write_series


def _folder(tmp_path):
    study = generate_uid()
    thin = write_series(tmp_path / "a", [0.0, 1.0, 2.0, 3.0, 4.0], study_uid=study, thickness=1.0)
    thick = write_series(tmp_path / "b", [0.0, 5.0, 10.0], study_uid=study, thickness=5.0)
    write_series(tmp_path / "mr", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], study_uid=study, modality="MR")
    (tmp_path / "README.txt").write_text("not DICOM")
    return study, thin, thick


def test_scan_groups_series_by_study_and_skips_non_dicom(tmp_path):
    study, thin, thick = _folder(tmp_path)
    other_study = write_series(tmp_path / "c", [0.0])
    cat = scan(tmp_path)
    assert len(cat.studies) == 2
    main = next(st for st in cat.studies if st.study_uid == study)
    counts = sorted((s.modality, s.n_files) for s in main.series)
    assert counts == [("CT", 3), ("CT", 5), ("MR", 7)]
    assert [p.name for p, _ in cat.skipped] == ["README.txt"]
    assert "not a DICOM" in cat.skipped[0][1]
    assert sum(s.n_files for s in cat.series) == 3 + 5 + 7 + len(other_study)


def test_pick_prefers_the_ct_series_with_most_images(tmp_path):
    _, thin, _ = _folder(tmp_path)
    chosen = pick_ct_series(scan(tmp_path))
    assert sorted(chosen.files) == sorted(thin)
    assert read_series(chosen.files).shape == (5, 6, 5)


def test_pick_breaks_ties_by_thinner_slices_and_skips_localizers(tmp_path):
    study = generate_uid()
    write_series(tmp_path / "thick", [0.0, 5.0, 10.0], study_uid=study, thickness=5.0)
    thin = write_series(tmp_path / "thin", [0.0, 1.0, 2.0], study_uid=study, thickness=1.0)
    scout_uid = generate_uid()
    for k in range(6):
        ds = ct_slice(np.zeros((4, 4), np.int16), position=(0, 0, k), series_uid=scout_uid, study_uid=study)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(tmp_path / f"scout{k}.dcm", enforce_file_format=True)
    cat = scan(tmp_path)
    assert any(s.localizer for s in cat.series)
    assert sorted(pick_ct_series(cat).files) == sorted(thin)


def test_pick_without_ct_names_what_was_found(tmp_path):
    write_series(tmp_path, [0.0, 1.0], modality="MR")
    with pytest.raises(DicomError, match=r"no CT series .*found: MR \(2 images\)"):
        pick_ct_series(scan(tmp_path))


def test_dicomdir_written_by_pydicom_is_read(tmp_path):
    study = generate_uid()
    src = write_series(tmp_path / "src", [0.0, 1.0, 2.0, 3.0], study_uid=study)
    write_series(tmp_path / "src_mr", [0.0, 1.0], study_uid=study, modality="MR")
    fs = FileSet()
    for p in sorted((tmp_path / "src").glob("*.dcm")) + sorted((tmp_path / "src_mr").glob("*.dcm")):
        fs.add(pydicom.dcmread(p))
    fs.write(tmp_path / "media")
    for target in (tmp_path / "media", tmp_path / "media" / "DICOMDIR"):
        cat = scan(target)
        assert sorted((s.modality, s.n_files) for s in cat.series) == [("CT", 4), ("MR", 2)]
        v = read_series(pick_ct_series(cat).files)
        np.testing.assert_array_equal(v.hu, read_series(src).hu)


def test_broken_dicomdir_and_missing_source(tmp_path):
    bad = tmp_path / "DICOMDIR"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 40)
    with pytest.raises(DicomError, match="DICOMDIR cannot be read"):
        scan(bad)
    with pytest.raises(DicomError, match="no such file or folder"):
        scan(tmp_path / "absent")


def test_scan_of_a_file_list_reads_only_those_files(tmp_path):
    """A file list is catalogued on its own: the thin series beside it in the same tree is not
    picked, and a non-DICOM file among the list is skipped with its reason."""
    _, thin, thick = _folder(tmp_path)
    mr = sorted((tmp_path / "mr").iterdir())
    cat = scan([*thick, *mr, tmp_path / "README.txt"])
    assert cat.root == tmp_path.resolve()
    assert sorted((s.modality, s.n_files) for s in cat.series) == [("CT", 3), ("MR", 7)]
    assert [p.name for p, _ in cat.skipped] == ["README.txt"]
    assert sorted(pick_ct_series(cat).files) == sorted(thick)
    with pytest.raises(DicomError, match="no such file"):
        scan([thick[0], tmp_path / "absent.dcm"])
    with pytest.raises(DicomError, match="no files given"):
        scan([])
