"""Time candidate launch parameters on a CUDA GPU and write the best into ``kernels/configs/<op>.json``.

    python -m kernels.tune --op moe_experts --out kernels/configs/moe_experts.json
    python -m kernels.tune --op moe_routing --out kernels/configs/moe_routing.json --shape E=256,topk=8
    python -m kernels.tune --op moe_experts --shape E=8,H=4096,I=14336,topk=2 --batch-sizes 1,64,4096 --quick

For each shape and token count M it builds random inputs, checks every candidate against the torch reference
(wrong or unlaunchable candidates are skipped), times the rest with ``triton.testing.do_bench`` and stores the
fastest under this GPU's name (``capabilities.device_name``), keeping other devices' entries. Exits with a
message, changing nothing, where there is no CUDA GPU.

    python -m kernels.tune --compile-only --arch 80 --arch 90

compiles every kernel for the given CUDA architectures with Triton's bundled ptxas and needs no GPU: the
check a CPU-only CI can make that the compiled path still lowers (the interpreter accepts more than the
compiler). Run it with TRITON_INTERPRET unset.
"""

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch

from kernels import capabilities
from kernels.launch_config import CONFIG_DIR, SHAPE_KEYS, shape_key, triton_next_power_of_2

DEFAULT_SHAPES = {  # shapes of common checkpoints (unsharded), with their top-k
    "moe_experts": [
        dict(E=8, H=4096, I=14336, topk=2),  # Mixtral-8x7B
        dict(E=64, H=2048, I=1024, topk=8),  # OLMoE-1B-7B
        dict(E=128, H=2048, I=768, topk=8),  # Qwen3-30B-A3B
        dict(E=256, H=7168, I=2048, topk=8),  # DeepSeek-V3
    ],
    "moe_routing": [dict(E=8, topk=2), dict(E=64, topk=8), dict(E=128, topk=8), dict(E=256, topk=8)],
}
DEFAULT_BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)


def candidates(op: str, shape: dict, m: int, quick: bool) -> list[dict]:
    """The launch parameters to try for one shape and token count."""
    if op == "moe_routing":
        return [
            {"BLOCK_T": bt, "SORT_BLOCK": sb, "num_warps": w}
            for bt, sb, w in itertools.product((1, 2, 4, 8, 16, 32, 64), (64, 128, 256), (1, 2, 4, 8))
        ]
    rows = max(16, triton_next_power_of_2(-(-m * shape["topk"] // shape["E"])))
    space = itertools.product(
        (16, 32, 64, 128),
        (64, 128) if quick else (32, 64, 128, 256),
        (64, 128) if quick else (32, 64, 128, 256),
        (4, 8),
        (3, 4) if quick else (2, 3, 4, 5),
    )
    return [
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": w, "num_stages": s}
        for bm, bn, bk, w, s in space
        if bm <= rows  # taller row tiles than an expert's rows only add padding
    ]


def _inputs(op: str, shape: dict, m: int, dtype: torch.dtype):
    from kernels.moe_routing import moe_routing_ref

    gen = torch.Generator(device="cuda").manual_seed(0)
    e, topk = shape["E"], shape["topk"]
    logits = torch.randn(m, e, device="cuda", generator=gen)
    if op == "moe_routing":
        return (logits, topk)
    h, i = shape["H"], shape["I"]
    x = torch.randn(m, h, device="cuda", dtype=dtype, generator=gen)
    w13 = torch.randn(e, 2 * i, h, device="cuda", dtype=dtype, generator=gen) / h**0.5
    w2 = torch.randn(e, h, i, device="cuda", dtype=dtype, generator=gen) / i**0.5
    r = moe_routing_ref(logits, topk)
    return (x, w13, w2, r.topk_weights, r.sorted_slots, r.expert_offsets)


def tune_one(op: str, shape: dict, m: int, dtype: torch.dtype, quick: bool) -> tuple[dict, float] | None:
    """Best (config, milliseconds) for one shape and token count, or None when no candidate ran."""
    import triton.testing

    from kernels.moe_experts import moe_experts, moe_experts_ref
    from kernels.moe_routing import moe_routing, moe_routing_ref

    fn, ref = (moe_experts, moe_experts_ref) if op == "moe_experts" else (moe_routing, moe_routing_ref)
    args = _inputs(op, shape, m, dtype)
    expected = ref(*args)
    best = None
    for config in candidates(op, shape, m, quick):
        try:
            got = fn(*args, config=config)
            if op == "moe_experts":
                torch.testing.assert_close(got.float(), expected.float(), atol=5e-2, rtol=5e-2)
            else:
                torch.testing.assert_close(got.topk_weights, expected.topk_weights)
            ms = triton.testing.do_bench(lambda c=config: fn(*args, config=c), warmup=5, rep=25)
        except Exception as err:  # out of shared memory / registers, or a wrong result: not a candidate
            first_line = (str(err).splitlines() or [""])[0][:120]
            print(f"  skip {config}: {type(err).__name__}: {first_line}")
            continue
        if best is None or ms < best[1]:
            best = (config, ms)
    return best


def format_table(table: dict) -> str:
    """JSON with one launch config per line, so diffs of a retuned table stay readable."""
    lines = ["{"]
    for i, (dev, per_dev) in enumerate(table.items()):
        end = "," if i < len(table) - 1 else ""
        if not isinstance(per_dev, dict):
            lines.append(f"  {json.dumps(dev)}: {json.dumps(per_dev)}{end}")
            continue
        lines.append(f"  {json.dumps(dev)}: {{")
        for j, (key, buckets) in enumerate(per_dev.items()):
            end_j = "," if j < len(per_dev) - 1 else ""
            if not isinstance(buckets, dict):
                lines.append(f"    {json.dumps(key)}: {json.dumps(buckets)}{end_j}")
                continue
            lines.append(f"    {json.dumps(key)}: {{")
            for k, (m, cfg) in enumerate(buckets.items()):
                lines.append(f"      {json.dumps(m)}: {json.dumps(cfg)}{',' if k < len(buckets) - 1 else ''}")
            lines.append(f"    }}{end_j}")
        lines.append(f"  }}{end}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def compile_check(arch: int) -> list[str]:
    """Compile each kernel for sm_<arch> with representative launch parameters; one line per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import moe_experts, moe_routing

    target = GPUTarget("cuda", arch, 32)
    routing = [  # DeepSeek-V3 (sigmoid, bias, 8 groups), Mixtral (softmax, one group)
        dict(GROUP_SIZE=32, NUM_GROUPS=8, TOPK_GROUPS=4, TOP_K=8, SIGMOID=True, HAS_BIAS=True,
             RENORMALIZE=True, BLOCK_T=16, BLOCK_G=8, BLOCK_GS=32, BLOCK_K=8),
        dict(GROUP_SIZE=8, NUM_GROUPS=1, TOPK_GROUPS=1, TOP_K=2, SIGMOID=False, HAS_BIAS=False,
             RENORMALIZE=True, BLOCK_T=64, BLOCK_G=1, BLOCK_GS=8, BLOCK_K=2),
    ]  # fmt: skip
    jobs = [
        (moe_routing._moe_routing_kernel, {"logits_ptr": "bf16", "bias_ptr": "fp32"}, c, 4, 1)
        for c in routing
    ]
    jobs += [(fn, {}, {"BLOCK": 128}, 4, 1) for fn in (moe_routing._expert_histogram_kernel,
                                                       moe_routing._expert_scatter_kernel)]  # fmt: skip
    tiles = [dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128), dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)]
    for dtype, tile in [("bf16", tiles[0]), ("bf16", tiles[1]), ("fp16", tiles[1]), ("fp32", tiles[1])]:
        ptrs = {n: dtype for n in ("x_ptr", "w13_ptr", "w2_ptr", "inter_ptr")}
        ptrs |= {"out_ptr": "fp32", "topk_weights_ptr": "fp32"}
        const = dict(UPCAST=False, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", **tile)
        jobs.append((moe_experts._moe_gate_up_kernel, ptrs, dict(const, TOP_K=2), 8, 3))
        jobs.append((moe_experts._moe_down_kernel, ptrs, const, 8, 3))
    lines = []
    for fn, ptrs, const, num_warps, num_stages in jobs:
        names = fn.arg_names
        sig = {
            n: "constexpr" if n in const else "*" + ptrs.get(n, "i32") if n.endswith("_ptr") else
            "fp32" if n == "scaling_factor" else "i32"
            for n in names
        }  # fmt: skip
        src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
        kernel = triton.compile(
            src, target=target, options={"num_warps": num_warps, "num_stages": num_stages}
        )
        lines.append(f"sm_{arch} {fn.__name__} {ptrs.get('x_ptr', '')} ok, {kernel.metadata.shared} B shared")
    return lines


def parse_shape(op: str, text: str) -> dict:
    shape = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    missing = [k for k in (*SHAPE_KEYS[op], "topk") if k not in shape]
    if missing:
        raise ValueError(f"--shape {text!r} lacks {missing}")
    return shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kernels.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", choices=sorted(SHAPE_KEYS))
    parser.add_argument("--out", type=Path, help="JSON table to update (default kernels/configs/<op>.json)")
    parser.add_argument("--shape", action="append", help="e.g. E=8,H=4096,I=14336,topk=2 (repeatable)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="a smaller candidate set")
    parser.add_argument("--compile-only", action="store_true", help="compile for --arch, no GPU needed")
    parser.add_argument("--arch", type=int, action="append", help="CUDA arch for --compile-only (e.g. 90)")
    args = parser.parse_args(argv)

    if args.compile_only:
        if capabilities.TRITON_INTERPRET or not capabilities.HAS_TRITON:
            sys.exit("kernels.tune --compile-only needs triton installed and TRITON_INTERPRET unset.")
        for arch in args.arch or [80, 90]:
            print("\n".join(compile_check(arch)), flush=True)
        return
    if args.op is None:
        parser.error("--op is required (or --compile-only)")

    if capabilities.TRITON_INTERPRET:
        sys.exit(
            "kernels.tune: TRITON_INTERPRET=1 is set; timings under the interpreter mean nothing. Unset it."
        )
    if not torch.cuda.is_available():
        sys.exit("kernels.tune times kernels on a CUDA GPU and none is available here; nothing was changed.")
    ok, reason = capabilities.triton_status("cuda")
    if not ok:
        sys.exit(f"kernels.tune: the Triton kernels cannot run here: {reason}; nothing was changed.")

    out = args.out or CONFIG_DIR / f"{args.op}.json"
    try:
        shapes = [parse_shape(args.op, s) for s in args.shape] if args.shape else DEFAULT_SHAPES[args.op]
    except ValueError as err:
        parser.error(str(err))
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    dtype = getattr(torch, args.dtype)
    table = json.loads(out.read_text()) if out.exists() else {}
    dev = capabilities.device_name("cuda")
    per_dev = table.setdefault(dev, {})
    source = (
        f"measured by kernels.tune on {datetime.date.today()}, dtype {args.dtype}, "
        f"torch {torch.__version__}, triton {capabilities.triton.__version__}"
    )
    for shape in shapes:
        key = shape_key(args.op, **shape)
        for m in batch_sizes:
            print(f"{args.op} {dev} {key} topk={shape['topk']} M={m} ...", flush=True)
            best = tune_one(args.op, shape, m, dtype, args.quick)
            if best is None:
                print("  no candidate ran; keeping the old entry")
                continue
            print(f"  best {best[0]} {best[1] * 1e3:.1f} us")
            buckets = per_dev.setdefault(key, {})
            buckets.pop("_source", None)  # re-added last, so it follows the buckets in the file
            buckets[str(m)] = best[0]
            buckets["_source"] = source
            out.write_text(format_table(table))  # after every bucket: a long run that dies keeps its results
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
