"""Model compression: magnitude pruning, int8 dynamic quantisation, ONNX export with a parity check.

Generic over ``nn.Module``; the apps' glue (``apps/*/compress.py``) picks the modules and the
inputs. Typical use::

    report = prune(model, 0.3)                       # L1 unstructured, made permanent
    q = quantize_dynamic_int8(model)                 # a quantised copy: Linear/LSTM weights int8
    quantize_onnx_int8("m.onnx", "m-int8.onnx")      # the same for an ONNX file, with onnxruntime
    export_onnx(model, (x,), "m.onnx", input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
    diff = onnx_parity(model, "m.onnx", (x2,))      # max |torch - onnxruntime| on other inputs
    size_bytes(model), size_bytes("m.onnx")

``export_friendly`` swaps ``core.moe.MoE`` layers to a dense, data-independent formulation for the
duration of an export (the routed path sorts tokens by expert with host-side offsets, which a traced
graph cannot follow).
"""

from core.compress.onnx_export import (
    OnnxExportError,
    export_friendly,
    export_onnx,
    onnx_available,
    onnx_parity,
    onnx_session,
)
from core.compress.pruning import PruneReport, prune, sparsity
from core.compress.quantization import quantize_dynamic_int8, quantize_onnx_int8
from core.compress.size import size_bytes
from core.compress.variants import OnnxModule, Variant

__all__ = [
    "OnnxExportError",
    "OnnxModule",
    "PruneReport",
    "export_friendly",
    "export_onnx",
    "onnx_available",
    "onnx_parity",
    "onnx_session",
    "prune",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
    "size_bytes",
    "sparsity",
    "Variant",
]
