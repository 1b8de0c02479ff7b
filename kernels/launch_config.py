"""Launch parameters for the Triton kernels: tuned tables in ``kernels/configs/<op>.json`` plus a fallback.

Layout of a table (``_``-prefixed keys are comments and provenance, ignored by lookups)::

    {"_comment": "...",
     "NVIDIA_H100_80GB_HBM3": {                 # capabilities.device_name(device)
         "E=8,H=4096,I=14336": {                # shape key, see SHAPE_KEYS
             "16": {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4},
             "512": {...}}}}                    # bucket of M = number of tokens

:func:`get_config` picks the device, then the exact shape key, then the M bucket nearest in log scale. With no
entry it falls back to :func:`heuristic_config`. Under ``TRITON_INTERPRET=1`` it always returns one small
config, since the interpreter ignores warps and stages and is fastest with few, small programs.
Regenerate a table on a GPU with
``python -m kernels.tune --op moe_experts --out kernels/configs/moe_experts.json``.
"""

import functools
import json
import math
from pathlib import Path

import torch

from kernels import capabilities

CONFIG_DIR = Path(__file__).parent / "configs"

# Keys of get_config's shape arguments that select a table entry; "M" (tokens) selects the bucket inside it.
SHAPE_KEYS: dict[str, tuple[str, ...]] = {"moe_experts": ("E", "H", "I"), "moe_routing": ("E",)}

INTERPRETER_CONFIGS: dict[str, dict] = {
    "moe_experts": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 1, "num_stages": 1},
    "moe_routing": {"BLOCK_T": 16, "SORT_BLOCK": 64, "num_warps": 1},
}

DEFAULT_SHARED_MEMORY = 96 * 1024  # fits sm_86/sm_89 (~100 KiB); A100/H100 report more via torch


def shape_key(op: str, **shape: int) -> str:
    """Table key of a shape: ``shape_key("moe_experts", E=8, H=4096, I=14336)`` -> "E=8,H=4096,I=14336"."""
    return ",".join(f"{name}={int(shape[name])}" for name in SHAPE_KEYS[op])


@functools.cache
def load_table(op: str) -> dict:
    """The JSON table of ``op`` (empty when the file does not exist)."""
    path = CONFIG_DIR / f"{op}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def lookup(table: dict, device: str, key: str, m: int) -> dict | None:
    """The entry of ``table[device][key]`` whose M bucket is nearest to ``m`` in log scale, or None."""
    buckets = {b: cfg for b, cfg in table.get(device, {}).get(key, {}).items() if not b.startswith("_")}
    if not buckets:
        return None
    best = min(buckets, key=lambda b: (abs(math.log2(int(b)) - math.log2(max(m, 1))), int(b)))
    return dict(buckets[best])


def heuristic_config(op: str, *, M: int, E: int, topk: int = 2, **_: int) -> dict:
    """Untuned launch parameters from a simple rule.

    moe_experts: rows per expert r = M * topk / E decides the tile; BLOCK_M 16 for r <= 16 (decode: the GEMMs
    are bound by reading weights, so small row tiles and long K tiles), 32 for r <= 64, 64 above.
    moe_routing: a token block holds about 4096 scores (BLOCK_T = 4096 / next_pow2(E), in [1, 64]).
    """
    if op == "moe_experts":
        rows = M * topk / max(E, 1)
        if rows <= 16:
            return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}
        if rows <= 64:
            return {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3}
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
    if op == "moe_routing":
        block_t = max(1, min(64, 4096 // triton_next_power_of_2(E)))
        return {"BLOCK_T": block_t, "SORT_BLOCK": 128, "num_warps": 4}
    raise ValueError(f"unknown op {op!r}; expected one of {sorted(SHAPE_KEYS)}")


def fit_shared_memory(config: dict, element_size: int, budget: int) -> dict:
    """Shrink num_stages, then BLOCK_K, until the pipelined tiles of the gate/up GEMM fit in ``budget`` bytes.

    Estimate: each stage holds one (BLOCK_M, BLOCK_K) tile of x and two (BLOCK_K, BLOCK_N) tiles of w13.
    Tables are tuned for bf16; fp32 inputs double the bytes and would otherwise fail to launch.
    """
    config = dict(config)

    def need(c: dict) -> int:
        return c["num_stages"] * (c["BLOCK_M"] + 2 * c["BLOCK_N"]) * c["BLOCK_K"] * element_size

    while need(config) > budget and config["num_stages"] > 2:
        config["num_stages"] -= 1
    while need(config) > budget and config["BLOCK_K"] > 16:
        config["BLOCK_K"] //= 2
    return config


def get_config(op: str, device: torch.device | str, **shape) -> dict:
    """Launch parameters for ``op`` on ``device``.

    Args:
        op: "moe_experts" or "moe_routing".
        device: where the kernel runs.
        **shape: ``M`` (tokens) and the keys in ``SHAPE_KEYS[op]`` (moe_experts: E, H, I; moe_routing: E);
            moe_experts also takes ``topk`` (for the fallback) and ``dtype`` (to fit shared memory).

    Returns:
        A new dict: moe_experts -> BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages;
        moe_routing -> BLOCK_T, SORT_BLOCK, num_warps.
    """
    if op not in SHAPE_KEYS:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(SHAPE_KEYS)}")
    missing = [k for k in ("M", *SHAPE_KEYS[op]) if k not in shape]
    if missing:
        raise ValueError(f"get_config({op!r}) needs shape arguments {missing}")
    if capabilities.TRITON_INTERPRET:
        return dict(INTERPRETER_CONFIGS[op])
    device = torch.device(device)
    table = load_table(op)
    name = capabilities.device_name(device) if device.type == "cuda" else device.type
    config = lookup(table, name, shape_key(op, **shape), shape["M"])
    if config is None:
        config = heuristic_config(op, **shape)
    if op == "moe_experts":
        dtype = shape.get("dtype", torch.bfloat16)
        config = fit_shared_memory(config, dtype.itemsize, _shared_memory(device))
    return config


def _shared_memory(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "shared_memory_per_block_optin", DEFAULT_SHARED_MEMORY))
    return DEFAULT_SHARED_MEMORY


def triton_next_power_of_2(n: int) -> int:
    """Same as ``triton.next_power_of_2``, here so this module works without triton."""
    return 1 << max(0, int(n) - 1).bit_length()
