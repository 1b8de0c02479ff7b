"""Checkpoints: safetensors weights beside a model card (JSON for programs, Markdown for people).

A checkpoint folder holds::

    model.safetensors   tensors only (no pickle); the card's name and version in its metadata
    model_card.json     name, created, code version, config, metrics, data (file -> sha256), extra
    README.md           the same card rendered for people, plus free-text sections

``load_checkpoint`` refuses folders without both files, so weights never travel without their card.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"
CARD_JSON = "model_card.json"
CARD_MD = "README.md"
CARD_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (streamed, so large files are fine)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_version(root: str | Path | None = None) -> str:
    """``git describe --always --dirty`` of the code that trains, or "unknown" outside a checkout."""
    cwd = Path(root) if root else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _markdown(card: Mapping[str, Any], sections: Mapping[str, str]) -> str:
    lines = [f"# {card['name']}", "", str(card.get("summary", "")).strip(), ""]
    for title, body in sections.items():
        lines += [f"## {title}", "", body.strip(), ""]
    lines += ["## Metrics", ""]
    lines += [f"- {k}: {v}" for k, v in card.get("metrics", {}).items()] or ["- none recorded"]
    lines += ["", "## Training data", ""]
    lines += [f"- `{k}`: sha256 `{v}`" for k, v in card.get("data", {}).items()] or ["- none recorded"]
    lines += ["", "## Config", "", "```json", json.dumps(card.get("config", {}), indent=2), "```", ""]
    lines += [f"Code version: `{card.get('code_version')}`; created {card.get('created')}.", ""]
    return "\n".join(lines)


def save_checkpoint(
    directory: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    data: Mapping[str, str] | None = None,
    summary: str = "",
    sections: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    code_version: str | None = None,
) -> Path:
    """Write weights and card into ``directory`` (created if needed); returns the folder.

    Args:
        directory: the checkpoint folder.
        tensors: name -> tensor (made contiguous; shared storage is copied apart).
        name: the model's name, e.g. "fathom-intent-router".
        config: everything needed to rebuild the model (JSON-serialisable).
        metrics: evaluation figures, e.g. ``{"val_accuracy": 0.93}``.
        data: training data file -> sha256 (see ``file_sha256``).
        summary: one paragraph on what the model does.
        sections: extra Markdown sections for README.md (title -> body), e.g. intended use, limits.
        extra: more JSON fields for the card (e.g. label names, base model).
        code_version: ``git_version()`` taken when training started (None: now). A long run should
            pass it: the checkout may have moved on by the time it saves.

    Raises:
        ValueError: a tensor is not a ``torch.Tensor`` or the config is not JSON-serialisable.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    clean = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        clean[key] = value.detach().cpu().contiguous().clone()
    card = {
        "card_version": CARD_VERSION,
        "name": name,
        "summary": summary,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version if code_version is not None else git_version(),
        "torch": torch.__version__,
        "config": dict(config),
        "metrics": dict(metrics),
        "data": dict(data or {}),
        **dict(extra or {}),
    }
    try:
        card_text = json.dumps(card, indent=2, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"model card of {name!r} is not JSON-serialisable: {err}") from err
    save_file(clean, str(out / WEIGHTS), metadata={"name": name, "card_version": str(CARD_VERSION)})
    (out / CARD_JSON).write_text(card_text + "\n")
    (out / CARD_MD).write_text(_markdown(card, sections or {}))
    return out


def read_card(directory: str | Path) -> dict[str, Any]:
    """The ``model_card.json`` of a checkpoint folder.

    Raises:
        FileNotFoundError: the folder or its card is missing.
        ValueError: the card is not valid JSON.
    """
    path = Path(directory) / CARD_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {CARD_JSON} (not a Fathom checkpoint folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def load_checkpoint(
    directory: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and card of a checkpoint folder written by ``save_checkpoint``.

    Raises:
        FileNotFoundError: the folder, its weights or its card is missing.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS}")
    return load_file(str(weights), device=device), card
