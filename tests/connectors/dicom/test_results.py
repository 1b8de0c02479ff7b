"""SEG and SR writing: round trip through pydicom and highdicom, and the input checks."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from connectors.dicom.results import Nodule, write_seg, write_sr
from tests.connectors.dicom.ctgen import ct_slice

hd = pytest.importorskip("highdicom")

Z, Y, X = 8, 32, 32
SPACING = (0.8, 0.7)  # (row, column) mm
THICK = 1.5
ORIGIN = np.array([-10.0, -20.0, 30.0])


def _series(study_uid: str | None = None) -> list[pydicom.Dataset]:
    """An axial CT series, returned in reverse slice order so the writers must sort it."""
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    out = []
    for k in range(Z):
        ds = ct_slice(
            np.zeros((Y, X), np.int16),
            position=tuple(ORIGIN + [0.0, 0.0, k * THICK]),
            pixel_spacing=SPACING,
            series_uid=series_uid,
            study_uid=study_uid,
            instance=k + 1,
            thickness=THICK,
        )
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        out.append(ds)
    return out[::-1]


def _center(k: float, j: float, i: float) -> tuple[float, float, float]:
    p = ORIGIN + [i * SPACING[1], j * SPACING[0], k * THICK]
    return (float(p[0]), float(p[1]), float(p[2]))


@pytest.fixture
def case():
    labels = np.zeros((Z, Y, X), np.int16)
    labels[2:5, 5:9, 6:10] = 1
    labels[5:7, 20:25, 18:22] = 3  # labels need not be consecutive
    nodules = [
        Nodule(3, _center(5.5, 22, 19.5), 4.1, 56.0, -20.5, 0.61),
        Nodule(1, _center(3, 6.5, 7.5), 3.2, 40.3, 12.0, 0.93),
    ]
    return _series(), labels, nodules


def test_seg_round_trip(case, tmp_path):
    source, labels, nodules = case
    path = write_seg(source, labels, nodules, tmp_path / "out" / "seg.dcm")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG"
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in source}
    assert ds.PatientID == "SYNTH" and ds.PatientName == "Synthetic^Phantom"
    assert ds.StudyDate == "20260101"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID

    seg = hd.seg.segread(path)
    assert seg.number_of_segments == 2
    for i, n in enumerate(nodules, start=1):
        desc = seg.get_segment_description(i)
        assert desc.tracking_id == f"Nodule {n.label}"
        assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert desc.segmented_property_type == codes.SCT.Nodule
    # the writer sorted the slices; ask for the masks in ascending slice order
    ordered = source[::-1]
    masks = seg.get_pixels_by_source_instance(
        [s.SOPInstanceUID for s in ordered], segment_numbers=[1, 2], ignore_spatial_locations=True
    )  # (Z, Y, X, segments)
    assert masks.shape == (Z, Y, X, 2)
    np.testing.assert_array_equal(masks[..., 0], labels == 3)
    np.testing.assert_array_equal(masks[..., 1], labels == 1)


def _groups(sr):
    return sr.content.get_volumetric_roi_measurement_groups()


def _num(group, concept) -> float:
    (m,) = [m for m in group.get_measurements() if m.name == concept]
    return m.value


def _center_of(group) -> np.ndarray:
    (item,) = [it for it in group[0].ContentSequence if it.name == codes.DCM.Center]
    return np.asarray(item.value, dtype=float)


def test_sr_round_trip_with_seg(case, tmp_path):
    source, labels, nodules = case
    seg_path = write_seg(source, labels, nodules, tmp_path)
    seg_ds = pydicom.dcmread(seg_path)
    sr_path = write_sr(source, nodules, tmp_path / "sr.dcm", seg=seg_ds)

    ds = pydicom.dcmread(sr_path)
    assert ds.Modality == "SR"
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID
    assert ds.SeriesInstanceUID not in {source[0].SeriesInstanceUID, seg_ds.SeriesInstanceUID}
    assert ds.PatientID == "SYNTH"

    sr = hd.sr.srread(sr_path)
    groups = _groups(sr)
    assert len(groups) == 2
    seg_uids = {s.TrackingID: s.TrackingUID for s in seg_ds.SegmentSequence}
    for group, n in zip(groups, nodules, strict=True):
        assert group.tracking_identifier == f"Nodule {n.label}"
        assert group.tracking_uid == seg_uids[f"Nodule {n.label}"]
        assert group.finding_type == codes.SCT.Nodule
        assert group.finding_sites[0].value == codes.SCT.Lung
        assert _num(group, codes.SCT.Diameter) == pytest.approx(n.diameter_mm)
        assert _num(group, codes.SCT.Volume) == pytest.approx(n.volume_mm3)
        assert _num(group, codes.DCM.AttenuationCoefficient) == pytest.approx(n.mean_hu)
        assert _num(group, codes.DCM.CertaintyOfFinding) == pytest.approx(n.confidence * 100)
        np.testing.assert_allclose(_center_of(group), [n.center_mm], atol=1e-4)
        ref = group.referenced_segment
        assert ref is not None
        assert ref.referenced_sop_instance_uid == seg_ds.SOPInstanceUID
        assert ref.referenced_segment_numbers == [1 if n is nodules[0] else 2]
    # the SEG is listed among the evidence
    evidence = {
        i.ReferencedSOPInstanceUID
        for s in ds.CurrentRequestedProcedureEvidenceSequence
        for r in s.ReferencedSeriesSequence
        for i in r.ReferencedSOPSequence
    }
    assert seg_ds.SOPInstanceUID in evidence


def test_sr_without_seg_uses_a_point(case, tmp_path):
    source, _, nodules = case
    sr = hd.sr.srread(write_sr(source, nodules[:1], tmp_path / "sr.dcm"))
    (group,) = _groups(sr)
    roi = group.roi
    assert roi is not None
    np.testing.assert_allclose(roi.graphic_data, [nodules[0].center_mm], atol=1e-4)
    assert roi.frame_of_reference_uid == source[0].FrameOfReferenceUID
    np.testing.assert_allclose(_center_of(group), [nodules[0].center_mm], atol=1e-4)


def test_sr_no_nodules_says_absent(case, tmp_path):
    source, _, _ = case
    sr = hd.sr.srread(write_sr(source, [], tmp_path / "sr.dcm"))
    assert _groups(sr) == []
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "No nodules"
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == codes.SCT.Nodule
    assert evaluation.value == codes.SCT.Absent


def test_seg_no_nodules_raises(case, tmp_path):
    source, labels, _ = case
    with pytest.raises(ValueError, match="at least one segment"):
        write_seg(source, labels, [], tmp_path / "seg.dcm")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s, lab, n: (s, lab[:-1], n), "shape"),
        (lambda s, lab, n: (s, lab.astype(np.float32), n), "integer"),
        (lambda s, lab, n: (s, lab, [*n, Nodule(7, (0, 0, 0), 1, 1, 0, 0.5)]), r"\[7\] not present"),
        (lambda s, lab, n: (s, lab, [Nodule(1, (0, 0, 0), 1, 1, 0, 1.5)]), "confidence"),
    ],
)
def test_seg_bad_input(case, tmp_path, change, match):
    source, labels, nodules = change(*case)
    with pytest.raises(ValueError, match=match):
        write_seg(source, labels, nodules, tmp_path / "seg.dcm")


def test_mixed_series_and_missing_geometry(case, tmp_path):
    source, labels, nodules = case
    mixed = [*source[:-1], _series(source[0].StudyInstanceUID)[0]]
    with pytest.raises(ValueError, match="mixes 2 series"):
        write_seg(mixed, labels, nodules, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="mixes 2 series"):
        write_sr(mixed, nodules, tmp_path / "sr.dcm")
    del source[3].ImageOrientationPatient
    with pytest.raises(ValueError, match="ImageOrientationPatient"):
        write_seg(source, labels, nodules, tmp_path / "seg.dcm")
    del source[2].FrameOfReferenceUID
    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        write_sr(source, nodules, tmp_path / "sr.dcm")


def test_sr_seg_missing_nodule(case, tmp_path):
    source, labels, nodules = case
    seg_ds = pydicom.dcmread(write_seg(source, labels, nodules[:1], tmp_path))
    with pytest.raises(ValueError, match="no segment with tracking ID 'Nodule 1'"):
        write_sr(source, nodules, tmp_path / "sr.dcm", seg=seg_ds)
