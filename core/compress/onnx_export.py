"""ONNX export (``torch.onnx.export``, the dynamo exporter) and a parity check with onnxruntime.

``export_onnx`` wraps the exporter: eval mode, no gradients, dynamic axes by name, and an error that
names the module being traced when the export fails. ``onnx_parity`` runs the file with onnxruntime
on inputs of its own (other shapes than the export's, to exercise the dynamic axes) and returns the
largest absolute difference from the torch model.

``export_friendly`` makes ``core.moe.MoE`` layers traceable: their routed path groups tokens by
expert with host-side offsets (``tolist``), which a graph cannot express, so for the export each
layer computes every expert densely and combines them with the top-k routing weights (zero for the
experts a token was not routed to). Same function, ``E / top_k`` times the expert FLOPs: meant for the
small per-message MoE heads of the apps, not for MoE LLM layers.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class OnnxExportError(RuntimeError):
    """The exporter could not turn a model (or the named part of it) into ONNX."""


def onnx_available() -> tuple[bool, str]:
    """Whether ``onnx``, ``onnxscript`` (the exporter's) and ``onnxruntime`` import, and if not why."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        return False, f"not installed: {', '.join(missing)} (pip install {' '.join(missing)})"
    return True, ""


@contextlib.contextmanager
def _module_stack(model: nn.Module) -> Iterator[tuple[list[tuple[str, str]], list[bool]]]:
    """Hooks recording the ``(qualified name, class)`` of the modules whose forward is running, and
    whether any forward was entered at all."""
    entered = [False]
    stack: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        label = (name or "<root>", type(module).__name__)

        def push(_m: nn.Module, _args: Any, label: tuple[str, str] = label) -> None:
            stack.append(label)
            entered[0] = True

        def pop(_m: nn.Module, _args: Any, _out: Any) -> None:
            if stack:
                stack.pop()

        handles += [module.register_forward_pre_hook(push), module.register_forward_hook(pop)]
    try:
        yield stack, entered
    finally:
        for h in handles:
            h.remove()


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    *,
    opset: int | None = None,
    strip_metadata: bool = True,
) -> Path:
    """Export ``model(*example_inputs)`` to one ONNX file (weights inside) at ``path``.

    Args:
        model: traced in eval mode (restored afterwards) without gradients.
        example_inputs: positional inputs of ``forward``; shapes not named in ``dynamic_axes`` are fixed.
        path: the ``.onnx`` file to write (folders are created).
        input_names, output_names: names of the graph's inputs and outputs, in order.
        dynamic_axes: ``{input name: {axis: symbol}}``, e.g. ``{"x": {0: "batch"}}``; axes that share
            a symbol must be equal at run time.
        opset: ONNX opset (default: the exporter's).
        strip_metadata: drop the exporter's per-node debug metadata (stack traces) from the file.

    Raises:
        ValueError: names do not match the inputs.
        OnnxExportError: the exporter failed; the message names the module being traced when it
            failed (or says the failure came later, translating an op), and the exporter's reason.
        ImportError: onnx / onnxscript are missing (see ``onnx_available``).
    """
    ok, why = onnx_available()
    if not ok:
        raise ImportError(why)
    if len(input_names) != len(example_inputs):
        raise ValueError(f"{len(input_names)} input names for {len(example_inputs)} inputs")
    unknown = set(dynamic_axes or {}) - set(input_names)
    if unknown:
        raise ValueError(
            f"dynamic_axes names unknown input(s) {sorted(unknown)}; inputs are {list(input_names)}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    dynamic_shapes = None
    if dynamic_axes:
        dynamic_shapes = tuple(dict(dynamic_axes.get(n, {})) or None for n in input_names)
        params = inspect.signature(model.forward).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
            dynamic_shapes = (dynamic_shapes,)  # torch.export nests the shapes of ``*args``
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    try:
        with _module_stack(model) as (stack, entered), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_log.setLevel(logging.ERROR)
            try:
                torch.onnx.export(
                    model,
                    tuple(example_inputs),
                    str(path),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_shapes=dynamic_shapes,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    **kwargs,
                )
            except Exception as exc:  # the exporter raises many types; one error with the culprit
                if stack:
                    where = f"in module '{stack[-1][0]}' ({stack[-1][1]})"
                elif entered[0]:
                    where = "after tracing, translating an op to ONNX"
                else:
                    where = "before tracing (check the inputs and dynamic axes)"

                reason = _first_lines(str(exc))
                raise OnnxExportError(
                    f"ONNX export of {type(model).__name__} failed {where}: {type(exc).__name__}: {reason}"
                ) from exc
    finally:
        model.train(was_training)
        onnx_log.setLevel(level)
    if strip_metadata:
        _strip_metadata(path)
    return path


def _strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (source stack traces, module paths) from the file.

    It does not change what the graph computes, and it is most of a small model's file size.
    """
    import onnx

    model = onnx.load(str(path))
    for item in [*model.graph.node, *model.graph.value_info, *model.graph.input, *model.graph.output]:
        del item.metadata_props[:]
        item.doc_string = ""
    onnx.save(model, str(path))


def _first_lines(text: str, n: int = 3, width: int = 500) -> str:
    """The exporter's own summary when it has one (it names the op or the guard), else the first lines."""
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and line.strip() != "⬆️"]
    return " | ".join(lines[:n])[:width]


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``path`` with ``threads`` intra-op threads
    (default: ``torch.get_num_threads()``, so timings compare like with like)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _flat_outputs(out: Any) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().float().cpu().numpy()]
    if isinstance(out, (tuple, list)):
        return [a for item in out for a in _flat_outputs(item)]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__}")


@torch.no_grad()
def onnx_parity(
    model: nn.Module, path: str | Path, inputs: Sequence[torch.Tensor], session: Any | None = None
) -> float:
    """Largest ``|torch - onnxruntime|`` over every output element for ``model(*inputs)``.

    Args:
        model: the torch model the file was exported from (run in eval mode).
        path: the ONNX file.
        inputs: positional inputs, in the order of the file's inputs.
        session: an ``onnx_session`` of ``path`` to reuse.

    Raises:
        ValueError: the file takes another number of inputs, or the outputs differ in number or shape.
    """
    session = session or onnx_session(path)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(inputs):
        raise ValueError(f"{path} takes {len(names)} inputs ({names}), got {len(inputs)}")
    was_training = model.training
    model.eval()
    try:
        expected = _flat_outputs(model(*inputs))
    finally:
        model.train(was_training)
    got = session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs, strict=True)})
    if len(got) != len(expected):
        raise ValueError(f"{path} returns {len(got)} outputs, the model {len(expected)}")
    diff = 0.0
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"output {i}: torch shape {a.shape}, onnxruntime shape {b.shape}")
        if a.size:
            diff = max(diff, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return diff


# --- MoE -------------------------------------------------------------------------------------------------
def _topk_routing(gate: nn.Module, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``Router.route`` (``kernels.moe_routing.moe_routing_ref`` + capacity) without the sort by expert.

    The counting sort only orders slots for the grouped kernels; the dense path does not need it, and
    the exporter has no ONNX form of a stable sort. Returns ``topk_weights`` (T, K) and int64
    ``topk_ids`` (T, K), dropped slots (over capacity) with id E and weight 0.
    """
    cfg = gate.config
    num_tokens, num_experts = logits.shape
    scores = logits.float().softmax(-1) if cfg.scoring == "softmax" else logits.float().sigmoid()  # (T, E)
    bias = gate.e_score_correction_bias
    choice = scores if bias is None else scores + bias.float()
    if cfg.num_groups > 1:
        group_size = num_experts // cfg.num_groups
        grouped = choice.view(num_tokens, cfg.num_groups, group_size)  # (T, G, E/G)
        group_scores = grouped.topk(min(2, group_size), dim=-1).values.sum(-1)  # (T, G)
        best = group_scores.topk(cfg.topk_groups, dim=-1).indices  # (T, topk_groups)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)  # (T, G)
        choice = choice.masked_fill(~keep.repeat_interleave(group_size, dim=1), float("-inf"))
    ids = choice.topk(cfg.top_k, dim=-1).indices  # (T, K)
    weights = scores.gather(1, ids)
    if cfg.renormalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    weights = weights * cfg.routed_scaling_factor
    if cfg.capacity_factor is not None:
        flat_ids = ids.reshape(-1)  # (S,)
        one_hot = F.one_hot(flat_ids, num_experts)  # (S, E)
        position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=1) - 1  # rank of the slot in its expert
        dropped = (position >= gate.capacity(num_tokens)).view_as(ids)
        ids = torch.where(dropped, torch.full_like(ids, num_experts), ids)
        weights = weights.masked_fill(dropped, 0.0)
    return weights, ids


def _dense_moe_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``core.moe.MoE.forward`` without data-dependent shapes: every expert on every token, weighted."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # (T, H)
    logits = self.gate.logits(flat)  # (T, E)
    topk_weights, ids = _topk_routing(self.gate, logits)  # (T, K) each; a dropped slot: id E, weight 0
    w13, w2 = self.experts.w13, self.experts.w2  # (E, 2I, H), (E, H, I)
    flat = flat.to(w13.dtype)
    num_experts, inter = w13.shape[0], w2.shape[2]
    combine = torch.zeros(flat.shape[0], num_experts + 1, dtype=flat.dtype, device=flat.device)
    combine = combine.scatter_add(1, ids, topk_weights.to(flat.dtype))[:, :num_experts]  # (T, E)
    gate_up = torch.einsum("th,efh->etf", flat, w13)  # (E, T, 2I)
    act = F.silu(gate_up[..., :inter]) * gate_up[..., inter:]  # (E, T, I)
    y = torch.einsum("eti,ehi->eth", act, w2)  # (E, T, H)
    out = torch.einsum("te,eth->th", combine, y)  # (T, H)
    if self.shared_experts is not None:
        mlp = self.shared_experts  # its forward may call a C kernel on small batches: spell it out
        shared = mlp.down_proj(F.silu(mlp.gate_proj(flat)) * mlp.up_proj(flat))
        if self.shared_expert_gate is not None:
            shared = torch.sigmoid(self.shared_expert_gate(flat)) * shared
        out = out + shared
    return out.to(x.dtype).reshape(shape)


@contextlib.contextmanager
def export_friendly(model: nn.Module) -> Iterator[int]:
    """Within the block, ``core.moe.MoE`` layers of ``model`` use the dense formulation (see module).

    Yields the number of layers swapped. Only layers of exactly that class are swapped (subclasses
    such as the Hugging Face block adapters have forwards of their own). Outside the block nothing
    changes.
    """
    from core.moe import MoE

    swapped = [m for m in model.modules() if type(m) is MoE]
    for m in swapped:
        m.forward = types.MethodType(_dense_moe_forward, m)
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            del m.forward
