"""One study end to end: DICOM in, nodules found, DICOM SEG + SR and a readable report out.

``analyse(source, out_dir)`` is what ``fathom nodule detect``, ``POST /nodule/detect``, the viewer
page and the PACS worker run:

1. ``scan`` the source (a folder, a DICOMDIR, one file or a list of files) and pick the CT series
   (``pick_ct_series``: the full-coverage, thinnest reconstruction, not a localizer);
2. read it into HU with its geometry (``read_series``; tilted or unevenly spaced series are refused
   with the reason, since the SEG must lie on the source grid);
3. ``NoduleDetector.detect``;
4. write the SEG (when there is a nodule) and the TID 1500 SR referencing the source series, both
   with highdicom, and ``report.md`` (the table a clinician reads) plus ``result.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from apps.nodule.detect import Detection, NoduleDetector
from connectors.dicom.catalog import pick_ct_series, scan
from connectors.dicom.reader import DicomError, read_series
from connectors.dicom.results import write_seg, write_sr
from connectors.dicom.volume import CTVolume

ALGORITHM = "Fathom nodule"


@dataclass
class Analysis:
    """The result of ``analyse``.

    Args:
        volume: The CT volume analysed.
        detection: What the detector found (candidates, reported nodules, source-grid labels).
        outputs: ``seg``, ``sr``, ``report``, ``json`` -> path (``seg`` is None without nodules).
        notes: Anything the user should know (e.g. why no SEG was written).
        seconds: Wall time, reading to writing.
        model: The model's name and code version.
        report_threshold: The confidence at which candidates were reported.
    """

    volume: CTVolume
    detection: Detection
    outputs: dict[str, Path | None]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    model: str = ""
    report_threshold: float = 0.5

    @property
    def series_uid(self) -> str:
        """SeriesInstanceUID of the analysed CT series."""
        return self.volume.series_uid

    def to_json(self) -> dict:
        """The ``fathom nodule detect --json`` shape (plus mean HU, notes and timings)."""
        return {
            "series_uid": self.series_uid,
            "study_uid": self.volume.study_uid,
            "nodules": [c.to_dict() for c in self.detection.nodules],
            "outputs": {k: (str(v) if v is not None else None) for k, v in self.outputs.items()},
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "timings": {k: round(v, 3) for k, v in self.detection.timings.items()},
        }


def load_study(source: str | Path | Iterable[str | Path]) -> CTVolume:
    """The CT series to analyse from a folder, DICOMDIR, file or list of files.

    Raises:
        DicomError: No CT series, or one that cannot be read (the message names file and problem).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise DicomError(f"{path} does not exist")
        if path.is_file() and path.name.upper() != "DICOMDIR":
            return read_series(path)
        catalog = scan(path)
        files: list[Path] = list(pick_ct_series(catalog).files)
    else:
        files = [Path(p) for p in source]
        if len(files) == 1 and files[0].is_file():
            return read_series(files[0])
        # only the files given are read (their folder may hold other studies)
        files = list(pick_ct_series(scan(files)).files)
    return read_series(files)


def _report(analysis: Analysis, path: Path) -> Path:
    v = analysis.volume
    lines = [
        "# Lung nodule analysis (Fathom)",
        "",
        f"- Study: `{v.study_uid}`",
        f"- Series: `{v.series_uid}` ({v.shape[0]} slices, {v.shape[1]}x{v.shape[2]}, "
        f"spacing {v.spacing[0]:.2f} x {v.spacing[1]:.2f} x {v.spacing[2]:.2f} mm)",
        f"- Model: {analysis.model}, reporting confidence >= {analysis.report_threshold:.2f}",
        "",
    ]
    nodules = analysis.detection.nodules
    if not nodules:
        lines += ["No nodule was found at the reporting threshold.", ""]
    else:
        lines += [
            "| # | centre x, y, z (mm, LPS) | diameter (mm) | volume (mm3) | mean HU | confidence |",
            "|---|---|---|---|---|---|",
        ]
        for i, c in enumerate(nodules, 1):
            x, y, z = c.center_mm
            lines.append(
                f"| {i} | {x:.1f}, {y:.1f}, {z:.1f} | {c.diameter_mm:.1f} | {c.volume_mm3:.0f} | "
                f"{c.mean_hu:.0f} | {c.confidence:.2f} |"
            )
        lines.append("")
    lines += [f"- {note}" for note in analysis.notes]
    lines += [
        "",
        "Computer-aided detection for research use, trained on synthetic data; not a diagnosis. "
        "A radiologist must review every finding.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def analyse(
    source: str | Path | Iterable[str | Path],
    out_dir: str | Path,
    *,
    detector: NoduleDetector | None = None,
    model_dir: str | Path | None = None,
) -> Analysis:
    """Analyse one CT study; write SEG, SR, ``report.md`` and ``result.json`` into ``out_dir``.

    Args:
        source: A folder, a DICOMDIR, one file or a list of files.
        out_dir: Created if needed.
        detector: A loaded detector (else loaded from ``model_dir`` or the shipped model).
        model_dir: The model folder when ``detector`` is None.

    Raises:
        DicomError: The input cannot be analysed (names file and problem).
        FileNotFoundError: No model in ``model_dir``.
    """
    started = time.perf_counter()
    volume = load_study(source)
    detector = detector or NoduleDetector.load(model_dir)
    detection = detector.detect(volume)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if not detection.lungs_found:
        notes.append("no lungs found (not a chest CT?): the whole volume was searched")
    outputs: dict[str, Path | None] = {"seg": None, "sr": None}
    version = str(detector.model.card.get("code_version", "dev"))
    multiframe = len(volume.source_files) == 1 and volume.shape[0] > 1
    if multiframe:
        notes.append("enhanced multi-frame source: SEG and SR are written for single-frame series only")
    else:
        source_ds = [pydicom.dcmread(f, stop_before_pixels=True) for f in volume.source_files]
        nodules = detection.dicom_nodules()
        seg_ds = None
        if nodules:
            seg_path = write_seg(
                source_ds,
                detection.labels.astype(np.uint16),
                nodules,
                out,
                algorithm_name=ALGORITHM,
                algorithm_version=version,
            )
            outputs["seg"] = seg_path
            seg_ds = pydicom.dcmread(seg_path)
        else:
            notes.append("no nodule at the reporting threshold: no SEG written, the SR says so")
        outputs["sr"] = write_sr(
            source_ds, nodules, out, seg=seg_ds, algorithm_name=ALGORITHM, algorithm_version=version
        )
    card = detector.model.card
    analysis = Analysis(
        volume,
        detection,
        outputs,
        notes,
        model=f"{card.get('name', ALGORITHM)} ({version})",
        report_threshold=detector.config.report_threshold,
    )
    outputs["report"] = _report(analysis, out / "report.md")
    outputs["json"] = out / "result.json"
    analysis.seconds = time.perf_counter() - started
    outputs["json"].write_text(json.dumps(analysis.to_json(), indent=2) + "\n")
    return analysis


__all__ = ["Analysis", "analyse", "load_study"]
