"""The C decode kernel computes exactly moe_experts_ref, and says clearly when it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernels import moe_experts_cpu as mod
from kernels.moe_experts import moe_experts_ref
from kernels.moe_experts_cpu import cpu_kernel_status, moe_experts_cpu
from kernels.moe_routing import sort_by_expert_ref
from tests.kernels.test_moe_experts import _problem as triton_problem

_LIB, _WHY = mod._load()
needs_kernel = pytest.mark.skipif(_LIB is None, reason=f"C kernel unavailable: {_WHY}")


def _problem(**case):
    """fp32 CPU problems, built like the Triton parity tests' (same routing, drops, empty experts)."""
    args, _ = triton_problem(**case, dtype=torch.float32, device="cpu")
    return args


CASES = {
    "odd": dict(t=37, h=48, i=40, e=5, k=2),
    "no_simd_width": dict(t=9, h=13, i=7, e=3, k=2),  # H, I below one 16-lane vector
    "one_token": dict(t=1, h=64, i=40, e=5, k=2),
    "many_rows_per_expert": dict(t=61, h=48, i=40, e=2, k=2),  # > 8 rows: several register blocks
    "empty_expert": dict(t=19, h=32, i=24, e=4, k=2, empty_expert=True),
    "dropped_slots": dict(t=23, h=32, i=24, e=4, k=3, drop_every=4),
}


@needs_kernel
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_the_reference(case: str) -> None:
    args = _problem(**CASES[case])
    torch.testing.assert_close(moe_experts_cpu(*args), moe_experts_ref(*args), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_all_slots_dropped_gives_zeros() -> None:
    x, w13, w2, weights, _, _ = _problem(t=5, h=32, i=16, e=3, k=2)
    ids = torch.full((5, 2), 3)
    sorted_slots, offsets = sort_by_expert_ref(ids, 3)
    assert moe_experts_cpu(x, w13, w2, weights, sorted_slots, offsets).abs().sum() == 0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: (a[0].bfloat16(), *a[1:]), "fp32 CPU tensors, x is torch.bfloat16"),
        (
            lambda a: (a[0], a[1], a[2][:, :, :-1], *a[3:]),
            r"w2 has shape \(5, 48, 39\) but expected \(E, H, I\)",
        ),
        (lambda a: (*a[:5], a[5][:-1]), r"expected \(E\+1,\) = \(6,\)"),
        (lambda a: (a[0][:-1], *a[1:]), r"expected \(T, K\) with T=36"),
    ],
)
def test_bad_arguments_name_the_problem(mutate, match) -> None:
    args = _problem(**CASES["odd"])
    with pytest.raises(ValueError, match=match):
        moe_experts_cpu(*mutate(args))


def test_status_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FATHOM_CPU_KERNEL", "0")
    assert cpu_kernel_status() == (False, "disabled by FATHOM_CPU_KERNEL=0")


def test_a_broken_compiler_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    mod._load.cache_clear()
    try:
        ok, why = cpu_kernel_status()
        assert not ok and ("compiling moe_experts_cpu.c failed" in why or "x86-64" in why)
        with pytest.raises(RuntimeError, match="moe_experts_cpu is unavailable"):
            moe_experts_cpu(*_problem(**CASES["odd"]))
    finally:
        mod._load.cache_clear()


@needs_kernel
def test_the_build_is_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(tmp_path))
    mod._load.cache_clear()
    try:
        assert mod._load()[0] is not None
        built = list((tmp_path / "kernels").glob("moe_experts_cpu-*.so"))
        assert len(built) == 1
        mtime = built[0].stat().st_mtime_ns
        mod._load.cache_clear()
        assert mod._load()[0] is not None
        assert built[0].stat().st_mtime_ns == mtime
    finally:
        mod._load.cache_clear()


@needs_kernel
@pytest.mark.parametrize(("rows", "hidden", "inter"), [(1, 48, 40), (13, 37, 21), (16, 64, 96)])
@pytest.mark.parametrize("with_scale", [False, True])
def test_dense_swiglu_mlp_matches_torch(rows: int, hidden: int, inter: int, with_scale: bool) -> None:
    from kernels.moe_experts_cpu import swiglu_mlp_cpu

    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, hidden, generator=gen)
    w_gate, w_up = (torch.randn(inter, hidden, generator=gen) / hidden**0.5 for _ in range(2))
    w_down = torch.randn(hidden, inter, generator=gen) / inter**0.5
    scale = torch.rand(rows, generator=gen) if with_scale else None
    expected = (torch.nn.functional.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T
    if scale is not None:
        expected = expected * scale[:, None]
    torch.testing.assert_close(swiglu_mlp_cpu(x, w_gate, w_up, w_down, scale), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="w_gate/w_up \\(I, H\\) and w_down \\(H, I\\)"):
        swiglu_mlp_cpu(x, w_gate, w_up, w_down.T.contiguous()[:, :-1])


def test_an_unwritable_cache_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("FATHOM_CACHE_DIR", str(blocker))
    mod._load.cache_clear()
    try:
        ok, why = cpu_kernel_status()
        assert not ok and ("building" in why or "x86-64" in why or "compiler" in why)
    finally:
        mod._load.cache_clear()
