"""Every real file in ../shared/data/dicom loads correctly or fails with a DicomError naming the problem."""

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from connectors.dicom import DicomError, DicomResampleWarning, pick_ct_series, read_series, scan

pytestmark = pytest.mark.realdata
LOSSLESS = ["J2KR", "JLSL", "JPLL", "RLE"]


@pytest.fixture(scope="module")
def dicom_root(shared_data) -> Path:
    return shared_data / "dicom"


def _reference(dicom_root: Path, ct: str, tmp_path: Path) -> np.ndarray:
    zstandard = pytest.importorskip("zstandard")
    out = tmp_path / f"{ct}_UNC.dcm"
    out.write_bytes(
        zstandard.ZstdDecompressor().decompress(
            (dicom_root / f"wg04_ct/{ct}_UNC.dcm.zst").read_bytes(), max_output_size=1 << 24
        )
    )
    return read_series(out).hu


@pytest.mark.parametrize("ct,manufacturer", [("CT1", "GE MEDICAL SYSTEMS"), ("CT2", "TOSHIBA")])
def test_wg04_transfer_syntaxes_decode_to_the_reference_hu(dicom_root, tmp_path, ct, manufacturer):
    ref = _reference(dicom_root, ct, tmp_path)
    assert ref.shape == (1, 512, 512)
    for kind in LOSSLESS:
        v = read_series(dicom_root / f"wg04_ct/{ct}_{kind}.dcm")
        assert v.manufacturer == manufacturer
        np.testing.assert_array_equal(
            v.hu, ref, err_msg=f"{ct}_{kind} is lossless but differs from the reference"
        )
    near_lossless = read_series(
        dicom_root / f"wg04_ct/{ct}_JLSN.dcm"
    ).hu  # JPEG-LS near-lossless: bounded error
    assert 0 < np.abs(near_lossless - ref).max() <= 4
    lossy = read_series(dicom_root / f"wg04_ct/{ct}_J2KI.dcm").hu  # JPEG 2000 irreversible, ~40:1
    assert lossy.shape == ref.shape
    assert np.corrcoef(lossy.ravel(), ref.ravel())[0, 1] > 0.999


def test_chest_three_slices(dicom_root):
    v = read_series(dicom_root / "real-ct/chest-3slice-dcmqi")
    assert v.shape == (3, 512, 512)
    assert v.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-4)
    # ordered along the normal (+z): the lowest slice (-128.69 mm, file 03) comes first
    assert v.origin == pytest.approx((-235.2, -226.8, -128.69), abs=1e-3)
    assert Path(v.source_files[0]).name == "03.dcm"
    assert (
        v.hu.min() == -3024
    )  # outside the scan field: stored -2000 plus the intercept -1024, so rescale is applied
    lung = np.mean((v.hu > -950) & (v.hu < -600))
    soft = np.mean((v.hu > -100) & (v.hu < 100))
    assert lung > 0.02 and soft > 0.1  # lung bases and liver dome
    assert v.hu.max() > 1000  # bone


def test_chest_single_slices_all_load(dicom_root):
    files = sorted((dicom_root / "real-ct/chest-slices-covid-ny-sbu").glob("*.dcm"))
    assert len(files) == 20
    for p in files:
        v = read_series(p)
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert v.shape == (1, 512, 512)
        assert v.spacing[0] == pytest.approx(float(ds.SliceThickness))
        assert v.hu.min() >= -3024 and np.median(v.hu) < 0, p.name


def test_tilted_head_series_raises_then_resamples(dicom_root):
    folder = dicom_root / "real-ct/head-series-gantry-tilt"
    with pytest.raises(DicomError, match=r"gantry tilt: .*18.50 degrees.*GantryDetectorTilt 18.5"):
        read_series(folder)
    with pytest.warns(DicomResampleWarning) as record:
        v = read_series(folder, resample=True)
    notes = " ".join(str(w.message) for w in record)
    assert "gantry tilt" in notes and "uneven slice spacing" in notes
    # 28 slices spanning 152 mm along z, i.e. 144 mm along the tilted normal, on the median 4.0 mm step
    assert v.spacing[0] == pytest.approx(4.0, abs=0.01)
    assert v.shape == (37, 512, 512)
    np.testing.assert_allclose(np.degrees(np.arccos(v.direction[2, 2])), 18.5, atol=0.01)
    assert -1100 < np.median(v.hu) < 100


def test_enhanced_multiframe_ct(dicom_root):
    path = dicom_root / "pydicom_test_files/eCT_Supplemental.dcm"
    with pytest.warns(UserWarning, match="RescaleType is 'US'"):
        v = read_series(path)
    assert v.shape == (2, 512, 512)
    assert v.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    # orientation (-1, 0, 0 / 0, 1, 0): the normal is -z, so the frame at z = -149 comes first
    assert v.origin[2] == pytest.approx(-149.0)
    np.testing.assert_allclose(v.direction[:, 2], [0, 0, -1])
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32) - 1024
    np.testing.assert_array_equal(v.hu, raw[::-1])


def test_enhanced_ct_with_one_frame(dicom_root, tmp_path):
    ds = pydicom.dcmread(dicom_root / "pydicom_test_files/eCT_Supplemental.dcm")
    frame = ds.pixel_array[1]
    ds.PixelData = frame.tobytes()
    ds.NumberOfFrames = 1
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[1:]
    ds.save_as(tmp_path / "one.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = read_series(tmp_path / "one.dcm")
    assert v.shape == (1, 512, 512)
    np.testing.assert_array_equal(v.hu[0], frame.astype(np.float32) - 1024)
    assert v.origin[2] == pytest.approx(-149.0)


def test_enhanced_ct_without_plane_position(dicom_root, tmp_path):
    ds = pydicom.dcmread(dicom_root / "pydicom_test_files/eCT_Supplemental.dcm")
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(tmp_path / "broken.dcm")
    with pytest.raises(DicomError, match="frame 2: missing functional group PlanePositionSequence"):
        read_series(tmp_path / "broken.dcm")


@pytest.mark.parametrize(
    "name,problem",
    [
        ("pydicom_test_files/MR_small.dcm", "modality is 'MR'"),
        ("pydicom_test_files/MR_small_RLE.dcm", "modality is 'MR'"),
        ("pydicom_test_files/JPEG2000.dcm", "modality is 'NM'"),
        ("pydicom_test_files/rtdose.dcm", "modality is 'RTDOSE'"),
        ("pydicom_test_files/rtplan.dcm", "modality is 'RTPLAN'"),
        ("pydicom_test_files/rtstruct.dcm", "not a DICOM file"),
        ("pydicom_test_files/dicomdirtests/DICOMDIR", "is a DICOMDIR"),
        ("pydicom_test_files/dicomdirtests/77654033/CT2", r"161 missing slice\(s\)"),
        ("pydicom_test_files/dicomdirtests/98892001/CT2N", "ImageOrientationPatient .* differs"),
        ("pydicom_test_files/dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000", "no pixel data"),
    ],
)
def test_non_ct_and_broken_real_inputs_fail_clearly(dicom_root, name, problem):
    with pytest.raises(DicomError, match=problem):
        read_series(dicom_root / name)


def test_every_real_file_loads_or_fails_clearly(dicom_root):
    files = [p for p in sorted(dicom_root.rglob("*")) if p.is_file() and p.suffix not in (".txt", ".zst")]
    files = [p for p in files if p.name != "README"]
    outcomes = {"loaded": 0, "refused": 0}
    for p in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_series([p])
                outcomes["loaded"] += 1
            except DicomError as e:
                assert str(p) in str(e)
                outcomes["refused"] += 1
    assert outcomes["loaded"] >= 20 + 3 + 28 + 12 + 5  # covid, dcmqi, tilted head (single slices), wg04, ...


@pytest.mark.parametrize(
    "variant", ["DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-nooffset", "DICOMDIR-reordered"]
)
def test_dicomdir_variants_catalogue_and_pick(dicom_root, variant):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom notes the non-standard transfer syntax of some variants
        cat = scan(dicom_root / "pydicom_test_files/dicomdirtests" / variant)
    assert sum(s.n_files for s in cat.series) == 31 and not cat.skipped
    assert {s.modality for s in cat.series} == {"CT", "CR", "MR"}
    chosen = pick_ct_series(cat)
    assert chosen.n_files == 5
    v = read_series(chosen.files)
    assert v.shape == (5, 16, 16) and v.spacing[0] == pytest.approx(2.5)


def test_broken_and_empty_dicomdirs(dicom_root):
    base = dicom_root / "pydicom_test_files/dicomdirtests"
    with pytest.raises(DicomError, match="DICOMDIR cannot be read .*missing a required element"):
        scan(base / "DICOMDIR-nopatient")
    with pytest.raises(DicomError, match="no CT series .*found: no series"):
        pick_ct_series(scan(base / "DICOMDIR-empty.dcm"))
    tiny = scan(base / "TINY_ALPHA")
    assert [(s.modality, s.n_files) for s in tiny.series] == [("CT", 50)]
