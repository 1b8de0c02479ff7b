"""kernels.launch_config: lookup, fallback, shared-memory fit, the shipped JSON; kernels.tune off-GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import capabilities, launch_config
from kernels.launch_config import (
    CONFIG_DIR,
    INTERPRETER_CONFIGS,
    fit_shared_memory,
    get_config,
    heuristic_config,
    lookup,
    shape_key,
)

ROOT = Path(__file__).resolve().parents[2]
EXPERTS_KEYS = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}
ROUTING_KEYS = {"BLOCK_T", "SORT_BLOCK", "num_warps"}
TABLE = {
    "_comment": "test",
    "GPU_X": {
        "E=8,H=64,I=32": {
            "16": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2},
            "1024": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 3},
            "_source": "test",
        }
    },
}


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@pytest.mark.parametrize("op, keys", [("moe_experts", EXPERTS_KEYS), ("moe_routing", ROUTING_KEYS)])
def test_shipped_tables_are_well_formed(op, keys):
    table = json.loads((CONFIG_DIR / f"{op}.json").read_text())
    assert "HEURISTIC" in table["_comment"] and "kernels.tune" in table["_comment"]
    devices = [d for d in table if not d.startswith("_")]
    assert {"NVIDIA_H100_80GB_HBM3", "NVIDIA_H200"} <= set(devices)
    for dev in devices:
        for key, buckets in table[dev].items():
            assert key == shape_key(op, **{k: int(v) for k, v in (p.split("=") for p in key.split(","))})
            for m, cfg in buckets.items():
                if m.startswith("_"):
                    continue
                assert int(m) > 0 and set(cfg) == keys, (dev, key, m)
                assert all(_is_pow2(v) for v in cfg.values()), (dev, key, m, cfg)


def test_lookup_nearest_bucket_in_log_scale():
    assert lookup(TABLE, "GPU_X", "E=8,H=64,I=32", 1)["BLOCK_M"] == 16
    assert lookup(TABLE, "GPU_X", "E=8,H=64,I=32", 100)["BLOCK_M"] == 16  # log2: 100 is nearer 16 than 1024
    assert lookup(TABLE, "GPU_X", "E=8,H=64,I=32", 200)["BLOCK_M"] == 64
    assert lookup(TABLE, "GPU_X", "E=8,H=64,I=32", 10**6)["BLOCK_M"] == 64
    assert lookup(TABLE, "GPU_Y", "E=8,H=64,I=32", 16) is None
    assert lookup(TABLE, "GPU_X", "E=4,H=64,I=32", 16) is None


def test_get_config_uses_table_then_heuristic(monkeypatch):
    monkeypatch.setattr(capabilities, "TRITON_INTERPRET", False)
    monkeypatch.setattr(launch_config, "load_table", lambda op: TABLE)
    monkeypatch.setattr(capabilities, "device_name", lambda device: "GPU_X")
    monkeypatch.setattr(launch_config, "_shared_memory", lambda device: 228 * 1024)
    cfg = get_config("moe_experts", "cuda", M=2000, E=8, H=64, I=32)
    assert cfg == TABLE["GPU_X"]["E=8,H=64,I=32"]["1024"]
    cfg["BLOCK_M"] = 1  # a copy: the table is untouched
    assert TABLE["GPU_X"]["E=8,H=64,I=32"]["1024"]["BLOCK_M"] == 64
    cfg = get_config("moe_experts", "cuda", M=2000, E=8, H=128, I=32, topk=2)
    assert cfg == heuristic_config("moe_experts", M=2000, E=8, topk=2)


def test_heuristic_rule():
    small = heuristic_config("moe_experts", M=1, E=8, topk=2)
    mid = heuristic_config("moe_experts", M=128, E=8, topk=2)  # 32 rows per expert
    big = heuristic_config("moe_experts", M=4096, E=8, topk=2)
    assert (small["BLOCK_M"], mid["BLOCK_M"], big["BLOCK_M"]) == (16, 32, 64)
    assert heuristic_config("moe_routing", M=10, E=8)["BLOCK_T"] == 64
    assert heuristic_config("moe_routing", M=10, E=256)["BLOCK_T"] == 16
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        heuristic_config("nope", M=1, E=1)


def test_fit_shared_memory_shrinks_for_fp32():
    cfg = {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4}
    assert fit_shared_memory(cfg, 2, 228 * 1024) == cfg  # 4 * (64 + 256) * 64 * 2 = 160 KiB fits
    fp32 = fit_shared_memory(cfg, 4, 228 * 1024)
    assert fp32["num_stages"] == 2 and fp32["BLOCK_K"] == 64
    tiny = fit_shared_memory(cfg, 4, 96 * 1024)
    assert tiny["num_stages"] == 2 and tiny["BLOCK_K"] == 32


def test_interpreter_gets_one_small_config(monkeypatch):
    monkeypatch.setattr(capabilities, "TRITON_INTERPRET", True)
    assert (
        get_config("moe_experts", "cpu", M=4096, E=8, H=4096, I=14336) == INTERPRETER_CONFIGS["moe_experts"]
    )
    assert get_config("moe_routing", "cpu", M=4096, E=256) == INTERPRETER_CONFIGS["moe_routing"]


def test_get_config_errors():
    with pytest.raises(ValueError, match="unknown op 'conv'"):
        get_config("conv", "cpu", M=1)
    with pytest.raises(ValueError, match=r"needs shape arguments \['H', 'I'\]"):
        get_config("moe_experts", "cpu", M=1, E=8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no CUDA")
def test_tune_exits_clearly_without_cuda(tmp_path, monkeypatch):
    from kernels import tune

    out = tmp_path / "t.json"
    for interpret, match in ((True, "TRITON_INTERPRET=1"), (False, "CUDA GPU")):
        monkeypatch.setattr(capabilities, "TRITON_INTERPRET", interpret)
        with pytest.raises(SystemExit) as exc:
            tune.main(["--op", "moe_experts", "--out", str(out)])
        assert match in str(exc.value.code)
    assert not out.exists()


def test_tune_helpers():
    from kernels import tune

    cands = tune.candidates("moe_experts", dict(E=8, H=64, I=32, topk=2), 4, quick=True)
    assert cands and all(c["BLOCK_M"] == 16 for c in cands)  # 1 row per expert: no taller tiles
    assert tune.parse_shape("moe_experts", "E=8,H=64,I=32,topk=2") == dict(E=8, H=64, I=32, topk=2)
    with pytest.raises(ValueError, match="lacks"):
        tune.parse_shape("moe_experts", "E=8,H=64")
    text = tune.format_table(TABLE)
    assert json.loads(text) == TABLE


@pytest.mark.slow
@pytest.mark.skipif(not capabilities.HAS_TRITON, reason="needs triton")
def test_kernels_compile_for_sm90_without_a_gpu():
    # The interpreter accepts code the compiler rejects: lower every kernel to sm_90 cubins with the ptxas
    # shipped in the triton wheel. A subprocess, because TRITON_INTERPRET is fixed when triton is imported.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "kernels.tune", "--compile-only", "--arch", "90"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(" ok, ") == 12, proc.stdout
