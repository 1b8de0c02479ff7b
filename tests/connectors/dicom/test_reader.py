"""read_series on generated series: good ones load exactly; broken ones raise a DicomError naming it."""

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from connectors.dicom import DicomError, DicomResampleWarning, read_series
from tests.connectors.dicom.ctgen import ct_slice, write_series


def _stored(k: int, shape=(6, 5)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (100 * k + 10 * rows + cols).astype(np.float32)


def test_series_is_ordered_by_position_and_rescaled(tmp_path):
    write_series(tmp_path, [0.0, 2.5, 5.0, 7.5], slope=2.0, intercept=-1000.0)
    v = read_series(tmp_path)
    assert v.shape == (4, 6, 5)
    assert v.hu.dtype == np.float32
    for k in range(4):
        np.testing.assert_array_equal(v.hu[k], _stored(k) * 2 - 1000)
    assert v.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert v.origin == pytest.approx((-10, -20, 0))
    np.testing.assert_allclose(v.direction, np.eye(3), atol=1e-9)
    assert v.manufacturer == "Fathom test" and v.kernel == "STANDARD" and v.slice_thickness == 1.0
    assert v.resampled == []
    np.testing.assert_allclose(v.voxel_to_patient([3, 0, 0]), [-10, -20, 7.5], atol=1e-4)


def test_order_follows_the_normal_not_z_for_coronal_slices(tmp_path):
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # normal = row x col = (0, 1, 0)
    write_series(tmp_path, [3.0, 0.0, 6.0], orientation=coronal)
    v = read_series(tmp_path)
    # written slice k=1 lies at 0 mm, k=0 at 3 mm, k=2 at 6 mm along +y
    np.testing.assert_array_equal(v.hu[:, 0, 0], np.array([100, 0, 200]) - 1024)
    np.testing.assert_allclose(v.direction[:, 2], [0, 1, 0], atol=1e-9)
    assert v.spacing[0] == pytest.approx(3.0)


def test_each_slice_has_its_own_rescale(tmp_path):
    uid, study = generate_uid(), generate_uid()
    for k, intercept in enumerate([-1024.0, 0.0]):
        ds = ct_slice(
            np.full((4, 4), 10, np.int16),
            position=(0, 0, k),
            series_uid=uid,
            study_uid=study,
            intercept=intercept,
        )
        ds.save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    v = read_series(tmp_path)
    assert v.hu[0, 0, 0] == -1014 and v.hu[1, 0, 0] == 10


def test_rle_compressed_series_decodes_to_the_same_hu(tmp_path):
    paths = write_series(tmp_path / "raw", [0.0, 1.0, 2.0])
    (tmp_path / "rle").mkdir()
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(tmp_path / "rle" / p.name, enforce_file_format=True)
    np.testing.assert_array_equal(read_series(tmp_path / "rle").hu, read_series(tmp_path / "raw").hu)


def test_truncated_file(tmp_path):
    paths = write_series(tmp_path, [0.0, 1.0, 2.0])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) - 25])
    with pytest.raises(DicomError, match="cannot decode pixel data|truncated") as e:
        read_series(tmp_path)
    assert paths[1].name in str(e.value)


@pytest.mark.parametrize("keep", [300, 700, 1000])
def test_file_cut_inside_the_header(tmp_path, keep):
    paths = write_series(tmp_path, [0.0, 1.0])
    paths[0].write_bytes(paths[0].read_bytes()[:keep])
    with pytest.raises(DicomError, match="truncated") as e:
        read_series(tmp_path)
    assert paths[0].name in str(e.value)


def test_no_pixel_data(tmp_path):
    paths = write_series(tmp_path, [0.0, 1.0])
    ds = pydicom.dcmread(paths[0])
    del ds.PixelData
    ds.save_as(paths[0], enforce_file_format=True)
    with pytest.raises(DicomError, match="no pixel data"):
        read_series(tmp_path)


def test_two_series_mixed(tmp_path):
    write_series(tmp_path, [0.0, 1.0])
    write_series(tmp_path / "other", [5.0, 6.0])
    with pytest.raises(DicomError, match="2 series mixed"):
        read_series(tmp_path)


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_tag(tmp_path, tag):
    paths = write_series(tmp_path, [0.0, 1.0, 2.0])
    ds = pydicom.dcmread(paths[2])
    delattr(ds, tag)
    ds.save_as(paths[2], enforce_file_format=True)
    with pytest.raises(DicomError, match=f"missing geometry tag {tag}") as e:
        read_series(tmp_path)
    assert paths[2].name in str(e.value)


@pytest.mark.parametrize("modality", ["MR", "SR"])
def test_wrong_modality(tmp_path, modality):
    write_series(tmp_path, [0.0, 1.0], modality=modality)
    with pytest.raises(DicomError, match=f"modality is '{modality}', expected 'CT'"):
        read_series(tmp_path)


@pytest.mark.parametrize("resample", [False, True])
def test_missing_slice_in_the_middle_always_raises(tmp_path, resample):
    write_series(tmp_path, [0.0, 1.25, 2.5, 5.0, 6.25])
    with pytest.raises(DicomError, match=r"1 missing slice\(s\): gap of 2.500 mm"):
        read_series(tmp_path, resample=resample)


def test_duplicate_position(tmp_path):
    write_series(tmp_path, [0.0, 1.0, 1.0, 2.0])
    with pytest.raises(DicomError, match="two slices at the same position"):
        read_series(tmp_path)


def test_uneven_spacing_raises_by_default(tmp_path):
    write_series(tmp_path, [0.0, 2.0, 4.0, 7.0, 10.0, 13.0])
    with pytest.raises(DicomError, match=r"uneven slice spacing \(2.000 to 3.000 mm"):
        read_series(tmp_path)


def test_uneven_spacing_resamples_with_a_warning(tmp_path):
    z = [0.0, 2.0, 4.0, 7.0, 10.0, 13.0]
    write_series(tmp_path, z, intercept=0.0)
    with pytest.warns(DicomResampleWarning, match="uneven slice spacing"):
        v = read_series(tmp_path, resample=True)
    step = float(np.median(np.diff(z)))  # 3.0
    assert v.spacing[0] == pytest.approx(step)
    targets = np.arange(v.shape[0]) * step
    assert targets[-1] <= 13.0
    # stored value at (0, 0) of slice k is 100 k: linear interpolation in z gives np.interp over the positions
    np.testing.assert_allclose(v.hu[:, 0, 0], np.interp(targets, z, 100 * np.arange(len(z))), atol=1e-3)
    assert v.resampled and "uneven" in v.resampled[0]


def _tilted(tmp_path, degrees=15.0):
    t = np.radians(degrees)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))  # rows tilted about x, as a gantry tilt does
    write_series(
        tmp_path,
        [0.0, 2.0, 4.0, 6.0],
        shape=(16, 6),
        step=(0.0, 0.0, 1.0),
        orientation=orientation,
        intercept=0.0,
    )
    return orientation


def test_gantry_tilt_raises_by_default(tmp_path):
    _tilted(tmp_path)
    with pytest.raises(
        DicomError, match=r"gantry tilt: slice positions step 15.00 degrees off the image normal"
    ):
        read_series(tmp_path)


def test_gantry_tilt_resampled_puts_each_value_where_the_patient_is(tmp_path):
    orientation = _tilted(tmp_path)
    with pytest.warns(DicomResampleWarning, match="gantry tilt"):
        v = read_series(tmp_path, resample=True)
    r, c = np.array(orientation[:3]), np.array(orientation[3:])
    n = np.cross(r, c)
    np.testing.assert_allclose(v.direction, np.column_stack([r, c, n]), atol=1e-6)
    assert v.spacing[0] == pytest.approx(2.0 * n[2])
    # compare every voxel well inside the image with the acquired slice's value at the same patient point
    checked = 0
    for k in range(v.shape[0]):
        p_k = np.array([-10.0, -20.0, 2.0 * k])  # acquired position of slice k
        for j in range(4, 12):
            for i in range(v.shape[2]):
                x = v.voxel_to_patient([k, j, i])
                j_raw = np.dot(x - p_k, c) / 0.8
                i_raw = np.dot(x - p_k, r) / 0.7
                assert abs(np.dot(x - p_k, n)) < 1e-3  # the voxel lies in acquired slice k's plane
                assert v.hu[k, j, i] == pytest.approx(100 * k + 10 * j_raw + i_raw, abs=1e-2)
                checked += 1
    assert checked == 4 * 8 * 6


def test_not_dicom_and_dicomdir_are_refused(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("not an image\n" * 20)
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_series([text])
    with pytest.raises(DicomError, match="no such file"):
        read_series(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomError, match="folder holds no DICOM files"):
        read_series(empty)


def test_localizer_orientation_mixed_in(tmp_path):
    uid, study = generate_uid(), generate_uid()
    write_series(tmp_path, [0.0, 1.0, 2.0], series_uid=uid, study_uid=study)
    ds = ct_slice(
        np.zeros((6, 5), np.int16),
        position=(0, 0, 0),
        orientation=(1, 0, 0, 0, 0, -1),
        series_uid=uid,
        study_uid=study,
    )
    ds.save_as(tmp_path / "scout.dcm", enforce_file_format=True)
    with pytest.raises(DicomError, match="ImageOrientationPatient .* differs"):
        read_series(tmp_path)


def test_single_slice_uses_slice_thickness(tmp_path):
    write_series(tmp_path, [0.0], thickness=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = read_series(tmp_path)
    assert v.shape == (1, 6, 5) and v.spacing[0] == 5.0
