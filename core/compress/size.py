"""Serialised size of a model or of a model file."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn


def size_bytes(obj: nn.Module | str | Path) -> int:
    """Bytes a model takes serialised.

    Args:
        obj: a module (its ``state_dict`` saved with ``torch.save``; quantised modules count their
            packed int8 weights) or a file path (its size plus that of an ONNX external-data file
            ``<path>.data`` beside it, when there is one).

    Raises:
        FileNotFoundError: the path does not exist.
        TypeError: neither a module nor a path.
    """
    if isinstance(obj, nn.Module):
        buffer = io.BytesIO()
        torch.save(obj.state_dict(), buffer)
        return buffer.getbuffer().nbytes
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        extra = path.with_name(path.name + ".data")
        return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)
    raise TypeError(f"size_bytes takes an nn.Module or a path, got {type(obj).__name__}")
