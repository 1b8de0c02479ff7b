"""PS3.15 basic-profile de-identification: PHI gone, pixels untouched, UIDs remapped consistently."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connectors.dicom import DicomError, read_series
from connectors.dicom.deid import DeidConfig, Deidentifier, remaining_phi
from tests.connectors.dicom.ctgen import ct_slice

STUDY, SERIES, FOR = (
    "1.2.826.0.1.3680043.2.1125.1",
    "1.2.826.0.1.3680043.2.1125.2",
    "1.2.826.0.1.3680043.2.1125.3",
)
PRIOR_STUDY = "1.2.826.0.1.3680043.2.1125.9"
UID_RE = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")


def _item(**kw) -> Dataset:
    item = Dataset()
    for k, v in kw.items():
        setattr(item, k, v)
    return item


def phi_slice(z: float, instance: int) -> Dataset:
    ds = ct_slice(
        np.arange(30, dtype=np.int16).reshape(6, 5) * (instance + 1),
        position=(0.0, 0.0, z),
        series_uid=SERIES,
        study_uid=STUDY,
        instance=instance,
    )
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-123456"
    ds.PatientBirthDate = "19610704"
    ds.PatientAge = "064Y"
    ds.InstitutionName = "St Example Hospital"
    ds.InstitutionAddress = "1 Example Road"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.OperatorsName = "Tech^Tina"
    ds.DeviceSerialNumber = "SN-998877"
    ds.StationName = "CTROOM7"
    ds.AccessionNumber = "ACC-20260101-42"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.AcquisitionDateTime = "20260101120102.5"
    ds.StudyDescription = "Chest CT for Doe"
    ds.FrameOfReferenceUID = FOR
    ds.ReferencedStudySequence = Sequence(
        [_item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=PRIOR_STUDY)]
    )
    ds.RequestAttributesSequence = Sequence(
        [_item(RequestedProcedureID="RP-77", ScheduledProcedureStepID="SPS-1", AccessionNumber="ACC-OLD")]
    )
    ref = _item(
        ReferencedSOPClassUID=ds.SOPClassUID, ReferencedSOPInstanceUID="1.2.826.0.1.3680043.2.1125.50"
    )
    ds.ReferencedImageSequence = Sequence([ref])
    # a sequence outside Table E.1-1 whose items hold attributes of the table
    ds.ReferencedSeriesSequence = Sequence(
        [_item(SeriesInstanceUID=SERIES, InstitutionName="Other Hospital")]
    )
    block = ds.private_block(0x0029, "ACME PHI", create=True)
    block.add_new(0x10, "LO", "Doe^Jane private copy")
    ds.add_new(0x60000010, "US", 6)  # overlay rows
    ds.add_new(0x60003000, "OW", b"\x00" * 8)  # overlay data
    return ds


@pytest.fixture
def deid() -> Deidentifier:
    return Deidentifier(DeidConfig(salt="test-salt"))


def test_phi_is_gone_and_profile_is_declared(deid):
    ds = phi_slice(0.0, 1)
    out = deid.dataset(ds)
    assert remaining_phi(ds)  # the checker sees the original's PHI
    assert remaining_phi(out, ds) == []
    assert out.PatientID == out.PatientName == deid.pseudonym("MRN-123456")
    assert out.PatientID.startswith("ANON-")
    for kw in ("PatientAge", "InstitutionName", "DeviceSerialNumber", "OperatorsName", "StationName"):
        assert kw not in out, kw
    for kw in ("PatientBirthDate", "ReferringPhysicianName", "AccessionNumber", "StudyDate"):
        assert not out.get(kw), kw
    assert "RequestAttributesSequence" not in out and "ReferencedStudySequence" not in out
    assert "InstitutionName" not in out.ReferencedSeriesSequence[0]
    assert not any(e.tag.is_private for e in out.iterall())
    assert not any(e.tag.group == 0x6000 for e in out)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert code.CodeMeaning == "Basic Application Confidentiality Profile"
    assert out.Modality == "CT" and out.SOPClassUID == ds.SOPClassUID  # non-identifying attributes kept


def test_input_untouched_and_pixels_identical(deid):
    ds = phi_slice(0.0, 1)
    before = ds.to_json_dict()
    out = deid.dataset(ds)
    assert ds.to_json_dict() == before
    assert out.PixelData == ds.PixelData
    np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)


def test_uids_remapped_consistently_across_slices_and_sequences(deid):
    a, b = deid.dataset(phi_slice(0.0, 1)), deid.dataset(phi_slice(1.0, 2))
    assert a.StudyInstanceUID == b.StudyInstanceUID == deid.uid(STUDY) != STUDY
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == deid.uid(SERIES)
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID == deid.uid(FOR)
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.ReferencedSeriesSequence[0].SeriesInstanceUID == a.SeriesInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.uid("1.2.826.0.1.3680043.2.1125.50")
    assert a.SOPClassUID == a.ReferencedImageSequence[0].ReferencedSOPClassUID  # class UIDs are not PHI
    for uid in (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID, a.FrameOfReferenceUID):
        assert len(uid) <= 64 and UID_RE.match(uid), uid
        assert uid.startswith("2.25.")


def test_uid_mapping_deterministic_per_salt_and_root():
    one, again = Deidentifier(DeidConfig(salt="s1")), Deidentifier(DeidConfig(salt="s1"))
    other = Deidentifier(DeidConfig(salt="s2"))
    assert one.uid(STUDY) == again.uid(STUDY)
    assert one.uid(STUDY) != other.uid(STUDY)
    assert one.pseudonym("X") == again.pseudonym("X") != other.pseudonym("X")
    rooted = Deidentifier(DeidConfig(salt="s1", uid_root="1.2.826.0.1.3680043.10.999."))
    new = rooted.uid(STUDY)
    assert new.startswith("1.2.826.0.1.3680043.10.999.") and len(new) == 64 and UID_RE.match(new)


def test_date_shift_is_consistent(monkeypatch):
    monkeypatch.setenv("FATHOM_DEID_SALT", "from-env")
    deid = Deidentifier(DeidConfig(date_shift_days=-10))
    ds = phi_slice(0.0, 1)
    out = deid.dataset(ds)
    assert out.StudyDate == out.SeriesDate == out.ContentDate == "20251222"
    assert out.PatientBirthDate == "19610624"
    assert out.AcquisitionDateTime == "20251222120102.5"
    assert out.StudyTime == ds.StudyTime
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert remaining_phi(out, ds) == []


def test_keep_private_and_burned_in_annotation():
    ds = phi_slice(0.0, 1)
    out = Deidentifier(DeidConfig(salt="s", keep_private=True)).dataset(ds)
    assert any(e.tag.is_private for e in out)
    # private attributes are accepted, but a private copy of the name is still caught as PHI
    left = remaining_phi(out, ds, allow_private=True)
    assert len(left) == 1 and "holds the original value of PatientName" in left[0]
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DicomError, match="BurnedInAnnotation"):
        Deidentifier(DeidConfig(salt="s")).dataset(ds)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"salt": ""}, "salt is empty"),
        ({"salt": "s", "uid_root": "1.02.3"}, "uid_root"),
        ({"salt": "s", "uid_root": "1." + "2" * 40}, "uid_root"),
        ({"salt": "s", "patient_id_prefix": "a b"}, "patient_id_prefix"),
    ],
)
def test_config_errors(monkeypatch, kw, match):
    monkeypatch.delenv("FATHOM_DEID_SALT", raising=False)
    with pytest.raises(ValueError, match=match):
        DeidConfig(**kw)


def test_missing_salt_env(monkeypatch):
    monkeypatch.delenv("FATHOM_DEID_SALT", raising=False)
    with pytest.raises(ValueError, match="FATHOM_DEID_SALT"):
        DeidConfig()


def test_file_and_folder_round_trip(deid, tmp_path, caplog):
    src = tmp_path / "src"
    (src / "study" / "series").mkdir(parents=True)
    for i in range(2):
        phi_slice(float(i), i + 1).save_as(src / "study" / "series" / f"im{i}.dcm", enforce_file_format=True)
    (src / "study" / "notes.txt").write_text("Doe^Jane called")
    with caplog.at_level(logging.WARNING):
        written = deid.folder(src, tmp_path / "dst")
    assert [p.relative_to(tmp_path / "dst") for p in written] == [
        Path("study/series/im0.dcm"),
        Path("study/series/im1.dcm"),
    ]
    assert not (tmp_path / "dst" / "study" / "notes.txt").exists()
    assert "notes.txt" in caplog.text and "Doe" not in caplog.text
    for p in written:
        assert b"Doe" not in p.read_bytes() and b"MRN-123456" not in p.read_bytes()
        back = pydicom.dcmread(p)
        assert remaining_phi(back, pydicom.dcmread(src / p.relative_to(tmp_path / "dst"))) == []
    vol = read_series(tmp_path / "dst" / "study" / "series")  # still a valid, consistent CT series
    assert vol.hu.shape == (2, 6, 5)

    single = deid.file(src / "study" / "series" / "im0.dcm", tmp_path / "one" / "x.dcm")
    assert pydicom.dcmread(single).SOPInstanceUID == pydicom.dcmread(written[0]).SOPInstanceUID


def test_non_dicom_input_errors(deid, tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_text("not dicom")
    with pytest.raises(DicomError, match="not a readable DICOM file"):
        deid.file(bad, tmp_path / "out.dcm")
    assert not (tmp_path / "out.dcm").exists()
    with pytest.raises(DicomError, match="not a folder"):
        deid.folder(bad, tmp_path / "o")
    with pytest.raises(DicomError, match="expected a pydicom Dataset"):
        deid.dataset("x")  # type: ignore[arg-type]


@pytest.mark.realdata
def test_real_ct_files(shared_data, tmp_path):
    root = shared_data / "dicom"
    files = sorted((root / "real-ct").rglob("*.dcm"))[:3] + [root / "pydicom_test_files" / "CT_small.dcm"]
    files = [f for f in files if f.is_file()]
    if not files:
        pytest.skip("no real CT files found")
    deid = Deidentifier(DeidConfig(salt="real"))
    for i, f in enumerate(files):
        out = deid.file(f, tmp_path / f"{i}.dcm")
        original, back = pydicom.dcmread(f), pydicom.dcmread(out)
        assert remaining_phi(back, original) == []
        assert back.PixelData == original.PixelData
        assert back.StudyInstanceUID == deid.uid(original.StudyInstanceUID)
