"""Model lineage: which data, code, config and metrics made each shipped model.

Every model folder under ``models/`` (``core.config.models_dir``) holds a ``model_card.json``
written by ``core.training.save_checkpoint``: name, created, code version (``git describe``), torch
version, config, metrics and the sha256 of each training data file. ``read_lineage`` turns one
folder into a ``ModelLineage`` (adding the sha256 of the weights, so a copy can be checked against
the card); ``list_lineage`` reads every folder that has a card, and ``lineage_table`` lays them out
one row per model::

    for model in list_lineage():        # models/fraud-detector, models/intent-router, ...
        print(model.name, model.code_version, model.data, model.key_metrics)

A folder whose card cannot be read is listed with ``error`` set instead of stopping the listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import models_dir
from core.training.checkpoint import CARD_JSON, CARD_MD, WEIGHTS, file_sha256, read_card

KEY_METRICS = 8  # figures shown per model
EXCERPT_CHARS = 600


@dataclass
class ModelLineage:
    """The lineage of one model folder.

    Args:
        folder: the model folder.
        name: the card's model name (the folder name when the card has none or is unreadable).
        created: when the checkpoint was written (ISO 8601, UTC), as the card says.
        code_version: ``git describe --always --dirty`` of the training code ("-dirty": uncommitted
            changes were present, so the commit alone does not reproduce it).
        torch: torch version that trained it.
        data: training data file name -> sha256.
        config: the full config of the card.
        metrics: the full metrics of the card.
        summary: the card's one-paragraph summary.
        weights_sha256: sha256 of ``model.safetensors`` ("" when absent).
        weights_bytes: its size (0 when absent).
        readme_excerpt: the start of ``README.md`` after its title.
        error: why the card could not be read (None when it could).
    """

    folder: Path
    name: str
    created: str = ""
    code_version: str = ""
    torch: str = ""
    data: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    weights_sha256: str = ""
    weights_bytes: int = 0
    readme_excerpt: str = ""
    error: str | None = None

    @property
    def key_metrics(self) -> dict[str, float]:
        """Up to ``KEY_METRICS`` numeric metrics, two levels deep at most, no counts (``n_*``, ``*_n``)."""
        flat = flatten(self.metrics, max_depth=2)
        figures = {
            k: float(v)
            for k, v in flat.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not _is_count(k.split(".")[-1])
        }
        return dict(list(figures.items())[:KEY_METRICS])

    @property
    def config_summary(self) -> str:
        """The config's scalar settings as ``section.key=value``, comma-separated."""
        flat = flatten(self.config, max_depth=3)
        return ", ".join(f"{k}={v}" for k, v in flat.items() if isinstance(v, str | int | float | bool))

    @property
    def dirty(self) -> bool:
        """The code had uncommitted changes when the model was trained."""
        return self.code_version.endswith("-dirty")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, the key metrics and the config summary."""
        out = asdict(self)
        out["folder"] = str(self.folder)
        out["key_metrics"] = self.key_metrics
        out["config_summary"] = self.config_summary
        return out


def _is_count(key: str) -> bool:
    return key.startswith("n_") or key.endswith("_n")


def flatten(tree: Mapping[str, Any], max_depth: int = 3, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; deeper mappings and lists are kept as leaves.

    Args:
        tree: a JSON-like mapping.
        max_depth: levels of keys joined (1: the top level only).
        prefix: prepended to every key (used by the recursion).
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and max_depth > 1:
            out.update(flatten(value, max_depth - 1, f"{name}."))
        elif not isinstance(value, Mapping):
            out[name] = value
    return out


def _excerpt(readme: Path, limit: int = EXCERPT_CHARS) -> str:
    if not readme.is_file():
        return ""
    lines = readme.read_text(errors="replace").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join(lines).strip()
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def read_lineage(folder: str | Path, *, hash_weights: bool = True) -> ModelLineage:
    """The lineage of one model folder (see ``ModelLineage``).

    Args:
        folder: a folder with ``model_card.json`` (and usually ``model.safetensors``, ``README.md``).
        hash_weights: compute the sha256 of the weights (reads the whole file).

    Returns:
        ``ModelLineage``; when the card is unreadable (not JSON, not an object), ``error`` says why
        and only the folder, name and README fields are filled.

    Raises:
        FileNotFoundError: the folder has no ``model_card.json``.
    """
    folder = Path(folder)
    excerpt = _excerpt(folder / CARD_MD)
    try:
        card = read_card(folder)
        if not isinstance(card, dict):
            raise ValueError(f"{folder / CARD_JSON}: not a JSON object")
    except ValueError as err:
        return ModelLineage(folder=folder, name=folder.name, readme_excerpt=excerpt, error=str(err))
    weights = folder / WEIGHTS
    has_weights = weights.is_file()
    return ModelLineage(
        folder=folder,
        name=str(card.get("name") or folder.name),
        created=str(card.get("created", "")),
        code_version=str(card.get("code_version", "")),
        torch=str(card.get("torch", "")),
        data={str(k): str(v) for k, v in dict(card.get("data") or {}).items()},
        config=dict(card.get("config") or {}),
        metrics=dict(card.get("metrics") or {}),
        summary=str(card.get("summary", "")),
        weights_sha256=file_sha256(weights) if has_weights and hash_weights else "",
        weights_bytes=weights.stat().st_size if has_weights else 0,
        readme_excerpt=excerpt,
    )


def list_lineage(root: str | Path | None = None, *, hash_weights: bool = True) -> list[ModelLineage]:
    """The lineage of every sub-folder of ``root`` that has a model card, by folder name.

    Args:
        root: the models folder (default ``core.config.models_dir()``: ``$FATHOM_MODELS_DIR`` or
            the checkout's ``models/``). A missing folder gives an empty list.
        hash_weights: see ``read_lineage``.
    """
    base = Path(root) if root is not None else models_dir()
    if not base.is_dir():
        return []
    folders = sorted(p for p in base.iterdir() if p.is_dir() and (p / CARD_JSON).is_file())
    return [read_lineage(p, hash_weights=hash_weights) for p in folders]


def lineage_table(models: list[ModelLineage] | None = None) -> pd.DataFrame:
    """One row per model: folder, name, created, code version, torch, data hashes, key metrics, error.

    Args:
        models: as ``list_lineage`` returns (default: ``list_lineage()``).

    Returns:
        DataFrame with columns ``folder, name, created, code_version, torch, data, weights_sha256,
        key_metrics, config, error``; ``data``, ``key_metrics`` and ``config`` are short texts.
    """
    models = list_lineage() if models is None else models
    rows = [
        {
            "folder": m.folder.name,
            "name": m.name,
            "created": m.created,
            "code_version": m.code_version,
            "torch": m.torch,
            "data": "; ".join(f"{k} ({v[:12]})" for k, v in m.data.items()),
            "weights_sha256": m.weights_sha256[:12],
            "key_metrics": ", ".join(f"{k}={v:.4g}" for k, v in m.key_metrics.items()),
            "config": m.config_summary[:200],
            "error": m.error or "",
        }
        for m in models
    ]
    columns = ["folder", "name", "created", "code_version", "torch", "data", "weights_sha256"]
    return pd.DataFrame(rows, columns=[*columns, "key_metrics", "config", "error"])
