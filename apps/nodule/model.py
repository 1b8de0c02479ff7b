"""The nodule model: a MONAI 3D U-Net (voxel probabilities) and a candidate classifier (false positives).

``NoduleNetConfig`` holds everything inference needs (network shape, working grid, windows,
thresholds), so a checkpoint folder rebuilds the model exactly. ``NoduleModel`` bundles the network
with its ``FalsePositiveReducer``: a logistic regression over shape and intensity features of each
connected component, fitted on the reducer phantoms' candidates (vessels cut across are elongated
and faint; nodules are compact), saved as plain JSON (no pickle); and, when trained with one, the
``PatchClassifier`` (``patches.py``) whose logit for the CT around a candidate is the reducer's
last feature (its weights under ``patch.`` in the same safetensors file).

Named sizes: ``tiny`` (tests, ~7k parameters), ``student`` (the distilled model for low-resource
sites) and ``default``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from apps.nodule.patches import PREFIX, PatchClassifier, PatchConfig, build_patch_network
from core.config import ConfigMixin, models_dir
from core.training.checkpoint import load_checkpoint, save_checkpoint

DEFAULT_MODEL = "nodule-detector"
STUDENT_MODEL = "nodule-detector-student"
FP_FILE = "fp_reduction.json"
FEATURES = ("log_volume", "max_prob", "mean_prob", "elongation", "fill", "mean_hu", "std_hu")
PATCH_FEATURE = "patch_logit"  # the patch classifier's logit, when the model has one (``patches.py``)


@dataclass(frozen=True)
class NoduleNetConfig(ConfigMixin):
    """Network and inference settings.

    Args:
        channels: U-Net channels per level.
        strides: Down-sampling strides between levels (``len(channels) - 1`` of them).
        num_res_units: Residual units per block.
        norm: ``batch`` or ``instance``. Batch norm keeps eval-time statistics fixed, so a sliding
            window larger than the training crop sees the same normalisation (instance norm would
            renormalise each window by its own content, which shifts the probabilities).
        dropout: Dropout in the blocks.
        spacing_mm: Isotropic working grid, mm.
        patch: Training crop edge, voxels of the working grid.
        roi: Sliding-window edge at inference, voxels.
        overlap: Sliding-window overlap.
        sw_batch_size: Windows per forward pass.
        blend: How overlapping windows are blended: ``gaussian`` weighs each window's logits by a
            Gaussian of the distance to its centre (sigma ``roi / 8``) and ignores its outer band of
            ``roi * overlap / 2`` voxels, which the next window's interior covers, so a voxel takes
            its value from the windows it lies well inside (``detect.window_weights``); ``monai`` is
            MONAI's Gaussian importance map, floored at 1e-3 of its peak, where windows that cut a
            voxel at their edge can outweigh the others (a nodule at a window's edge, confidently
            called background there, was lost that way; models saved before this option blended so).
        hu_window: HU range mapped to ``[0, 1]``.
        prob_threshold: Voxel probability above which a voxel belongs to a reported nodule's mask.
        candidate_threshold: Voxel probability above which voxels form candidates (connected
            components); None = ``prob_threshold``. Lower finds faint nodules, and more false
            positives for the reducer to sort out.
        min_diameter_mm: Candidates smaller than this (equivalent sphere) are dropped.
        report_threshold: Confidence at which a candidate is reported (SEG, SR, report, CLI).
        lung_margin_mm: Margin around the lungs where the network runs and candidates may lie.
    """

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    dropout: float = 0.1
    spacing_mm: float = 1.5
    patch: int = 48
    roi: int = 64
    overlap: float = 0.25
    sw_batch_size: int = 2
    blend: str = "gaussian"
    hu_window: tuple[float, float] = (-1000.0, 400.0)
    prob_threshold: float = 0.5
    candidate_threshold: float | None = 0.1
    min_diameter_mm: float = 2.5
    report_threshold: float = 0.5
    lung_margin_mm: float = 12.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        object.__setattr__(self, "hu_window", tuple(float(h) for h in self.hu_window))
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ValueError(f"channels must hold at least 2 positive numbers, got {self.channels}")
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"strides needs {len(self.channels) - 1} entries for {len(self.channels)} channels, "
                f"got {self.strides}"
            )
        step = int(np.prod(self.strides))
        for name in ("patch", "roi"):
            value = getattr(self, name)
            if value < step or value % step:
                raise ValueError(f"{name} ({value}) must be a positive multiple of the total stride {step}")
        if self.norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {self.norm!r}")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be > 0, got {self.spacing_mm}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")
        if self.blend not in ("gaussian", "monai"):
            raise ValueError(f"blend must be 'gaussian' or 'monai', got {self.blend!r}")
        if not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        for name in ("prob_threshold", "report_threshold", "candidate_threshold"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {getattr(self, name)}")

    @classmethod
    def tiny(cls) -> NoduleNetConfig:
        """A few thousand parameters, 32-voxel crops at 3 mm: unit tests."""
        return cls(channels=(4, 8, 16), strides=(2, 2), num_res_units=0, spacing_mm=3.0, patch=32, roi=32)

    @classmethod
    def student(cls) -> NoduleNetConfig:
        """The distilled student: half the channels, no residual units (~120k parameters, 1/5)."""
        return cls(channels=(8, 16, 32, 64), num_res_units=0)

    @classmethod
    def named(cls, size: str) -> NoduleNetConfig:
        """``tiny``, ``student`` or ``default``.

        Raises:
            ValueError: For another name.
        """
        makers = {"tiny": cls.tiny, "student": cls.student, "default": cls}
        if size not in makers:
            raise ValueError(f"unknown nodule model size {size!r}; choose one of {', '.join(makers)}")
        return makers[size]()


def build_network(config: NoduleNetConfig) -> nn.Module:
    """MONAI's 3D ``UNet``: 1 input channel (windowed CT), 2 output logits (background, nodule)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
        norm=config.norm,
        dropout=config.dropout,
    )


@dataclass
class FalsePositiveReducer:
    """Logistic regression over candidate features giving each candidate its confidence.

    ``features`` is ``FEATURES``, plus ``PATCH_FEATURE`` for a model with a patch classifier.
    Without fitted weights (``coef`` empty) the confidence is the candidate's maximum probability.
    """

    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES

    @property
    def fitted(self) -> bool:
        """Whether weights are there."""
        return len(self.coef) == len(self.features)

    def fit(self, features: np.ndarray, is_nodule: np.ndarray) -> FalsePositiveReducer:
        """Fit on ``features`` ``(N, len(self.features))`` and labels ``(N,)``; needs both classes.

        Raises:
            ValueError: Wrong shape, or fewer than 2 examples of either class.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import average_precision_score

        x = np.asarray(features, np.float64)
        y = np.asarray(is_nodule, bool)
        if x.ndim != 2 or x.shape[1] != len(self.features) or len(x) != len(y):
            raise ValueError(
                f"features must be (N, {len(self.features)}) with N labels, got {x.shape} and {y.shape}"
            )
        if y.sum() < 2 or (~y).sum() < 2:
            raise ValueError(
                "need at least 2 nodule and 2 non-nodule candidates, "
                f"got {int(y.sum())} and {int((~y).sum())}"
            )
        mean, scale = x.mean(0), x.std(0) + 1e-6
        clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000).fit((x - mean) / scale, y)
        self.mean, self.scale = mean.tolist(), scale.tolist()
        self.coef, self.intercept = clf.coef_[0].tolist(), float(clf.intercept_[0])
        scores = self.confidence(x)
        self.metrics = {
            "candidates": float(len(y)),
            "nodule_fraction": float(y.mean()),
            "train_ap": float(average_precision_score(y, scores)),
            "train_ap_max_prob": float(average_precision_score(y, x[:, FEATURES.index("max_prob")])),
        }
        return self

    def confidence(self, features: np.ndarray) -> np.ndarray:
        """Confidence in ``[0, 1]`` per candidate row."""
        x = np.asarray(features, np.float64).reshape(-1, len(self.features))
        if not self.fitted:
            return x[:, FEATURES.index("max_prob")].copy()
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "features": list(self.features),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FalsePositiveReducer:
        """From ``to_dict``'s output.

        Raises:
            ValueError: Features other than this code's ``FEATURES`` (plus ``PATCH_FEATURE``).
        """
        features = tuple(data.get("features", []))
        if features not in (FEATURES, FEATURES + (PATCH_FEATURE,)):
            raise ValueError(
                f"false-positive reducer features {list(features)} do not match {list(FEATURES)} "
                f"(optionally followed by {PATCH_FEATURE!r})"
            )
        return cls(
            features=features,
            mean=list(data["mean"]),
            scale=list(data["scale"]),
            coef=list(data["coef"]),
            intercept=float(data["intercept"]),
            metrics=dict(data.get("metrics", {})),
        )


@dataclass
class NoduleModel:
    """The network, its configuration, its false-positive reducer and (optionally) its patch classifier."""

    net: nn.Module
    config: NoduleNetConfig
    reducer: FalsePositiveReducer = field(default_factory=FalsePositiveReducer)
    card: dict[str, Any] = field(default_factory=dict)
    patch: PatchClassifier | None = None

    @classmethod
    def create(cls, config: NoduleNetConfig, seed: int = 0) -> NoduleModel:
        """A freshly initialised model (deterministic by ``seed``)."""
        torch.manual_seed(seed)
        return cls(build_network(config), config)

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of the network."""
        return sum(p.numel() for p in self.net.parameters())

    def save(
        self,
        directory: str | Path,
        *,
        name: str,
        metrics: dict[str, Any],
        summary: str,
        train: dict[str, Any] | None = None,
        sections: dict[str, str] | None = None,
        code_version: str | None = None,
    ) -> Path:
        """Weights (the patch classifier's under ``patch.``), model card and ``fp_reduction.json``;
        ``code_version``: the training code's ``git_version()`` (None: taken now)."""
        tensors = dict(self.net.state_dict())
        config: dict[str, Any] = {"model": self.config.to_dict(), "train": dict(train or {})}
        if self.patch is not None:
            tensors |= {PREFIX + k: v for k, v in self.patch.net.state_dict().items()}
            config["patch"] = self.patch.config.to_dict()
        out = save_checkpoint(
            directory,
            tensors,
            name=name,
            config=config,
            metrics=metrics,
            summary=summary,
            sections=sections,
            extra={"n_parameters": self.n_parameters, "false_positive_reduction": self.reducer.to_dict()},
            code_version=code_version,
        )
        (out / FP_FILE).write_text(json.dumps(self.reducer.to_dict(), indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path | None = None, device: str = "cpu") -> NoduleModel:
        """A model saved by ``save``; ``None`` for the shipped ``models/nodule-detector``.

        Raises:
            FileNotFoundError: The folder, weights or card is missing.
            ValueError: The card's config or the weights do not fit this code.
        """
        folder = Path(directory) if directory is not None else models_dir(DEFAULT_MODEL)
        tensors, card = load_checkpoint(folder, device=device)
        try:
            config = NoduleNetConfig.from_dict(card["config"]["model"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{folder}: model card has no nodule model config ({err})") from err
        patch_tensors = {k[len(PREFIX) :]: tensors.pop(k) for k in list(tensors) if k.startswith(PREFIX)}
        net = build_network(config)
        patch = None
        try:
            net.load_state_dict(tensors)
            if card["config"].get("patch") is not None:
                patch_config = PatchConfig.from_dict(card["config"]["patch"])
                patch = PatchClassifier(build_patch_network(patch_config), patch_config)
                patch.net.load_state_dict(patch_tensors)
                patch.net.to(device).eval()
        except RuntimeError as err:
            raise ValueError(
                f"{folder}: weights do not fit the configured network: {str(err).splitlines()[0]}"
            ) from err
        net.to(device).eval()
        fp_path = folder / FP_FILE
        reducer = (
            FalsePositiveReducer.from_dict(json.loads(fp_path.read_text()))
            if fp_path.is_file()
            else FalsePositiveReducer()
        )
        if (PATCH_FEATURE in reducer.features) != (patch is not None):
            raise ValueError(
                f"{folder}: the false-positive reducer's features {list(reducer.features)} do not match "
                f"the model ({'with' if patch is not None else 'without'} a patch classifier)"
            )
        return cls(net, config, reducer, card, patch)


__all__ = [
    "DEFAULT_MODEL",
    "FEATURES",
    "PATCH_FEATURE",
    "STUDENT_MODEL",
    "FalsePositiveReducer",
    "NoduleModel",
    "NoduleNetConfig",
    "build_network",
]
