"""Training the nodule U-Net on synthetic phantoms, distilling a student, fitting the candidate classifier.

Recipe (the shipped models' cards record the config and the command of each of their runs):

- data: ``n_train`` phantoms for the network, ``n_fp`` more for the false-positive reducer and
  ``n_val`` for validation, from independent seed streams (``phantom_seed``), or the same splits of
  LUNA16 / LIDC-IDRI (``data``); each resampled to the working grid and windowed (``preprocess``),
  ground truth resampled with nearest neighbour;
- MONAI dictionary transforms: balanced positive/negative crops (``RandCropByPosNegLabeld``;
  positives centred on every nodule equally often, whatever its size, or up to ``crop_shift``
  voxels off it, and ``hard_weight`` times as often on the nodules the network misses, mined before
  the first step and after each validation; half the negatives inside the lungs, where the vessels
  are), flips on every axis, in-plane 90 degree rotations, small
  random rotations and scaling (new shapes and sizes from the same phantoms), intensity scale and shift;
- Dice of the nodule class per crop (a 4 mm nodule's crop counts as much as a 30 mm one's;
  ``dice_per_crop: false`` pools the batch, where the large nodules' voxels drown the small ones)
  + cross-entropy, AdamW with warm-up and cosine decay, mixed precision on CUDA (``amp: true`` in
  the config forces bf16 on CPU);
- sliding-window validation every ``val_every`` steps of the detector as it would ship: its
  ``FalsePositiveReducer`` fitted afresh on the candidates of the ``n_fp`` phantoms, then CPM and
  Dice on the validation phantoms; the best CPM (then Dice) is kept, with its reducer. (Ranking by
  the maximum probability alone misleads: as the network grows confident it saturates at 1.0 for
  most candidates, and the CPM of later, better-separating checkpoints looked worse.)
- distillation (``teacher`` given): the student's loss adds ``alpha * T^2 * KL`` between the
  teacher's and the student's softened voxel distributions to its Dice + CE.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from apps.nodule.detect import NoduleDetector
from apps.nodule.model import FEATURES, PATCH_FEATURE, FalsePositiveReducer, NoduleModel, NoduleNetConfig
from apps.nodule.patches import PatchConfig, PatchExamples, train_patch_classifier
from apps.nodule.preprocess import lung_mask, resample, window
from apps.nodule.sampling import nodule_peaks, nodule_voxels, positive_indices
from apps.nodule.second_stage import candidate_table, patch_examples
from apps.nodule.validate import Scan, phantom_scan, phantoms, score_detector
from core.config import ConfigMixin
from core.training import distributed
from core.training.checkpoint import git_version
from core.training.schedule import warmup_cosine

_log = logging.getLogger(__name__)

# seed streams (see validate.py): the network's phantoms, the reducer's, validation's, and the extra
# phantoms of the patch classifier
STREAMS = {"train": 0, "fp": 1, "val": 2, "patch": 3}


@dataclass(frozen=True)
class NoduleTrainConfig(ConfigMixin):
    """How ``fathom nodule train`` trains.

    Args:
        model: Network size (``tiny``, ``student``, ``default``).
        data: ``phantoms`` (synthetic, drawn here), ``luna16:/path`` or ``lidc:/dicom/root`` (see
            ``apps.nodule.datasets``: their train/fp/val splits).
        phantom_size: Phantom size to train on (``PhantomConfig.named``).
        n_train: Scans for the network (at most; a data set may hold fewer).
        n_fp: Scans for the false-positive reducer.
        n_val: Validation scans.
        seed: Seed of the phantoms, crops and initial weights.
        steps: Optimiser steps of the U-Net; 0 (with ``init``) keeps the init model's network and
            trains only the false-positive stage.
        volumes_per_step: Phantoms sampled per step.
        crops_per_volume: Crops per sampled phantom (half around nodules, half elsewhere in the lungs).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up steps.
        val_every: Validate every so many steps (and at the end).
        amp: Mixed precision: None = on CUDA only.
        alpha: Distillation weight of the teacher term.
        temperature: Distillation temperature.
        init: Folder of a trained model of the same network to continue from (its weights; a fresh
            optimiser and schedule), or None to start from random weights. Recorded in the card.
        dice_per_crop: Dice per crop, averaged (True), or over the whole batch's voxels (False; the first
            runs of the shipped models, see their cards). Crops without a nodule add nothing to the
            per-crop Dice; cross-entropy covers them.
        patch_steps: Optimiser steps of the patch classifier (``patches.py``), trained after the
            U-Net on cubes around the training scans' true nodules and candidates; its logit joins
            the false-positive reducer's features. 0: none trained; the ``init`` model's patch
            classifier is kept (the reducer refitted with it), or there is none.
        patch_negatives: Random cubes per training scan added to the candidates' negatives.
        n_patch: More scans for the patch classifier alone, beyond the ``n_train`` ones: phantoms of
            their own seed stream, or the data set's train split after its first ``n_train`` scans.
            The second stage only needs each scan's cubes, so a scan costs one detection and no
            U-Net step; they are drawn and cut one at a time (their images kept in float16).
        hard_weight: Hard-nodule mining: the training nodules the network misses (peak probability
            under ``prob_threshold`` on a crop centred on them; checked before the first step and
            after every validation) are cropped this many times as often as the others. 1: every
            nodule equally often.
        crop_shift: Positive crops are centred up to this many voxels (per axis, uniform) away from
            the nodule voxel drawn, so the network also sees nodules near a crop's edge, where the
            sliding windows put them at inference (a network trained only on centred nodules can miss
            one there); 0: centred on it. Less than half the model's ``patch``.
        juxtavascular: Phantoms only: the probability that a nodule of the training phantoms (the
            network's and ``n_patch``'s, not the reducer's or validation's) sits on a vessel
            (``PhantomConfig.juxtavascular_fraction``), the nodules a U-Net most easily takes for
            vessels; 0 draws the phantoms as evaluation does.
    """

    model: str = "default"
    data: str = "phantoms"
    phantom_size: str = "medium"
    n_train: int = 48
    n_fp: int = 8
    n_val: int = 6
    seed: int = 0
    steps: int = 800
    volumes_per_step: int = 2
    crops_per_volume: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    val_every: int = 250
    amp: bool | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    init: str | None = None
    dice_per_crop: bool = True
    patch_steps: int = 1500
    patch_negatives: int = 16
    n_patch: int = 0
    hard_weight: int = 1
    crop_shift: int = 0
    juxtavascular: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "n_train",
            "n_fp",
            "n_val",
            "volumes_per_step",
            "crops_per_volume",
            "val_every",
            "hard_weight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < (0 if self.init else 1):
            raise ValueError(
                f"steps must be >= 1 (or 0 with init: train the false-positive stage only), got {self.steps}"
            )
        if self.crop_shift < 0:
            raise ValueError(f"crop_shift must be >= 0, got {self.crop_shift}")
        if self.patch_steps < 0 or self.patch_negatives < 0 or self.n_patch < 0:
            raise ValueError(
                "patch_steps, patch_negatives and n_patch must be >= 0, "
                f"got {self.patch_steps}, {self.patch_negatives} and {self.n_patch}"
            )
        if self.crops_per_volume % 2:
            raise ValueError(
                f"crops_per_volume must be even (half positive, half negative), got {self.crops_per_volume}"
            )
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not 0 <= self.juxtavascular <= 1:
            raise ValueError(f"juxtavascular must lie in [0, 1], got {self.juxtavascular}")
        if self.juxtavascular and self.data != "phantoms":
            raise ValueError(f"juxtavascular applies to phantoms only, not to data {self.data!r}")
        patch = NoduleNetConfig.named(self.model).patch
        if 2 * self.crop_shift >= patch:
            raise ValueError(
                f"crop_shift must be less than half the {self.model} model's patch {patch}, "
                f"got {self.crop_shift}"
            )


def prepare_scan(scan: Scan, config: NoduleNetConfig, seed: int = 0, shift: int = 0) -> dict:
    """A scan on the working grid: windowed image, nodule label, crop indices (``(1, Z, Y, X)``)."""
    t = config.spacing_mm
    volume = scan.volume
    hu = resample(volume.hu, volume.spacing, t)
    label = resample(scan.nodule_mask().astype(np.uint8), volume.spacing, t, labels=True)
    lungs = lung_mask(hu, (t, t, t))
    rng = np.random.default_rng(seed)
    fg = positive_indices(nodule_voxels(label), rng, shape=label.shape, shift=shift)
    # negatives: half in the lungs (vessels, airways: the hard ones), half anywhere else (chest
    # wall, mediastinum, bone), which the network also sees in its lung box at inference
    inside = np.flatnonzero(lungs & (label == 0))
    outside = np.flatnonzero(~lungs & (label == 0))
    if len(inside) == 0:  # no lungs found (not a chest CT?): negatives from anywhere
        bg = outside
    else:
        take = min(len(outside), len(inside))
        bg = np.concatenate([inside, rng.choice(outside, size=take, replace=False)])
    return {
        "image": window(torch.from_numpy(hu)[None], config.hu_window),
        "label": torch.from_numpy(label.astype(np.uint8))[None],
        "fg": fg,
        "bg": bg,
    }


def _augment(config: NoduleNetConfig, train: NoduleTrainConfig):
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    half = train.crops_per_volume // 2
    return Compose(
        [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=(config.patch,) * 3,
                pos=half,
                neg=half,
                num_samples=train.crops_per_volume,
                fg_indices_key="fg",
                bg_indices_key="bg",
                allow_smaller=True,
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.5, spatial_axis=2),
            RandRotate90d(keys, prob=0.5, spatial_axes=(1, 2)),
            # small rotations and size changes: new nodule shapes and sizes from the same phantoms
            RandAffined(
                keys,
                prob=0.5,
                rotate_range=(0.26, 0.26, 0.26),
                scale_range=(0.15, 0.15, 0.15),
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        ]
    ).set_random_state(seed=train.seed)


def _batch(
    items: list[dict], augment, rng: np.random.Generator, n: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for idx in rng.choice(len(items), size=n, replace=len(items) < n):
        for crop in augment(items[int(idx)]):
            image, label = crop["image"].as_tensor(), crop["label"].as_tensor()
            pad = [(0, patch - s) for s in image.shape[1:]]
            if any(p[1] for p in pad):  # volumes smaller than a patch (tiny phantoms)
                flat = [v for p in reversed(pad) for v in p]
                image, label = F.pad(image, flat), F.pad(label, flat)
            images.append(image)
            labels.append(label.float())
    return torch.stack(images), torch.stack(labels)


def _seg_loss(per_crop: bool):
    """Dice of the nodule class + cross-entropy, on logits ``(B, 2, ...)`` and labels ``(B, 1, ...)``.

    Per crop, the Dice is averaged over the crops that hold nodule voxels (a crop without one has no
    Dice to speak of; cross-entropy covers it); else it pools the whole batch.
    """
    from monai.losses import DiceLoss

    dice = DiceLoss(
        to_onehot_y=True, softmax=True, include_background=False, batch=not per_crop, reduction="none"
    )

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels[:, 0].long())
        per = dice(logits, labels).flatten()
        if per_crop:
            per = per[labels.flatten(1).any(1)]
        return ce + per.mean() if per.numel() else ce

    return loss


def _distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student / temperature, dim=1)
    q = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean() * temperature**2


def _fit_reducer(model: NoduleModel, detector: NoduleDetector, scans: list[Scan]) -> str:
    """Fit ``model``'s false-positive reducer afresh on the candidates of ``scans``; a note when it
    cannot be fitted (too few candidates of a class: the confidence is then the maximum probability)."""
    model.reducer = FalsePositiveReducer(features=FEATURES + ((PATCH_FEATURE,) if model.patch else ()))
    features, hits = candidate_table(detector, scans)
    try:
        model.reducer.fit(features, hits)
    except ValueError as err:  # raised before any weight is set: the reducer stays unfitted
        note = f"false-positive reducer not fitted: {err}"
        _log.warning(note)
        return note
    return ""


def _reproduce(config: NoduleTrainConfig, distilled: bool) -> str:
    """The command that trains this model again (options that differ from the defaults spelled out)."""
    defaults = NoduleTrainConfig(model=config.model)
    flags = {"steps": "--steps", "n_train": "--n-train", "phantom_size": "--phantom-size", "seed": "--seed",
             "data": "--data", "init": "--init", "hard_weight": "--hard-weight",
             "crop_shift": "--crop-shift", "n_patch": "--n-patch",
             "juxtavascular": "--juxtavascular"}  # fmt: skip
    parts = [f"fathom nodule train --model {config.model}"]
    parts += [f"{flag} {getattr(config, key)}" for key, flag in flags.items()
              if getattr(config, key) != getattr(defaults, key)]  # fmt: skip
    others = {k: v for k, v in config.to_dict().items() if k not in flags and k != "model"}
    if distilled:
        parts.append("--teacher models/nodule-detector")
    if others != {k: v for k, v in defaults.to_dict().items() if k not in flags and k != "model"}:
        return (
            "`" + " ".join(parts) + " --config train.yaml --out DIR` (train.yaml: this card's `config.train`)"
        )
    return "`" + " ".join(parts) + " --out DIR`"


def _init_from(model: NoduleModel, folder: str) -> dict:
    """Load the model in ``folder`` into ``model`` (network weights, patch classifier, reducer);
    what the card records about it.

    Raises:
        FileNotFoundError: no model there.
        ValueError: its network is not ``model``'s.
    """
    start = NoduleModel.load(folder)
    network = ("channels", "strides", "num_res_units", "norm", "dropout", "spacing_mm", "hu_window")
    if any(getattr(start.config, k) != getattr(model.config, k) for k in network):
        raise ValueError(
            f"init model {folder} has another network ({start.config.channels}, norm {start.config.norm}) "
            f"than the one to train ({model.config.channels}, norm {model.config.norm})"
        )
    model.net.load_state_dict(start.net.state_dict())
    # its second stage too: kept when no patch classifier is trained (patch_steps 0), the reducer
    # (which takes the patch logit) refitted at validation
    model.patch, model.reducer = start.patch, start.reducer
    card = start.card
    steps = (card.get("config", {}).get("train") or {}).get("steps")
    earlier = (card.get("metrics") or {}).get("init") or {}
    return {
        "from": str(folder),
        "name": card.get("name"),
        "created": card.get("created"),
        "code_version": card.get("code_version"),
        "val_cpm": (card.get("metrics") or {}).get("val_cpm"),
        "steps": steps,
        "steps_before": (earlier.get("steps_before") or 0) + (earlier.get("steps") or 0),
        "init": earlier or None,
    }


def train(
    train_config: NoduleTrainConfig,
    out: str | Path | None = None,
    *,
    teacher: NoduleModel | None = None,
    device: str | None = None,
    progress: bool = False,
) -> tuple[NoduleModel, dict]:
    """Train (or distil, with ``teacher``) a nodule model; save it to ``out`` when given.

    Returns:
        The model (best validation weights, fitted reducer) and its metrics.
    """
    from rich.progress import Progress

    cfg = NoduleNetConfig.named(train_config.model)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = distributed.init_distributed()  # under torchrun (WORLD_SIZE > 1): DDP, else one process
    dev, progress = distributed.local_device(dev), progress and run.is_main
    amp = dev.type == "cuda" if train_config.amp is None else train_config.amp
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    started = time.perf_counter()
    code_version = git_version()  # the code this run loaded; the checkout may move while it trains

    def scans(split: str, n: int) -> Iterator[Scan]:
        if train_config.data == "phantoms":
            vascular = train_config.juxtavascular if split in ("train", "patch") else 0.0
            made = phantoms(
                train_config.phantom_size, n, train_config.seed, STREAMS[split], juxtavascular=vascular
            )
            return (phantom_scan(p, f"{split}-{i}") for i, p in enumerate(made))
        from apps.nodule.datasets import dataset_scans

        if split == "patch":  # the train split, after the network's scans
            skip = train_config.n_train
            return itertools.islice(dataset_scans(train_config.data, "train", limit=skip + n), skip, None)
        return dataset_scans(train_config.data, split, limit=n)

    def draw(split: str, n: int) -> list[Scan]:
        return list(scans(split, n))

    train_scans = draw("train", train_config.n_train)
    items = [
        prepare_scan(s, cfg, train_config.seed + i, train_config.crop_shift)
        for i, s in enumerate(train_scans)
    ]
    if not items:
        raise ValueError(f"no training scans in {train_config.data}")
    val_scans = draw("val", train_config.n_val)
    fp_scans = draw("fp", train_config.n_fp) if run.is_main else []
    model = NoduleModel.create(cfg, seed=train_config.seed)
    init = _init_from(model, train_config.init) if train_config.init else None
    net = model.net.to(dev)
    teacher_net = teacher.net.to(dev).eval() if teacher is not None else None
    augment = _augment(cfg, train_config)
    rng = np.random.default_rng(train_config.seed)
    # DDP: gradients averaged over ranks, each rank its own crops; rank 0 validates and saves
    train_net = distributed.wrap_ddp(net)
    if run.distributed:
        rng = np.random.default_rng(distributed.rank_seed(train_config.seed))
        augment.set_random_state(seed=distributed.rank_seed(train_config.seed))
    loss_fn = _seg_loss(train_config.dice_per_crop)
    opt = torch.optim.AdamW(net.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay)
    sched = warmup_cosine(
        opt,
        warmup_steps=min(train_config.warmup_steps, train_config.steps),
        total_steps=max(train_config.steps, 1),  # steps 0: no U-Net step is taken
    )
    scaler = torch.amp.GradScaler(enabled=amp and dev.type == "cuda")
    best: tuple[float, float] = (-1.0, -1.0)
    best_state, best_step, history = copy.deepcopy(net.state_dict()), 0, []
    best_reducer, best_note, val = model.reducer, "", {}

    def validate() -> tuple[dict, FalsePositiveReducer, str]:
        detector = NoduleDetector(model, str(dev))
        note = _fit_reducer(model, detector, fp_scans)
        return score_detector(detector, val_scans), copy.deepcopy(model.reducer), note

    parts = (
        [nodule_voxels(item["label"][0].numpy()) for item in items] if train_config.hard_weight > 1 else []
    )
    mine_rng = np.random.default_rng(train_config.seed + 1)

    def mine() -> tuple[int, int]:
        """Re-weight the positive crops towards the nodules the network misses now (every rank
        mines its own items with the same weights: the replicas are equal)."""
        net.eval()
        hard = total = 0
        for item, item_parts in zip(items, parts, strict=True):
            missed = nodule_peaks(net, item["image"], item_parts, cfg.patch, dev) < cfg.prob_threshold
            weights = np.where(missed, train_config.hard_weight, 1)
            shape = tuple(item["label"].shape[1:])
            item["fg"] = positive_indices(
                item_parts, mine_rng, weights, shape=shape, shift=train_config.crop_shift
            )
            hard, total = hard + int(missed.sum()), total + len(item_parts)
        return hard, total

    hard = mine() if parts and train_config.steps else None
    if hard:
        _log.info("hard-nodule mining: %d of %d training nodules missed", *hard)
    losses: list[float] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("nodule train", total=train_config.steps)
        for step in range(1, train_config.steps + 1):
            net.train()
            x, y = _batch(items, augment, rng, train_config.volumes_per_step, cfg.patch)
            x, y = x.to(dev), y.to(dev)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                logits = train_net(x)
                loss = loss_fn(logits.float(), y)
                if teacher_net is not None:
                    with torch.no_grad():
                        target = teacher_net(x)
                    loss = (1 - train_config.alpha) * loss + train_config.alpha * _distill_loss(
                        logits.float(), target.float(), train_config.temperature
                    )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            bar.advance(task)
            if step % train_config.val_every == 0 or step == train_config.steps:
                net.eval()
                scores, reducer, note = distributed.on_main(validate)()
                key = (scores["cpm"] or 0.0, scores["dice"] or 0.0)
                history.append(
                    {
                        "step": step,
                        "loss": float(np.mean(losses[-train_config.val_every :])),
                        "val_cpm": scores["cpm"],
                        "val_dice": scores["dice"],
                    }
                )
                if hard is not None:  # what the steps up to here were weighted by; mine again
                    history[-1]["hard_nodules"] = list(hard)
                    hard = mine() if step < train_config.steps else hard
                _log.info("step %d: %s", step, history[-1])
                if progress:
                    bar.console.print(f"step {step}: {history[-1]}")
                if key > best:
                    best, best_state, best_step = key, copy.deepcopy(net.state_dict()), step
                    best_reducer, best_note, val = reducer, note, scores
    net.load_state_dict(best_state)
    net.eval()
    model.reducer, fp_note = best_reducer, best_note
    if not run.is_main:  # DDP: the replicas are equal; rank 0 saves
        return model, {"rank": run.rank, "best_step": best_step, "history": history}
    patch_metrics = None
    if train_config.patch_steps:
        # second stage on the chosen network's candidates; then the reducer is fitted again with
        # the patch logit and the whole detector validated once more
        detector = NoduleDetector(model, str(dev))
        examples = patch_examples(
            detector, train_scans, items, train_config.patch_negatives, train_config.seed
        )
        for i, scan in enumerate(scans("patch", train_config.n_patch) if train_config.n_patch else ()):
            seed = train_config.seed + len(items) + i
            item = prepare_scan(scan, cfg, seed)
            (extra,) = patch_examples(detector, [scan], [item], train_config.patch_negatives, seed)
            examples.append(PatchExamples(extra.image.half(), extra.positives, extra.negatives))
        patch_config = PatchConfig.tiny() if train_config.model == "tiny" else PatchConfig()
        try:
            model.patch, patch_metrics = train_patch_classifier(
                examples, patch_config, steps=train_config.patch_steps, seed=train_config.seed, device=dev
            )
        except ValueError as err:  # no cube of a class (a tiny data set): the reducer works without
            patch_metrics = f"patch classifier not trained: {err}"
            _log.warning(patch_metrics)
    if train_config.patch_steps or not history:
        val, model.reducer, fp_note = validate()
    metrics = {
        "val_cpm": val["cpm"],
        "val_sensitivity_at_1fp": val["sensitivity_at_1fp"],
        "val_dice": val["dice"],
        "val_sensitivities": val["sensitivities"],
        "val_n_scans": val["n_scans"],
        "val_n_truths": val["n_truths"],
        "best_step": best_step,
        "history": history,
        "n_parameters": model.n_parameters,
        "train_seconds": round(time.perf_counter() - started, 1),
        "device": dev.type,
        "amp": amp,
        "false_positive_reduction": model.reducer.metrics or fp_note,
    }
    if teacher is not None:
        metrics["teacher_parameters"] = teacher.n_parameters
    if model.patch is not None:
        trained = patch_metrics if patch_metrics is not None else {"kept_from": train_config.init}
        metrics["patch_classifier"] = trained | {"parameters": model.patch.n_parameters}
    elif patch_metrics is not None:
        metrics["patch_classifier"] = patch_metrics
    if init is not None:
        metrics["init"] = init
    if out is not None:
        model.save(
            out,
            name="fathom-nodule-detector" + ("-student" if teacher is not None else ""),
            metrics=metrics,
            summary=(
                "MONAI 3D U-Net over chest CT resampled to a "
                f"{cfg.spacing_mm} mm grid, connected components"
                + (", a patch classifier (3D CNN over the CT around each candidate)" if model.patch else "")
                + " and a logistic false-positive reducer; trained on synthetic phantoms"
                + (" by distillation from the teacher" if teacher else "")
            ),
            train=train_config.to_dict(),
            sections={
                "Intended use": "Research and engineering tests of the Fathom pipeline. Trained only on "
                "synthetic phantoms: not validated on patient data, not a medical device.",
                "Reproduce": _reproduce(train_config, teacher is not None),
            },
            code_version=code_version,
        )
    return model, metrics


__all__ = ["STREAMS", "NoduleTrainConfig", "prepare_scan", "train"]
