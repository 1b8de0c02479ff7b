"""Nodule results as standard DICOM: a Segmentation (SEG) and a Comprehensive 3D SR (TID 1500).

Any DICOM viewer that shows SEG and TID 1500 SR (OHIF, 3D Slicer, Horos, most PACS) displays them
over the source CT. Both objects join the source study (same StudyInstanceUID, patient and study
attributes copied from the source), each in a new series with new UIDs.

Axis order: ``labels`` is ``(Z, Y, X)``; ``labels[k]`` is the ``k``-th source slice **sorted along
the image-plane normal** (ascending position), which is the order of ``CTVolume.hu`` from
``connectors.dicom.read_series``. The order in which ``source`` is passed does not matter.

SEG (``write_seg``): one binary segment per nodule (segment ``i + 1`` for ``nodules[i]``),
property category "Morphologically Abnormal Structure", type "Nodule" (SCT 27925004), anatomic
region "Lung", algorithm type AUTOMATIC with the algorithm's name and version, tracking ID
``"Nodule <label>"`` and a new tracking UID. A SEG needs at least one segment, so an empty
``nodules`` raises ``ValueError``; callers skip the SEG and write only the SR.

SR (``write_sr``), one TID 1411 volumetric measurement group per nodule:

- tracking identifier ``"Nodule <label>"`` and tracking UID (the SEG segment's when ``seg`` is given,
  so SEG and SR findings link), finding type "Nodule" (SCT 27925004), finding site "Lung";
- the region: the SEG segment ("Referenced Segment") when ``seg`` is given, otherwise a "Volume
  Surface" POINT at the centre;
- the centre always as an extra SCOORD3D POINT item named "Center" (DCM 111010) in the source
  frame of reference (TID 1411 is extensible);
- measurements: "Diameter" (SCT 81827009, mm), "Volume" (SCT 118565006, mm3), "Attenuation
  Coefficient" (DCM 112031, [hnsf'U]) with derivation "Mean" (SCT 373098007), and the detector's
  confidence as "Certainty of Finding" (DCM 111012, the CAD concept of PS3.16 TID 4104) in percent
  (``confidence * 100``).

With no nodules the report holds one TID 1501 group (tracking ID ``"No nodules"``, finding type
"Nodule", finding site "Lung") whose qualitative evaluation is "Nodule" = "Absent" (SCT 272519000),
so a reader sees an explicit negative result rather than an empty report.

Example::

    import pydicom
    from connectors.dicom.results import Nodule, write_seg, write_sr

    source = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]
    nodules = [Nodule(label=1, center_mm=(-40.2, 12.5, -130.0), diameter_mm=8.1,
                      volume_mm3=278.0, mean_hu=-35.0, confidence=0.93)]
    seg_path = write_seg(source, labels, nodules, out / "seg.dcm")
    write_sr(source, nodules, out / "sr.dcm", seg=pydicom.dcmread(seg_path))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

_GEOMETRY_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
)
_MANUFACTURER = "Fathom"


@dataclass
class Nodule:
    """One detected nodule.

    Args:
        label: Its value (1, 2, ...) in the label volume.
        center_mm: Centre in patient coordinates ``(x, y, z)``, mm (the source frame of reference).
        diameter_mm: Diameter, mm.
        volume_mm3: Volume, mm3.
        mean_hu: Mean attenuation, HU.
        confidence: Detector confidence in ``[0, 1]``.
    """

    label: int
    center_mm: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    mean_hu: float
    confidence: float


def _import_highdicom():
    try:
        import highdicom
    except ImportError as e:  # pragma: no cover - highdicom is a dependency
        raise ImportError("highdicom is not installed (pip install 'highdicom>=0.28,<1')") from e
    return highdicom


def _sorted_source(source: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Check that ``source`` is one single-frame CT series with geometry; sort it along the normal."""
    if len(source) == 0:
        raise ValueError("source holds no datasets: pass the CT series the results were computed on")
    for i, ds in enumerate(source):
        missing = [t for t in _GEOMETRY_TAGS if ds.get(t) in (None, "")]
        if missing:
            raise ValueError(f"source dataset {i}: missing geometry tag(s) {', '.join(missing)}")
        modality = str(ds.get("Modality", "") or "")
        if modality != "CT":
            raise ValueError(f"source dataset {i}: modality is {modality!r}, expected 'CT'")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or "PerFrameFunctionalGroupsSequence" in ds:
            raise ValueError(f"source dataset {i}: multi-frame CT is not supported; pass single-frame slices")
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not ds.get(tag):
                raise ValueError(f"source dataset {i}: missing {tag}")
    series = {str(ds.SeriesInstanceUID) for ds in source}
    if len(series) > 1:
        raise ValueError(
            f"source mixes {len(series)} series ({', '.join(sorted(series))}); pass one CT series"
        )
    frames = {str(ds.FrameOfReferenceUID) for ds in source}
    if len(frames) > 1:
        raise ValueError(f"source slices have {len(frames)} different FrameOfReferenceUIDs")
    ori = np.array([float(v) for v in source[0].ImageOrientationPatient], dtype=np.float64)
    normal = np.cross(ori[:3], ori[3:])
    pos = np.array([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in source])
    order = np.argsort(pos, kind="stable")
    if np.any(np.diff(pos[order]) < 1e-3):
        raise ValueError("two source slices lie at the same position")
    return [source[i] for i in order]


def _check_nodules(nodules: Sequence[Nodule]) -> None:
    seen: set[int] = set()
    for n in nodules:
        if int(n.label) < 1:
            raise ValueError(f"nodule label {n.label} must be >= 1 (0 is background)")
        if n.label in seen:
            raise ValueError(f"nodule label {n.label} given twice")
        seen.add(int(n.label))
        if len(n.center_mm) != 3 or not np.all(np.isfinite(n.center_mm)):
            raise ValueError(f"nodule {n.label}: center_mm must be three finite numbers, got {n.center_mm}")
        if not 0.0 <= float(n.confidence) <= 1.0:
            raise ValueError(f"nodule {n.label}: confidence {n.confidence} is outside [0, 1]")
        for name in ("diameter_mm", "volume_mm3", "mean_hu"):
            if not np.isfinite(float(getattr(n, name))):
                raise ValueError(f"nodule {n.label}: {name} is not finite")


def _out_path(out: Path, sop_uid: str, prefix: str) -> Path:
    out = Path(out)
    if out.is_dir():
        out = out / f"{prefix}_{sop_uid}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _tracking_id(n: Nodule) -> str:
    return f"Nodule {int(n.label)}"


def write_seg(
    source: Sequence[pydicom.Dataset],
    labels: np.ndarray,
    nodules: Sequence[Nodule],
    out: Path,
    *,
    algorithm_name: str = "Fathom nodule",
    algorithm_version: str = "0.1",
    series_number: int = 900,
) -> Path:
    """Write the nodule masks as a binary DICOM Segmentation, one segment per nodule.

    Args:
        source: The CT series' datasets (pixel data not needed), in any order.
        labels: Integer label volume; voxels of ``nodules[i]`` hold ``nodules[i].label``.
        nodules: The nodules to include (segment ``i + 1`` is ``nodules[i]``); other labels are left out.
        out: File to write, or an existing folder (then ``SEG_<SOPInstanceUID>.dcm`` in it).
        algorithm_name: Algorithm name recorded in each segment.
        algorithm_version: Algorithm version recorded in each segment.
        series_number: SeriesNumber of the new series.

    Shapes:
        labels: ``(Z, Y, X)``, slices sorted along the image normal (``CTVolume.hu`` order).

    Returns:
        The path written.

    Raises:
        ValueError: Empty ``nodules`` (a SEG needs a segment), labels not integer or of the wrong
            shape, a nodule label absent from ``labels``, or a source that is not one single-frame
            CT series with geometry.
    """
    hd = _import_highdicom()
    from pydicom.sr.codedict import codes

    slices = _sorted_source(source)
    if len(nodules) == 0:
        raise ValueError("no nodules: a DICOM SEG needs at least one segment; write only the SR")
    _check_nodules(nodules)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    expected = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    if labels.shape != expected:
        raise ValueError(f"labels shape {labels.shape} does not match the source (Z, Y, X) = {expected}")
    present = set(np.unique(labels).tolist())
    absent = [n.label for n in nodules if n.label not in present]
    if absent:
        raise ValueError(f"nodule label(s) {absent} not present in labels")

    segments = np.zeros(expected, dtype=np.uint8 if len(nodules) < 256 else np.uint16)
    for i, n in enumerate(nodules):
        segments[labels == n.label] = i + 1

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=_tracking_id(n),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=_tracking_id(n),
            anatomic_regions=[codes.SCT.Lung],
        )
        for i, n in enumerate(nodules)
    ]
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=f"{algorithm_name} nodules",
        content_label="NODULES",
        content_description="Lung nodules",
    )
    path = _out_path(out, str(seg.SOPInstanceUID), "SEG")
    seg.save_as(path, enforce_file_format=True)
    return path


def _segment_numbers(seg: pydicom.Dataset, source_series: str) -> dict[str, tuple[int, str]]:
    """``tracking ID -> (segment number, tracking UID)`` of a SEG made from ``source_series``."""
    if str(seg.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.66.4":
        raise ValueError(f"seg is not a Segmentation (SOPClassUID {seg.get('SOPClassUID', '')!r})")
    refs = {str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])}
    if source_series not in refs:
        raise ValueError(f"seg does not reference the source series {source_series}")
    found = {}
    for item in seg.SegmentSequence:
        tid = str(item.get("TrackingID", "") or item.get("SegmentLabel", ""))
        found[tid] = (int(item.SegmentNumber), str(item.get("TrackingUID", "") or ""))
    return found


def write_sr(
    source: Sequence[pydicom.Dataset],
    nodules: Sequence[Nodule],
    out: Path,
    *,
    seg: pydicom.Dataset | None = None,
    algorithm_name: str = "Fathom nodule",
    algorithm_version: str = "0.1",
    series_number: int = 901,
) -> Path:
    """Write the nodule findings as a Comprehensive 3D SR measurement report (TID 1500).

    Args:
        source: The CT series' datasets (pixel data not needed), in any order.
        nodules: The findings; may be empty (the report then says that no nodule was found).
        out: File to write, or an existing folder (then ``SR_<SOPInstanceUID>.dcm`` in it).
        seg: The SEG that ``write_seg`` wrote for these nodules; each group then references its
            segment (matched by tracking ID ``"Nodule <label>"``) and reuses its tracking UID.
        algorithm_name: Algorithm (observer device) name.
        algorithm_version: Algorithm version.
        series_number: SeriesNumber of the new series.

    Returns:
        The path written.

    Raises:
        ValueError: A source that is not one single-frame CT series with geometry, invalid nodule
            values, or a ``seg`` that is not a SEG of this series or lacks a nodule's segment.
    """
    hd = _import_highdicom()
    from pydicom.sr.codedict import codes

    slices = _sorted_source(source)
    _check_nodules(nodules)
    ref = slices[0]
    frame_uid = str(ref.FrameOfReferenceUID)
    segments = _segment_numbers(seg, str(ref.SeriesInstanceUID)) if seg is not None else {}
    if seg is not None and str(seg.StudyInstanceUID) != str(ref.StudyInstanceUID):
        raise ValueError("seg belongs to another study than the source")

    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    lung = [hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)]
    groups = []
    for n in nodules:
        center = np.array([[float(v) for v in n.center_mm]])
        tid = _tracking_id(n)
        roi: dict = {}
        uid = None
        if seg is not None:
            if tid not in segments:
                raise ValueError(f"seg has no segment with tracking ID {tid!r}")
            number, uid = segments[tid]
            # built by hand: ReferencedSegment.from_segmentation (0.28) fails on a one-segment SEG, whose
            # SegmentIdentificationSequence sits in the shared functional groups
            roi["referenced_segment"] = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(str(ref.SeriesInstanceUID)),
            )
        else:
            roi["referenced_volume_surface"] = hd.sr.VolumeSurface(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=center,
                frame_of_reference_uid=frame_uid,
                source_series=hd.sr.SourceSeriesForSegmentation(str(ref.SeriesInstanceUID)),
            )
        measurements = [
            hd.sr.Measurement(
                name=codes.SCT.Diameter, value=float(n.diameter_mm), unit=codes.UCUM.Millimeter
            ),
            hd.sr.Measurement(
                name=codes.SCT.Volume, value=float(n.volume_mm3), unit=codes.UCUM.CubicMillimeter
            ),
            hd.sr.Measurement(
                name=codes.DCM.AttenuationCoefficient,
                value=float(n.mean_hu),
                unit=codes.UCUM.HounsfieldUnit,
                derivation=codes.SCT.Mean,
            ),
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=round(float(n.confidence) * 100.0, 6),
                unit=codes.UCUM.Percent,
            ),
        ]
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid or hd.UID(), identifier=tid),
            finding_type=codes.SCT.Nodule,
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_id=algorithm,
            finding_sites=lung,
            measurements=measurements,
            **roi,
        )
        group[0].ContentSequence.append(
            hd.sr.Scoord3DContentItem(
                name=codes.DCM.Center,
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=center,
                frame_of_reference_uid=frame_uid,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
        groups.append(group)
    if not groups:
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="No nodules"),
                finding_type=codes.SCT.Nodule,
                algorithm_id=algorithm,
                finding_sites=lung,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=codes.SCT.Nodule, value=codes.SCT.Absent)
                ],
            )
        )

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm_name, manufacturer_name=_MANUFACTURER, model_name=algorithm_version
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    evidence = list(slices) + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        series_description=f"{algorithm_name} report",
        is_complete=True,
    )
    path = _out_path(out, str(sr.SOPInstanceUID), "SR")
    sr.save_as(path, enforce_file_format=True)
    return path
