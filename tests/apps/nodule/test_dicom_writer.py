from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from apps.nodule.dicom_writer import write_phantom
from apps.nodule.phantoms import make_phantom
from connectors.dicom import read_series
from tests.apps.nodule.conftest import tiny_config


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    phantom = make_phantom(tiny_config(type_weights=(1.0, 0.0, 0.0)), seed=21)
    folder = tmp_path_factory.mktemp("phantom")
    truth = write_phantom(phantom, folder)
    return phantom, folder, truth


def test_series_reads_back_with_same_hu_and_geometry(written):
    phantom, folder, truth = written
    vol = read_series(folder / "dicom")
    assert vol.shape == phantom.shape
    np.testing.assert_allclose(vol.hu, phantom.hu, atol=0.5 + 1e-3)  # stored as rounded integers
    np.testing.assert_allclose(vol.spacing, phantom.spacing, atol=1e-5)
    np.testing.assert_allclose(vol.origin, phantom.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.slice_thickness == pytest.approx(phantom.slice_thickness)
    assert vol.series_uid == truth["uids"]["series"] and vol.study_uid == truth["uids"]["study"]


def test_masks_and_truth_align_with_the_read_volume(written):
    phantom, folder, truth = written
    vol = read_series(folder / "dicom")
    masks = np.load(folder / "masks.npz")
    np.testing.assert_array_equal(masks["nodule_mask"], phantom.nodule_mask)
    np.testing.assert_array_equal(masks["lung_mask"], phantom.lung_mask)
    assert truth["nodules"], "no nodule to check"
    lung_only = masks["lung_mask"] & (masks["tissue"] == 3)
    for n in truth["nodules"]:
        kji = vol.patient_to_voxel(np.array(n["centre_mm"]))
        np.testing.assert_allclose(kji, n["centre_voxel"], atol=1e-4)
        nodule_hu = float(vol.hu[masks["nodule_mask"] == n["label"]].mean())
        assert nodule_hu > float(np.median(vol.hu[lung_only])) + 400  # solid nodule stands out of the lung
    on_disk = json.loads((folder / "truth.json").read_text())
    assert on_disk["nodules"] == json.loads(json.dumps([t.to_dict() for t in phantom.nodules]))


def test_dicom_tags(written):
    phantom, folder, truth = written
    files = sorted((folder / "dicom").glob("*.dcm"))
    assert len(files) == phantom.shape[0]
    first, last = pydicom.dcmread(files[0]), pydicom.dcmread(files[-1])
    for ds in (first, last):
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.RescaleSlope == 1 and ds.RescaleIntercept == -1024 and ds.RescaleType == "HU"
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.FrameOfReferenceUID == truth["uids"]["frame_of_reference"]
        assert ds.PatientID == f"PHANTOM-{phantom.seed}"
    assert first.SOPInstanceUID != last.SOPInstanceUID
    assert float(last.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == pytest.approx(
        (phantom.shape[0] - 1) * phantom.spacing[0]
    )


def test_same_seed_writes_same_uids(tmp_path):
    a = write_phantom(make_phantom(tiny_config(), 4), tmp_path / "a")
    b = write_phantom(make_phantom(tiny_config(), 4), tmp_path / "b")
    c = write_phantom(make_phantom(tiny_config(), 5), tmp_path / "c")
    assert a["uids"] == b["uids"]
    assert a["uids"]["series"] != c["uids"]["series"]
