"""Post-training int8 dynamic quantisation (weights int8, activations quantised per batch at run time)."""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM)


def quantize_dynamic_int8(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    *,
    exclude: Sequence[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (CPU, eval mode) whose ``types`` layers hold int8 weights.

    Uses ``torch.ao.quantization.quantize_dynamic``. Only modules of exactly these classes are
    swapped (``nn.Linear``, ``nn.LSTM`` by default); anything else, e.g. weights kept as bare
    ``nn.Parameter`` such as grouped MoE experts, embeddings and layer norms, stays fp32.

    Args:
        model: the fp32 model; not changed unless ``inplace``.
        types: module classes to quantise.
        exclude: qualified names of submodules to keep fp32 (e.g. one whose forward reads
            ``layer.weight`` as a tensor, which a quantised Linear does not have).
        inplace: quantise ``model`` itself.

    Raises:
        ValueError: ``model`` has parameters on a non-CPU device (the int8 kernels are CPU only), no
            module of ``types``, or an ``exclude`` name that is not a submodule.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 dynamic quantisation runs on CPU; the model is on {sorted(devices)}")
    if not any(type(m) in types for m in model.modules()):
        names = ", ".join(t.__name__ for t in types)
        raise ValueError(f"{type(model).__name__} has no {names} layer to quantise")
    named = dict(model.named_modules())
    unknown = [n for n in exclude if n not in named or not n]
    if unknown:
        raise ValueError(f"{type(model).__name__} has no submodule(s) {unknown} to exclude")
    kept = {n: copy.deepcopy(named[n]) for n in exclude}
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine == "none" and engines:
        torch.backends.quantized.engine = next(e for e in ("x86", "fbgemm", "qnnpack") if e in engines)
    with warnings.catch_warnings():
        # torch.ao.quantization and quantised tensor creation are deprecated in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(
            target, set(types), dtype=torch.qint8, inplace=True
        )
    for name, module in kept.items():
        parent, _, child = name.rpartition(".")
        setattr(quantized.get_submodule(parent), child, module)
    return quantized


def quantize_onnx_int8(path: str | Path, out_path: str | Path) -> Path:
    """An int8 copy of an ONNX file: onnxruntime's dynamic quantisation (weights int8 per tensor).

    ``onnxruntime.quantization.quantize_dynamic`` with ``QInt8`` weights: MatMul/Gemm, LSTM, Gather
    (embeddings) and attention weights as the runtime supports them; activations are quantised per
    batch at run time, as with ``quantize_dynamic_int8``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: onnxruntime is not installed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path, out_path = Path(path), Path(out_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # its advice to run shape inference first, logged on the root logger
    try:
        quantize_dynamic(str(path), str(out_path), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    return out_path
