"""A compressed variant of a model and an onnxruntime session behaving like a torch module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.compress.onnx_export import onnx_session


@dataclass
class Variant:
    """One form of a model for a before/after comparison.

    Attributes:
        name: e.g. ``"fp32"``, ``"pruned-30"``, ``"int8-dynamic"``, ``"onnx"``.
        model: what runs it (a module, or an object with the same call signature).
        size_bytes: serialised size (``size_bytes``).
        details: anything else worth reporting (sparsity, exported parts, parity).
    """

    name: str
    model: Any
    size_bytes: int
    details: dict[str, Any] = field(default_factory=dict)


class OnnxModule:
    """Runs an ONNX file with onnxruntime behind a torch-module-like call.

    ``module(*tensors)`` feeds the tensors to the file's inputs in order and returns a float tensor
    (or a tuple of them when the file has several outputs). ``eval()``/``train()`` are no-ops, so
    code that puts a model in eval mode before calling it works unchanged.

    Args:
        path: the ONNX file.
        threads: onnxruntime intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.training = False

    def eval(self) -> OnnxModule:
        return self

    def train(self, mode: bool = True) -> OnnxModule:
        return self

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"{self.path.name} takes {self.input_names}, got {len(inputs)} input(s)")
        feed = {n: t.detach().cpu().numpy() for n, t in zip(self.input_names, inputs, strict=True)}
        out = [torch.from_numpy(a) for a in self.session.run(None, feed)]
        return out[0] if len(out) == 1 else tuple(out)
