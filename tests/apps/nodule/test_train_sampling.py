"""How ``fathom nodule train`` picks its positive crops: every nodule equally often, hard nodules
more often (mined with the network), crop centres shifted off the nodule; and the patch classifier's
cubes, from the training scans and ``n_patch`` more."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from apps.nodule import train as nodule_train
from apps.nodule.cli import nodule_app
from apps.nodule.model import NoduleModel
from apps.nodule.sampling import POSITIVES_PER_NODULE, nodule_peaks, nodule_voxels, positive_indices
from apps.nodule.train import NoduleTrainConfig

runner = CliRunner()


def _balls(shape=(40, 40, 40), centres=((10, 10, 10), (30, 28, 25)), radii=(4, 2)) -> np.ndarray:
    grid = np.indices(shape)
    label = np.zeros(shape, np.uint8)
    for c, r in zip(centres, radii, strict=True):
        label[((grid - np.reshape(c, (3, 1, 1, 1))) ** 2).sum(0) <= r * r] = 1
    return label


def test_nodule_voxels_splits_the_label_into_its_nodules():
    label = _balls()
    parts = nodule_voxels(label)
    assert [len(p) for p in parts] == [int((label[:20] > 0).sum()), int((label[20:] > 0).sum())]
    assert all(label.ravel()[p].all() for p in parts)
    assert nodule_voxels(np.zeros((4, 4, 4), np.uint8)) == []


def test_positive_indices_weigh_hard_nodules_and_shift_the_centres():
    label = _balls()
    parts = nodule_voxels(label)
    rng = np.random.default_rng(0)
    plain = positive_indices(parts, rng)
    assert len(plain) == 2 * POSITIVES_PER_NODULE and label.ravel()[plain].all()
    weighted = positive_indices(parts, rng, np.array([1, 4]))
    assert len(weighted) == 5 * POSITIVES_PER_NODULE
    assert np.isin(weighted, parts[1]).sum() == 4 * POSITIVES_PER_NODULE  # the hard one 4 times as often

    shifted = positive_indices(parts, rng, shape=label.shape, shift=6)
    kji = np.stack(np.unravel_index(shifted, label.shape), axis=1)
    assert (kji >= 0).all() and (kji < 40).all()
    nearest = np.min([np.abs(kji[:, None] - np.argwhere(label)[None]).max(2)], axis=(0, 2))
    assert nearest.max() <= 6  # within the shift of some nodule voxel (Chebyshev)
    assert (~label.ravel()[shifted].astype(bool)).mean() > 0.3  # most centres moved off the small one
    with pytest.raises(ValueError, match="shift needs the volume's shape"):
        positive_indices(parts, rng, shift=2)
    assert positive_indices([], rng).shape == (0,)


class _Threshold(torch.nn.Module):
    """A 'network' that calls every voxel above 0.5 a nodule."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 40 * (x - 0.5)], dim=1)


def test_nodule_peaks_finds_which_nodules_the_network_misses():
    label = _balls(centres=((10, 10, 10), (30, 28, 25), (1, 38, 20)), radii=(4, 2, 1))
    image = np.zeros(label.shape, np.float32)
    grid = np.indices(label.shape)
    image[((grid - np.reshape((10, 10, 10), (3, 1, 1, 1))) ** 2).sum(0) <= 16] = 0.9  # visible
    image[((grid - np.reshape((30, 28, 25), (3, 1, 1, 1))) ** 2).sum(0) <= 4] = 0.3  # faint: missed
    image[((grid - np.reshape((1, 38, 20), (3, 1, 1, 1))) ** 2).sum(0) <= 1] = 0.9  # at the border
    parts = nodule_voxels(label)
    peaks = nodule_peaks(_Threshold(), torch.from_numpy(image)[None], parts, 16, "cpu", batch=2)
    order = [int(np.unravel_index(p[0], label.shape)[0]) for p in parts]  # parts in scan order
    by_z = dict(zip(order, peaks, strict=True))
    assert by_z[6] > 0.99 and by_z[0] > 0.99 and by_z[28] < 0.01
    # a volume smaller than the crop is padded, as in training
    small = torch.from_numpy(image[:12, :12, :12].copy())[None]
    assert nodule_peaks(_Threshold(), small, nodule_voxels(label[:12, :12, :12]), 16, "cpu")[0] > 0.99


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hard_weight": 0}, "hard_weight must be >= 1"),
        ({"crop_shift": -1}, "crop_shift must be >= 0"),
        ({"crop_shift": 24}, "crop_shift must be less than half the default model's patch 48"),
    ],
)
def test_sampling_options_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        NoduleTrainConfig(**fields)


def test_training_mines_hard_nodules_at_every_validation(tmp_path, monkeypatch):
    """With ``hard_weight`` the missed nodules are counted before the first step and after each
    validation but the last, and the count is recorded in the history."""
    calls: list[int] = []

    def peaks(net, image, parts, patch, device, batch=4):
        calls.append(len(parts))
        return np.zeros(len(parts))  # every nodule missed

    weights: list[list[int]] = []

    def positives(parts, rng, weights_=None, **kwargs):
        if weights_ is not None:  # (prepare_scan draws the first, unweighted ones)
            weights.append(list(weights_))
        return positive_indices(parts, rng, weights_, **kwargs)

    monkeypatch.setattr(nodule_train, "nodule_peaks", peaks)
    monkeypatch.setattr(nodule_train, "positive_indices", positives)
    config = NoduleTrainConfig(
        model="tiny", phantom_size="tiny", n_train=2, n_fp=2, n_val=1, val_every=2, steps=4,
        crops_per_volume=2, patch_steps=0, hard_weight=3, crop_shift=3,
    )  # fmt: skip
    _, metrics = nodule_train.train(config, device="cpu")
    total = sum(calls[:2])
    assert len(calls) == 2 * 2  # two scans, mined twice: before step 1 and after step 2
    assert [h["hard_nodules"] for h in metrics["history"]] == [[total, total], [total, total]]
    assert weights == [[3] * n for n in calls]  # the missed nodules' crops drawn 3 times as often


def test_train_command_takes_the_sampling_options(tmp_path):
    result = runner.invoke(
        nodule_app, ["train", "--model", "tiny", "--crop-shift", "16", "--out", str(tmp_path / "m")]
    )
    assert (
        result.exit_code == 2 and "crop_shift must be less than half the tiny model's patch" in result.output
    )
    result = runner.invoke(nodule_app, ["train", "--hard-weight", "0", "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "hard_weight must be >= 1" in result.output


def test_patch_classifier_takes_cubes_of_n_patch_more_phantoms(tmp_path, monkeypatch):
    """``n_patch`` phantoms of their own stream join the second stage (their images in float16);
    the U-Net's training scans stay ``n_train``, and the card's command names the option."""
    seen: list = []
    real = nodule_train.train_patch_classifier

    def spy(examples, config, **kwargs):
        seen.append(examples)
        return real(examples, config, **kwargs)

    monkeypatch.setattr(nodule_train, "train_patch_classifier", spy)
    config = NoduleTrainConfig(
        model="tiny", phantom_size="tiny", n_train=2, n_fp=2, n_val=1, val_every=2, steps=2,
        crops_per_volume=2, patch_steps=2, n_patch=2,
    )  # fmt: skip
    model, metrics = nodule_train.train(config, tmp_path / "m", device="cpu")
    (examples,) = seen
    assert len(examples) == 4
    assert [e.image.dtype for e in examples] == [torch.float32] * 2 + [torch.float16] * 2
    assert all(len(e.positives) for e in examples)  # every tiny phantom has nodules
    extra = [e.image.float() for e in examples[2:]]
    assert not any(e.image.shape == x.shape and torch.allclose(e.image, x, atol=1e-2)
                   for e in examples[:2] for x in extra)  # fmt: skip  # other phantoms
    assert metrics["patch_classifier"]["positives"] == sum(len(e.positives) for e in examples)
    assert "--n-patch 2" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(ValueError, match="n_patch must be >= 0"):
        NoduleTrainConfig(n_patch=-1)


def test_juxtavascular_reaches_the_training_phantoms_and_init_keeps_its_patch_classifier(
    tmp_path, monkeypatch
):
    """``juxtavascular`` changes the network's and the patch classifier's phantoms only (the
    reducer's and validation's are drawn as evaluation draws them); a run with ``patch_steps`` 0
    from ``init`` keeps the init model's patch classifier and refits the reducer with its logit."""
    drawn: list[tuple[int, float]] = []
    real = nodule_train.phantoms

    def spy(size, n, seed, stream, *, juxtavascular=0.0):
        drawn.append((stream, juxtavascular))
        return real(size, n, seed, stream, juxtavascular=juxtavascular)

    monkeypatch.setattr(nodule_train, "phantoms", spy)
    # the card names the code the run started with, not the checkout's state when it saves
    monkeypatch.setattr(nodule_train, "git_version", lambda: "abc1234")
    first = NoduleTrainConfig(
        model="tiny", phantom_size="tiny", n_train=2, n_fp=2, n_val=1, val_every=2, steps=2,
        crops_per_volume=2, patch_steps=2, n_patch=1, juxtavascular=0.5,
    )  # fmt: skip
    trained, _ = nodule_train.train(first, tmp_path / "a", device="cpu")
    streams = nodule_train.STREAMS
    assert sorted(drawn) == sorted(
        [(streams["train"], 0.5), (streams["val"], 0.0), (streams["fp"], 0.0), (streams["patch"], 0.5)]
    )
    assert "--juxtavascular 0.5" in (tmp_path / "a" / "README.md").read_text()
    assert NoduleModel.load(tmp_path / "a").card["code_version"] == "abc1234"

    again = dataclasses.replace(first, init=str(tmp_path / "a"), patch_steps=0, n_patch=0, juxtavascular=0.0)
    model, metrics = nodule_train.train(again, tmp_path / "b", device="cpu")
    assert metrics["patch_classifier"]["kept_from"] == str(tmp_path / "a")
    for key, value in trained.patch.net.state_dict().items():
        assert torch.equal(model.patch.net.state_dict()[key], value), key
    assert model.reducer.features[-1] == "patch_logit"
    with pytest.raises(ValueError, match="juxtavascular must lie in"):
        NoduleTrainConfig(juxtavascular=2.0)
    with pytest.raises(ValueError, match="juxtavascular applies to phantoms only"):
        NoduleTrainConfig(data="luna16:/x", juxtavascular=0.5)
