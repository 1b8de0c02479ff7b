"""``fathom bench nodule``: seconds per 512x512x300 CT study end to end, and detection quality.

``speed``
    One synthetic chest CT of ``shape`` (default 300 slices of 512x512 at 1 mm, written as a real
    DICOM series) analysed end to end by ``apps.nodule.pipeline.analyse``: read the series, resample,
    lungs, network, candidates, false-positive reduction, SEG + SR + report written. Against it, in
    the same run, with the same network: ``monai-swi`` — MONAI's plain ``sliding_window_inference``
    over the whole series at its own resolution (read + window + inference, nothing written: the
    plain way to run a MONAI model on a study), and ``fathom-no-lung-crop`` — our pipeline with the
    network run over the whole resampled volume. One untimed warm-up on a small study, then the
    median of ``repeats`` runs each (the plain baseline runs once: it is the slow one). The distilled
    student runs the same pipeline.
``quality``
    CPM (LUNA16 FROC), sensitivity at 1 FP/scan and Dice on ``n_phantoms`` held-out phantoms
    (``validate.EVAL_STREAM``, never used in training), for the model and the student; their sizes
    (parameters, bytes on disk).

Targets: CPM >= 0.85; a 512x512x300 study in <= 60 s on the CPU (<= 3 s on CUDA).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from apps.bench.common import Report
from apps.nodule.detect import NoduleDetector
from apps.nodule.model import DEFAULT_MODEL, STUDENT_MODEL, NoduleModel
from apps.nodule.phantoms import PhantomConfig, make_phantom
from core.config import models_dir

CPM_TARGET = 0.85
SECONDS_TARGET = {"cpu": 60.0, "cuda": 3.0}


def _study(shape: tuple[int, int, int], folder: Path, seed: int) -> Path:
    from apps.nodule.dicom_writer import write_series

    nz, ny, nx = shape
    if ny != nx:
        raise ValueError(f"the benchmark study must be square in-plane, got {shape}")
    config = PhantomConfig(
        in_plane_sizes=(nx,), slice_thicknesses=(1.0,), z_extent_mm=float(nz), n_nodules=(3, 5)
    )
    phantom = make_phantom(config, seed)
    write_series(phantom, folder)
    return folder


def _plain_swi(detector: NoduleDetector, folder: Path) -> float:
    """Read the series and run MONAI's sliding_window_inference over it at its own resolution."""
    from monai.inferers import sliding_window_inference

    from apps.nodule.preprocess import window
    from connectors.dicom.reader import read_series

    t0 = time.perf_counter()
    volume = read_series(folder)
    x = window(torch.from_numpy(volume.hu), detector.config.hu_window)[None, None].to(detector.device)
    cfg = detector.config
    with torch.inference_mode():
        sliding_window_inference(x, (cfg.roi,) * 3, cfg.sw_batch_size, detector.net, overlap=cfg.overlap)
    return time.perf_counter() - t0


def _pipeline(detector: NoduleDetector, folder: Path, out: Path) -> tuple[float, dict[str, Any]]:
    from apps.nodule.pipeline import analyse

    t0 = time.perf_counter()
    analysis = analyse(folder, out, detector=detector)
    return time.perf_counter() - t0, analysis.to_json()


def _size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def run(
    *,
    device: str = "cpu",
    model_dir: Path | None = None,
    student_dir: Path | None = None,
    shape: tuple[int, int, int] = (300, 512, 512),
    repeats: int = 3,
    n_phantoms: int = 10,
    phantom_size: str = "medium",
    seed: int = 0,
    speed: bool = True,
    quality: bool = True,
    baseline: bool = True,
    json_path: Path | None = None,
    progress: Callable[[str], Any] = lambda _: None,
) -> dict[str, Any]:
    """Run the benchmark; returns (and writes to ``json_path``) the report."""
    from apps.nodule.validate import phantoms, score_detector

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if repeats < 1 or n_phantoms < 1:
        raise ValueError(f"repeats and n_phantoms must be >= 1, got {repeats} and {n_phantoms}")
    folders = {
        "model": Path(model_dir) if model_dir else models_dir(DEFAULT_MODEL),
        "student": Path(student_dir) if student_dir else models_dir(STUDENT_MODEL),
    }
    detectors = {name: NoduleDetector(NoduleModel.load(path), device) for name, path in folders.items()}
    report = Report("nodule", device)
    report.settings.update(
        {
            "shape": list(shape),
            "repeats": repeats,
            "n_phantoms": n_phantoms,
            "phantom_size": phantom_size,
            "seed": seed,
            "threads": torch.get_num_threads(),
        }
    )
    for name, det in detectors.items():
        report.settings[f"{name}_parameters"] = det.model.n_parameters
        report.settings[f"{name}_bytes"] = _size_bytes(folders[name])

    if speed:
        with tempfile.TemporaryDirectory(prefix="fathom-bench-nodule-") as tmp:
            tmp_path = Path(tmp)
            progress("writing the benchmark study")
            study = _study(shape, tmp_path / "study", seed)
            warm = _study((48, 96, 96), tmp_path / "warm", seed + 1)
            case = f"{shape[2]}x{shape[1]}x{shape[0]}"
            for name, det in detectors.items():
                _pipeline(det, warm, tmp_path / "warm-out")
                times, result = [], {}
                for i in range(repeats):
                    progress(f"{name}: end-to-end run {i + 1}/{repeats}")
                    seconds, result = _pipeline(det, study, tmp_path / f"out-{name}")
                    times.append(seconds)
                median = statistics.median(times)
                report.add_result(
                    case,
                    "fathom" if name == "model" else "fathom-student",
                    median_ms=round(median * 1000, 1),
                    min_ms=round(min(times) * 1000, 1),
                    n_nodules=len(result["nodules"]),
                    timings=result["timings"],
                )
                if name != "model":
                    continue
                fathom_s = median
                report.add_target(
                    f"{device} {case} study end to end, s",
                    round(median, 2),
                    SECONDS_TARGET.get(device, 60.0),
                    "lower",
                )
                if baseline:
                    det_nocrop = NoduleDetector(det.model, device, crop_to_lungs=False)
                    nocrop = statistics.median(
                        _pipeline(det_nocrop, study, tmp_path / "out-nocrop")[0] for _ in range(repeats)
                    )
                    report.add_result(
                        case,
                        "fathom-no-lung-crop",
                        median_ms=round(nocrop * 1000, 1),
                        ratio=round(fathom_s / nocrop, 3),
                    )
                    progress("baseline: MONAI sliding_window_inference at native resolution")
                    plain = _plain_swi(det, study)
                    report.add_result(
                        case,
                        "monai-swi",
                        median_ms=round(plain * 1000, 1),
                        ratio=round(fathom_s / plain, 3),
                        note="read + window + sliding_window_inference only; no candidates, no output",
                    )
    if quality:
        for name, det in detectors.items():
            progress(f"{name}: scoring {n_phantoms} held-out {phantom_size} phantoms")
            scores = score_detector(det, phantoms(phantom_size, n_phantoms, seed))
            report.add_result(
                f"heldout-{phantom_size}-phantoms",
                "fathom" if name == "model" else "fathom-student",
                cpm=scores["cpm"],
                sensitivity_at_1fp=scores["sensitivity_at_1fp"],
                dice=scores["dice"],
                n_scans=scores["n_scans"],
                n_truths=scores["n_truths"],
                seconds_per_scan=round(scores["seconds_per_scan"], 3),
                parameters=det.model.n_parameters,
            )
            if name == "model":
                report.add_target("held-out phantoms CPM", scores["cpm"], CPM_TARGET, "higher")
    data = report.to_dict()
    if json_path is not None:
        report.write(json_path)
    return data


__all__ = ["CPM_TARGET", "run"]
