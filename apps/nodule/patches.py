"""Second-stage false-positive reduction: a small 3D CNN that looks at a cube of CT around each candidate.

The U-Net marks vessel junctions and vessel ends about as confidently as small nodules (its
candidates' size, probability and intensity barely tell them apart); a classifier that sees the
cube around a candidate sees whether the bright structure goes on (a vessel) or stops (a
nodule). This is the two-stage design of most LUNA16 systems (candidates, then a patch CNN).

``PatchClassifier`` wraps MONAI's ``Classifier`` over a ``patch``-voxel cube of the windowed
working-grid image (the U-Net's input); its logit becomes one more feature of the
``FalsePositiveReducer`` (``patch_logit``). ``train_patch_classifier`` fits it on cubes around
the true nodules and the candidates of the training scans (balanced batches, flips, in-plane
transposes and a voxel or two of jitter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ConfigMixin
from core.training.schedule import warmup_cosine

_log = logging.getLogger(__name__)
PREFIX = "patch."  # the classifier's tensors in the model's safetensors file


@dataclass(frozen=True)
class PatchConfig(ConfigMixin):
    """The candidate classifier's shape.

    Args:
        patch: Cube edge, voxels of the working grid (32 at 1.5 mm: 48 mm around the candidate).
        channels: Channels per level (each level halves the cube).
        num_res_units: Residual units per level.
        dropout: Dropout in the blocks.
    """

    patch: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 64)
    num_res_units: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must hold positive numbers, got {self.channels}")
        if self.patch < 2 ** len(self.channels) or self.patch % 2 ** len(self.channels):
            raise ValueError(
                f"patch ({self.patch}) must be a positive multiple of 2**len(channels) "
                f"= {2 ** len(self.channels)}"
            )

    @classmethod
    def tiny(cls) -> PatchConfig:
        """16-voxel cubes, two levels: unit tests."""
        return cls(patch=16, channels=(4, 8), num_res_units=0, dropout=0.0)


def build_patch_network(config: PatchConfig) -> nn.Module:
    """MONAI ``Classifier``: 1 input channel (windowed CT cube), 1 output logit (nodule)."""
    from monai.networks.nets import Classifier

    return Classifier(
        in_shape=(1,) + (config.patch,) * 3,
        classes=1,
        channels=config.channels,
        strides=(2,) * len(config.channels),
        num_res_units=config.num_res_units,
        norm="batch",
        dropout=config.dropout or None,
    )


def cubes(image: np.ndarray | torch.Tensor, centres: np.ndarray, patch: int) -> torch.Tensor:
    """Cubes of edge ``patch`` centred on ``centres`` (``(N, 3)`` voxel indices, rounded) of a
    ``(Z, Y, X)`` image (any float dtype: only the cubes are cast); outside the image reads 0.
    Returns ``(N, 1, patch, patch, patch)`` float32."""
    img = torch.as_tensor(image)
    idx = np.rint(np.asarray(centres, np.float64).reshape(-1, 3)).astype(np.int64)
    shape = np.array(img.shape)
    idx = np.clip(idx, 0, shape - 1)
    out = torch.zeros((len(idx), 1) + (patch,) * 3)
    for n, lo in enumerate(idx - patch // 2):  # copy the part inside the image; no padded copy of it
        a, b = np.maximum(lo, 0), np.minimum(lo + patch, shape)
        d = a - lo
        out[n, 0, d[0] : d[0] + b[0] - a[0], d[1] : d[1] + b[1] - a[1], d[2] : d[2] + b[2] - a[2]] = img[
            a[0] : b[0], a[1] : b[1], a[2] : b[2]
        ]
    return out


class PatchClassifier:
    """A trained candidate classifier.

    Args:
        net: The network (``build_patch_network``).
        config: Its shape.
    """

    def __init__(self, net: nn.Module, config: PatchConfig) -> None:
        self.net = net.eval()
        self.config = config

    @classmethod
    def create(cls, config: PatchConfig, seed: int = 0) -> PatchClassifier:
        """Freshly initialised (deterministic by ``seed``)."""
        torch.manual_seed(seed)
        return cls(build_patch_network(config), config)

    @property
    def n_parameters(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.net.parameters())

    @torch.inference_mode()
    def logits(self, image: np.ndarray | torch.Tensor, centres: np.ndarray, batch: int = 64) -> np.ndarray:
        """Nodule logit per centre (``(N, 3)`` working-grid voxels) of a windowed working-grid image."""
        self.net.eval()
        device = next(self.net.parameters()).device
        centres = np.asarray(centres, np.float64).reshape(-1, 3)
        out = [
            self.net(cubes(image, centres[i : i + batch], self.config.patch).to(device))[:, 0].float().cpu()
            for i in range(0, len(centres), batch)
        ]
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@dataclass
class PatchExamples:
    """Training cubes of one scan: its windowed working-grid image and the centres to cut.

    Args:
        image: ``(Z, Y, X)`` windowed image.
        positives: ``(P, 3)`` voxel centres of nodules (true centres and candidates that hit one).
        negatives: ``(Q, 3)`` voxel centres of non-nodules (candidates that miss, random lung points).
    """

    image: torch.Tensor
    positives: np.ndarray
    negatives: np.ndarray


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    dims = [d for d in (2, 3, 4) if rng.random() < 0.5]
    if dims:
        x = torch.flip(x, dims)
    return x.transpose(3, 4) if rng.random() < 0.5 else x


def train_patch_classifier(
    examples: list[PatchExamples],
    config: PatchConfig,
    *,
    steps: int,
    batch: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    jitter: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[PatchClassifier, dict]:
    """Fit a ``PatchClassifier`` on balanced batches (half nodule cubes) of ``examples``.

    Returns:
        The classifier and ``{"steps", "positives", "negatives", "final_loss"}``.

    Raises:
        ValueError: No positive or no negative example, or ``steps`` < 1.
    """
    pos = [(i, c) for i, e in enumerate(examples) for c in np.asarray(e.positives).reshape(-1, 3)]
    neg = [(i, c) for i, e in enumerate(examples) for c in np.asarray(e.negatives).reshape(-1, 3)]
    if not pos or not neg:
        raise ValueError(
            f"the patch classifier needs nodule and non-nodule examples, got {len(pos)} and {len(neg)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = np.random.default_rng(seed)
    model = PatchClassifier.create(config, seed)
    net = model.net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = warmup_cosine(opt, warmup_steps=min(50, steps), total_steps=steps)
    half = batch // 2
    target = torch.cat([torch.ones(half), torch.zeros(batch - half)]).to(device)
    losses: list[float] = []
    for _ in range(steps):
        net.train()
        picks = [pos[i] for i in rng.integers(0, len(pos), half)] + [
            neg[i] for i in rng.integers(0, len(neg), batch - half)
        ]
        x = torch.cat(
            [
                cubes(examples[i].image, c[None] + rng.integers(-jitter, jitter + 1, 3), config.patch)
                for i, c in picks
            ]
        )
        x = _augment(x, rng).to(device)
        loss = F.binary_cross_entropy_with_logits(net(x)[:, 0].float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.net.eval()
    metrics = {
        "steps": steps,
        "positives": len(pos),
        "negatives": len(neg),
        "final_loss": float(np.mean(losses[-min(100, len(losses)) :])),
    }
    _log.info("patch classifier: %s", metrics)
    return model, metrics


__all__ = [
    "PREFIX",
    "PatchClassifier",
    "PatchConfig",
    "PatchExamples",
    "build_patch_network",
    "cubes",
    "train_patch_classifier",
]
