"""Detection, the end-to-end pipeline to SEG/SR/report, and the detect/evaluate/train commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from apps.nodule.cli import nodule_app
from apps.nodule.detect import NoduleDetector
from apps.nodule.dicom_writer import write_series
from apps.nodule.model import (
    DEFAULT_MODEL,
    FEATURES,
    PATCH_FEATURE,
    STUDENT_MODEL,
    NoduleModel,
    NoduleNetConfig,
)
from apps.nodule.pipeline import analyse
from apps.nodule.train import _distill_loss, _seg_loss
from apps.nodule.validate import phantom_scan, phantom_volume, phantoms, score_detector
from connectors.dicom.reader import DicomError
from core.config import models_dir

runner = CliRunner()


@pytest.fixture(scope="session")
def eager_model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model that reports every candidate (threshold 0.01): structure, not quality."""
    config = dataclasses.replace(NoduleNetConfig.tiny(), report_threshold=0.01, prob_threshold=0.45)
    folder = tmp_path_factory.mktemp("nodule-model") / "tiny"
    NoduleModel.create(config, seed=1).save(folder, name="test-tiny", metrics={}, summary="test")
    return folder


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, tiny_phantom) -> Path:
    folder = tmp_path_factory.mktemp("nodule-study") / "ct"
    write_series(tiny_phantom, folder)
    return folder


def test_detection_labels_match_the_reported_nodules(eager_model_dir, tiny_phantom):
    detector = NoduleDetector.load(eager_model_dir, "cpu")
    volume = phantom_volume(tiny_phantom)
    found = detector.detect(volume)
    assert found.labels.shape == volume.shape and found.labels.dtype == np.uint16
    assert found.nodules, "the eager model reports candidates"
    confidences = [c.confidence for c in found.candidates]
    assert confidences == sorted(confidences, reverse=True)
    assert set(np.unique(found.labels)) == {0, *range(1, len(found.nodules) + 1)}
    voxel = float(np.prod(volume.spacing))
    for i, nodule in enumerate(found.nodules, 1):
        inside = found.labels == i
        assert nodule.volume_mm3 == pytest.approx(inside.sum() * voxel)
        assert nodule.mean_hu == pytest.approx(float(volume.hu[inside].mean()), abs=0.1)
        assert nodule.diameter_mm == pytest.approx((6 * nodule.volume_mm3 / np.pi) ** (1 / 3))
    assert set(found.timings) >= {"preprocess_s", "network_s", "candidates_s", "total_s"}
    assert [n.label for n in found.dicom_nodules()] == list(range(1, len(found.nodules) + 1))


def test_pipeline_writes_seg_sr_and_report_referencing_the_series(eager_model_dir, tiny_study, tmp_path):
    analysis = analyse(tiny_study, tmp_path / "out", model_dir=eager_model_dir)
    result = analysis.to_json()
    assert json.loads(Path(result["outputs"]["json"]).read_text())["nodules"] == result["nodules"]
    seg = pydicom.dcmread(result["outputs"]["seg"])
    sr = pydicom.dcmread(result["outputs"]["sr"])
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(result["nodules"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == result["series_uid"]
    assert sr.Modality == "SR" and sr.StudyInstanceUID == result["study_uid"]
    report = Path(result["outputs"]["report"]).read_text()
    assert result["series_uid"] in report and "| 1 |" in report
    for nodule in result["nodules"]:
        assert set(nodule) >= {"center_mm", "diameter_mm", "volume_mm3", "confidence"}


def test_pipeline_refuses_what_it_cannot_analyse(eager_model_dir, tmp_path):
    with pytest.raises(DicomError, match="does not exist"):
        analyse(tmp_path / "nothing", tmp_path / "out", model_dir=eager_model_dir)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("not dicom")
    with pytest.raises(DicomError, match="no CT series"):
        analyse(tmp_path / "junk", tmp_path / "out", model_dir=eager_model_dir)


def test_load_study_reads_the_ct_series_of_the_files_given(tmp_path):
    """Given files, the pipeline reads the CT series among them, not the folder's other series."""
    from apps.nodule.pipeline import load_study
    from tests.connectors.dicom.ctgen import write_series as write_ct

    write_ct(tmp_path / "thin", [float(z) for z in range(8)], thickness=1.0)  # would win in the folder
    thick = write_ct(tmp_path / "thick", [0.0, 5.0, 10.0], thickness=5.0)
    mr = write_ct(tmp_path / "mr", [0.0, 1.0, 2.0, 3.0], modality="MR")
    assert load_study([*mr, *thick]).shape[0] == 3
    with pytest.raises(DicomError, match="no CT"):
        load_study(mr)


def test_detect_command_prints_the_stable_json(eager_model_dir, tiny_study, tmp_path):
    result = runner.invoke(
        nodule_app,
        ["detect", str(tiny_study), "--out", str(tmp_path / "o"), "--model", str(eager_model_dir), "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"series_uid", "nodules", "outputs"}
    assert set(data["outputs"]) >= {"seg", "sr", "report"}
    assert all(len(n["center_mm"]) == 3 for n in data["nodules"])
    # a file list works too
    files = sorted(str(p) for p in tiny_study.glob("*.dcm"))
    again = runner.invoke(
        nodule_app,
        ["detect", *files, "--out", str(tmp_path / "o2"), "--model", str(eager_model_dir), "--json"],
    )
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["series_uid"] == data["series_uid"]


def test_detect_command_bad_input_is_one_line_without_traceback(tmp_path, eager_model_dir):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM" * 10)
    result = runner.invoke(
        nodule_app, ["detect", str(bad), "--model", str(eager_model_dir), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(nodule_app, ["detect", str(tmp_path), "--model", str(tmp_path / "no-model")])
    assert result.exit_code == 2 and "error:" in result.output


def test_evaluate_command_scores_held_out_phantoms(eager_model_dir):
    result = runner.invoke(
        nodule_app,
        [
            "evaluate",
            "--phantoms",
            "2",
            "--seed",
            "5",
            "--size",
            "tiny",
            "--model",
            str(eager_model_dir),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"cpm", "sensitivity_at_1fp", "dice", "n_scans"}
    assert data["n_scans"] == 2 and 0 <= data["cpm"] <= 1 and 0 <= data["dice"] <= 1
    bad = runner.invoke(nodule_app, ["evaluate", "--phantoms", "0"])
    assert bad.exit_code == 2 and "--phantoms must be >= 1" in bad.output


def test_held_out_phantoms_never_repeat_training_phantoms():
    from apps.nodule.train import STREAMS

    def seeds(seed, stream):
        return [p.seed for p in phantoms("tiny", 3, seed, stream)]

    held_out = set(seeds(0, 7))
    for stream in STREAMS.values():
        assert not held_out & set(seeds(0, stream))


def test_train_command_trains_saves_and_the_model_loads(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(
        "phantom_size: tiny\nn_train: 2\nn_fp: 2\nn_val: 1\nval_every: 2\ncrops_per_volume: 2\n"
        "patch_steps: 20\n"
    )
    out = tmp_path / "model"
    result = runner.invoke(
        nodule_app,
        ["train", "--model", "tiny", "--config", str(config), "--steps", "3", "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_parameters"] > 0 and "val_cpm" in metrics and metrics["best_step"] in (2, 3)
    model = NoduleModel.load(out)
    assert model.config == NoduleNetConfig.tiny()
    assert model.card["config"]["train"]["steps"] == 3
    # the second stage: a patch classifier whose logit the reducer takes as its last feature
    assert model.patch is not None and metrics["patch_classifier"]["steps"] == 20
    assert model.reducer.features == FEATURES + (PATCH_FEATURE,)
    phantom = next(phantoms("tiny", 1, 5))
    candidates = NoduleDetector(model, "cpu").detect(phantom_scan(phantom).volume).candidates
    assert all(len(c.features) == len(FEATURES) + 1 for c in candidates)
    # --steps 0 with --init: the same U-Net, a new second stage
    again = tmp_path / "again"
    result = runner.invoke(
        nodule_app,
        ["train", "--model", "tiny", "--config", str(config), "--init", str(out), "--steps", "0",
         "--patch-steps", "10", "--out", str(again), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    second = NoduleModel.load(again)
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key])
    assert json.loads(result.stdout)["best_step"] == 0 and second.patch is not None
    bad = runner.invoke(nodule_app, ["train", "--model", "huge", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown nodule model size" in bad.output
    bad = runner.invoke(nodule_app, ["train", "--model", "tiny", "--steps", "0", "--out", str(out)])
    assert bad.exit_code == 2 and "steps must be >= 1 (or 0 with init" in bad.output


def test_training_keeps_the_reducer_fitted_at_the_best_validation(tmp_path, monkeypatch):
    """Each validation fits the false-positive reducer afresh on the reducer phantoms and scores the
    detector with it; the model saved is the best step's network with that step's reducer."""
    from apps.nodule import train as nodule_train
    from apps.nodule.model import FalsePositiveReducer

    fits: list[int] = []

    def fit(model, detector, scans):
        fits.append(len(scans))
        n = len(FEATURES)
        model.reducer = FalsePositiveReducer([0.0] * n, [1.0] * n, [float(len(fits))] * n, 0.0)
        return ""

    cpms = iter([0.5, 0.25])  # step 2 best, step 3 worse

    def score(detector, scans):
        assert detector.model.reducer.coef[0] == len(fits)  # scored with the reducer just fitted
        return {"cpm": next(cpms), "dice": 0.1, "sensitivity_at_1fp": 0.0, "sensitivities": {},
                "n_scans": len(scans), "n_truths": 1}  # fmt: skip

    monkeypatch.setattr(nodule_train, "_fit_reducer", fit)
    monkeypatch.setattr(nodule_train, "score_detector", score)
    config = nodule_train.NoduleTrainConfig(
        model="tiny",
        phantom_size="tiny",
        n_train=2,
        n_fp=2,
        n_val=1,
        val_every=2,
        steps=3,
        crops_per_volume=2,
        patch_steps=0,
    )
    model, metrics = nodule_train.train(config, tmp_path / "m", device="cpu")
    assert fits == [2, 2]
    assert metrics["best_step"] == 2 and metrics["val_cpm"] == 0.5
    assert model.reducer.coef == [1.0] * len(FEATURES)
    assert NoduleModel.load(tmp_path / "m").reducer.coef == [1.0] * len(FEATURES)


def test_distillation_loss_is_zero_only_when_student_matches_teacher():
    teacher = torch.randn(2, 2, 4, 4, 4)
    assert float(_distill_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(_distill_loss(-teacher, teacher, 2.0)) > 0.1


def test_per_crop_dice_weighs_a_small_nodule_like_a_large_one():
    """Batch-pooled Dice barely notices a missed 8-voxel nodule beside a found 1000-voxel one; the
    per-crop Dice counts its crop as a full miss. Crops without nodule voxels add no Dice term."""
    from monai.losses import DiceCELoss

    labels = torch.zeros(3, 1, 16, 16, 16)
    labels[0, 0, :10, :10, :10] = 1  # large nodule, found
    labels[1, 0, 4:6, 4:6, 4:6] = 1  # small nodule, missed
    logits = torch.zeros(3, 2, 16, 16, 16)
    logits[:, 1] = torch.where(labels[:, 0] > 0, 8.0, -8.0)
    logits[1, 1] = -8.0  # the small one missed
    pooled = _seg_loss(per_crop=False)(logits, labels)
    per_crop = _seg_loss(per_crop=True)(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0].long())
    assert float(pooled - ce) < 0.02  # pooled Dice loss: 8 of 1008 voxels missed
    assert float(per_crop - ce) == pytest.approx(0.5, abs=0.01)  # one of two nodule crops missed
    # batch mode is MONAI's DiceCELoss exactly
    reference = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, include_background=False)
    assert float(pooled) == pytest.approx(float(reference(logits, labels)), rel=1e-6)
    # no nodule anywhere: cross-entropy only, still differentiable
    empty = torch.zeros_like(labels)
    logits.requires_grad_(True)
    loss = _seg_loss(per_crop=True)(logits, empty)
    loss.backward()
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, empty[:, 0].long())))


@pytest.mark.parametrize("name", [DEFAULT_MODEL, STUDENT_MODEL])
def test_shipped_model_reproduces_its_card_on_the_validation_phantoms(name):
    """Each shipped detector (and the student) scores its own validation phantoms as its card says:
    preprocessing, network, candidates and the false-positive reducer are the ones it was trained and
    measured with."""
    from apps.nodule.train import STREAMS

    if not models_dir(name).is_dir():
        pytest.skip(f"the shipped model {name} is not built")
    detector = NoduleDetector.load(models_dir(name), "cpu")
    card = detector.model.card
    train = card["config"]["train"]
    scans = phantoms(train["phantom_size"], train["n_val"], train["seed"], STREAMS["val"])
    scores = score_detector(detector, scans)
    assert scores["n_truths"] == card["metrics"]["val_n_truths"]
    assert scores["cpm"] == pytest.approx(card["metrics"]["val_cpm"], abs=0.05)
    assert scores["dice"] == pytest.approx(card["metrics"]["val_dice"], abs=0.05)


class _EdgeBlind(torch.nn.Module):
    """A 'network' that calls everything a nodule, except within 4 voxels of its window's edge."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.shape[-1]
        d = torch.arange(r)
        near = torch.minimum(d, r - 1 - d) < 4
        edge = near[:, None, None] | near[None, :, None] | near[None, None, :]
        return torch.cat([torch.zeros_like(x), torch.where(edge, -20.0, 5.0).expand_as(x)], 1)


def test_window_blending_takes_each_voxel_from_the_windows_it_lies_inside():
    """Gaussian blending without MONAI's 1e-3 floor, and no weight in the band the overlap covers:
    confident calls at a window's edge no longer override the interior ones (with MONAI's map they
    turn a third of the volume to background here)."""
    from apps.nodule.detect import window_weights

    found = {}
    for blend in ("gaussian", "monai"):
        model = NoduleModel.create(dataclasses.replace(NoduleNetConfig.tiny(), blend=blend))
        model.net = _EdgeBlind()
        prob = NoduleDetector(model, "cpu").probabilities(np.zeros((80, 80, 80), np.float32))
        found[blend] = float((prob[4:-4, 4:-4, 4:-4] > 0.5).mean())  # the volume's own border aside
    assert found["gaussian"] == 1.0 and found["monai"] < 0.8
    weights = window_weights(32, 0.25)
    assert weights.shape == (32, 32, 32) and float(weights.max()) == pytest.approx(1.0, abs=0.05)
    assert float(weights[3, 16, 16]) < 1e-5 < float(weights[4, 16, 16])  # band of 32 * 0.25 / 2
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.transpose(0, 2))
    assert float(window_weights(32, 0.0)[0, 16, 16]) > 1e-4  # no overlap: no band to ignore
    with pytest.raises(ValueError, match="blend must be 'gaussian' or 'monai'"):
        NoduleNetConfig(blend="mean")
