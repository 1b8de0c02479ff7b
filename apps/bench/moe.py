"""``fathom bench moe``: Fathom's MoE layer against every experts implementation of transformers.

Same weights and inputs for all: each case builds one Hugging Face MoE block (Mixtral for the
Mixtral-like config, DeepSeek-V3 for the fine-grained one), initialises it, and builds Fathom's
layer from it with ``core.moe.hf.from_hf_block``. Every implementation the installed transformers
registers for its experts (``eager`` plus ``ALL_EXPERTS_FUNCTIONS``: grouped_mm, batched_mm, ...)
runs on the same input; rows report median/p95 ms, ``ratio`` (Fathom / that row) and the max
absolute difference of outputs. On CUDA, rows also carry TFLOP/s, the fraction of a dense bf16
matmul of the same FLOPs timed in the same run, and GB/s of expert weights read at 16 tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from apps.bench.common import CacheFlusher, Report, time_fn, time_interleaved
from core.moe.hf import from_hf_block

CPU_SPEEDUP_SMALL = 1.4  # issue target: 1.4x faster than the fastest HF implementation at 16 tokens
CUDA_SPEEDUP_4096 = 1.5  # 1.5x faster than HF grouped_mm at 4096 tokens on an H100/H200
CUDA_DENSE_FRACTION = 0.6


@dataclass(frozen=True)
class BenchCase:
    name: str
    family: str  # "mixtral" or "deepseek_v3"
    hidden: int
    ffn: int
    experts: int
    top_k: int
    shared: int = 0


FULL_CASES = (
    BenchCase("mixtral-like", "mixtral", hidden=1024, ffn=2048, experts=8, top_k=2),
    BenchCase("fine-grained", "deepseek_v3", hidden=1024, ffn=512, experts=64, top_k=6, shared=2),
)
QUICK_CASES = (
    BenchCase("mixtral-like", "mixtral", hidden=64, ffn=96, experts=8, top_k=2),
    BenchCase("fine-grained", "deepseek_v3", hidden=64, ffn=32, experts=16, top_k=4, shared=2),
)
FULL_TOKENS = (16, 512, 4096)
QUICK_TOKENS = (4, 32)


def build_hf_block(case: BenchCase, seed: int = 0) -> torch.nn.Module:
    """An initialised Hugging Face MoE block for ``case`` (expert weights are torch.empty in HF)."""
    if case.family == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        cfg: Any = MixtralConfig(
            hidden_size=case.hidden,
            intermediate_size=case.ffn,
            num_local_experts=case.experts,
            num_experts_per_tok=case.top_k,
        )
        block_cls: Callable[[Any], torch.nn.Module] = MixtralSparseMoeBlock
    elif case.family == "deepseek_v3":
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        groups = 8 if case.experts % 8 == 0 and case.experts >= 16 else 1
        cfg = DeepseekV3Config(
            hidden_size=case.hidden,
            moe_intermediate_size=case.ffn,
            n_routed_experts=case.experts,
            num_experts_per_tok=case.top_k,
            n_shared_experts=case.shared,
            n_group=groups,
            topk_group=max(1, groups // 2),
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
        )
        block_cls = DeepseekV3MoE
    else:
        raise ValueError(f"unknown benchmark family {case.family!r}")
    cfg._experts_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    block = block_cls(cfg)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        for name, b in block.named_buffers():
            if "bias" in name:
                b.copy_(torch.randn(b.shape, generator=gen) * 0.01)
    return block.eval()


def hf_experts_implementations() -> list[str]:
    """Every experts implementation the installed transformers registers, eager first."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return ["eager"]
    return ["eager", *sorted(ALL_EXPERTS_FUNCTIONS.keys())]


def _set_impl(block: Any, impl: str) -> None:
    block.experts.config._experts_implementation = impl


def _run_impl(block: torch.nn.Module, impl: str, x: torch.Tensor) -> torch.Tensor:
    # The implementations share one block (same weights); choosing one is an attribute write.
    _set_impl(block, impl)
    return block(x)


def _batched_mm_bytes(case: BenchCase, tokens: int, dtype: torch.dtype) -> int:
    # batched_mm gathers a full copy of the expert weights for every (token, expert) slot.
    per_slot = 3 * case.ffn * case.hidden * torch.finfo(dtype).bits // 8
    return tokens * case.top_k * per_slot


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def moe_flops(case: BenchCase, tokens: int) -> float:
    """Multiply-adds x 2 of the routed and shared experts (the router is negligible)."""
    routed = tokens * case.top_k * 6 * case.hidden * case.ffn
    shared = tokens * 6 * case.hidden * case.ffn * case.shared
    return float(routed + shared)


def _dense_matmul_ms(case: BenchCase, tokens: int, device: str, dtype: torch.dtype) -> float:
    """Time dense GEMMs of the same shapes and FLOPs as the MoE (no routing, no gather)."""
    rows = tokens * (case.top_k + case.shared)  # a shared MLP of width shared*I costs `shared` experts
    a = torch.randn(rows, case.hidden, device=device, dtype=dtype)
    w1 = torch.randn(case.hidden, 2 * case.ffn, device=device, dtype=dtype)
    w2 = torch.randn(case.ffn, case.hidden, device=device, dtype=dtype)

    def dense() -> None:
        h = a @ w1  # (rows, 2I)
        h[:, : case.ffn] @ w2  # (rows, H)

    return time_fn(dense, device=device).median_ms


def throughput_metrics(
    case: BenchCase,
    tokens: int,
    median_ms: float,
    expert_offsets: torch.Tensor,
    device: str,
    dtype: torch.dtype,
    weight_traffic: bool = False,
) -> dict[str, float]:
    """TFLOP/s, the fraction of a dense matmul of the same FLOPs (timed now, same device and dtype),
    and, with ``weight_traffic``, GB/s of the active experts' weights (the decode-regime figure)."""
    seconds = median_ms * 1e-3
    dense_ms = _dense_matmul_ms(case, tokens, device, dtype)
    metrics = {
        "tflops": round(moe_flops(case, tokens) / seconds / 1e12, 3),
        "dense_matmul_fraction": round(dense_ms / median_ms, 4),
    }
    if weight_traffic:
        active = int(torch.diff(expert_offsets.long()).gt(0).sum())
        weight_bytes = active * 3 * case.ffn * case.hidden * torch.finfo(dtype).bits // 8
        metrics["expert_weight_gbps"] = round(weight_bytes / seconds / 1e9, 1)
    return metrics


def run(
    device: str = "cpu",
    tokens: Sequence[int] | None = None,
    quick: bool = False,
    impls: Sequence[str] | None = None,
    budget_s: float = 2.0,
    progress: Callable[[str], None] | None = None,
    flush_cache: bool = False,
) -> Report:
    """Run the MoE benchmark and return its report (see the module docstring)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    cases = QUICK_CASES if quick else FULL_CASES
    tokens = tuple(tokens or (QUICK_TOKENS if quick else FULL_TOKENS))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    hf_impls = list(impls) if impls else hf_experts_implementations()
    report = Report("moe", device)
    # Cold caches only matter on the CPU, where a 260 MB L3 can hold a whole benchmark layer.
    flusher = CacheFlusher() if flush_cache and not device.startswith("cuda") else None
    report.settings["cpu_caches"] = "flushed before each timed call" if flusher else "warm"
    say = progress or (lambda _msg: None)
    ratios: dict[tuple[str, int], dict[str, float]] = {}
    dense_fraction: dict[tuple[str, int], float] = {}

    for case in cases:
        block = build_hf_block(case).to(device=device, dtype=dtype)
        ours = from_hf_block(block, backend="auto").eval()
        for n_tok in tokens:
            label = f"{case.name}/tokens={n_tok}"
            gen = torch.Generator().manual_seed(n_tok)
            x = torch.randn(1, n_tok, case.hidden, generator=gen).to(device=device, dtype=dtype)
            say(f"{label}: fathom ({ours.backend}) and Hugging Face {', '.join(hf_impls)}")
            fns: dict[str, Callable[[], torch.Tensor]] = {"fathom": functools.partial(ours, x)}
            skipped: dict[str, str] = {}
            with torch.inference_mode():
                outputs = {"fathom": ours(x)}
                for impl in hf_impls:
                    if (
                        impl == "batched_mm"
                        and _batched_mm_bytes(case, n_tok, dtype) > _available_bytes() // 3
                    ):
                        need = _batched_mm_bytes(case, n_tok, dtype) / 2**30
                        skipped[impl] = f"would gather {need:.1f} GiB of per-slot expert weights"
                        continue
                    fn = functools.partial(_run_impl, block, impl, x)
                    try:
                        outputs[impl] = fn()
                    except Exception as exc:  # an implementation that needs other hardware or packages
                        skipped[impl] = f"{type(exc).__name__}: {exc}"[:200]
                        continue
                    fns[f"hf-{impl}"] = fn
                timings = time_interleaved(fns, device=device, budget_s=budget_s, before_each=flusher)
            t_ours = timings["fathom"]
            row = report.add_result(
                label, "fathom", median_ms=round(t_ours.median_ms, 4), p95_ms=round(t_ours.p95_ms, 4)
            )
            if device.startswith("cuda"):
                routing = ours._last_routing
                assert routing is not None  # ours ran above
                metrics = throughput_metrics(
                    case, n_tok, t_ours.median_ms, routing.expert_offsets, device, dtype,
                    weight_traffic=n_tok == min(tokens),
                )  # fmt: skip
                row.update(metrics)
                dense_fraction[(case.name, n_tok)] = metrics["dense_matmul_fraction"]
            ratios[(case.name, n_tok)] = {}
            for impl in hf_impls:
                if impl in skipped:
                    report.add_result(label, f"hf-{impl}", skipped=skipped[impl])
                    continue
                t = timings[f"hf-{impl}"]
                ratio = t_ours.median_ms / t.median_ms
                ratios[(case.name, n_tok)][impl] = ratio
                report.add_result(
                    label,
                    f"hf-{impl}",
                    median_ms=round(t.median_ms, 4),
                    p95_ms=round(t.p95_ms, 4),
                    ratio=round(ratio, 4),
                    max_abs_diff=float((outputs["fathom"].float() - outputs[impl].float()).abs().max()),
                )
            _set_impl(block, "eager")

    _add_targets(report, device, cases, tokens, ratios, dense_fraction)
    return report


def _add_targets(
    report: Report,
    device: str,
    cases: Sequence[BenchCase],
    tokens: Sequence[int],
    ratios: dict[tuple[str, int], dict[str, float]],
    dense_fraction: dict[tuple[str, int], float],
) -> None:
    on_cuda = device.startswith("cuda")
    small, large = min(tokens), max(tokens)
    for case in cases:
        for n_tok in tokens:
            target = 1.0 / CPU_SPEEDUP_SMALL if n_tok == small else 1.0
            name = f"cpu {case.name} tokens={n_tok}: fathom / fastest Hugging Face time"
            measured = ratios.get((case.name, n_tok), {})
            if on_cuda:
                report.add_target(
                    name, None, target, "lower", reason="CPU targets are measured with --device cpu"
                )
            elif not measured:
                report.add_target(name, None, target, "lower", reason="no Hugging Face implementation ran")
            else:
                report.add_target(name, round(max(measured.values()), 4), target, "lower")
        name = f"cuda {case.name} tokens={large}: fathom / Hugging Face grouped_mm time"
        grouped = ratios.get((case.name, large), {}).get("grouped_mm")
        reason = None if on_cuda else "no CUDA device in this run (H100/H200 target)"
        if on_cuda and grouped is None:
            reason = "Hugging Face grouped_mm did not run"
        report.add_target(
            name,
            None if grouped is None or not on_cuda else round(grouped, 4),
            1 / CUDA_SPEEDUP_4096,
            "lower",
            reason=reason,
        )
        name = f"cuda {case.name} tokens={large}: fraction of dense bf16 matmul throughput"
        frac = dense_fraction.get((case.name, large))
        report.add_target(
            name,
            None if frac is None else round(frac, 4),
            CUDA_DENSE_FRACTION,
            "higher",
            reason=None if frac is not None else "no CUDA device in this run (H100/H200 target)",
        )
