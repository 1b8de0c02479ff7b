"""Parity of kernels.moe_experts (Triton) with its torch reference, and of both with Hugging Face."""

import pytest
import torch

from kernels import capabilities
from kernels.capabilities import TRITON_INTERPRET, triton_status
from kernels.moe_experts import _block_map, moe_experts, moe_experts_ref
from kernels.moe_routing import moe_routing_ref, sort_by_expert_ref

DEVICE = "cuda" if torch.cuda.is_available() and not TRITON_INTERPRET else "cpu"
_OK, _WHY = triton_status(DEVICE)
needs_triton = pytest.mark.skipif(not _OK, reason=f"Triton kernels cannot run on {DEVICE}: {_WHY}")
# bf16/fp16 round the intermediate activations between the two GEMMs (the reference keeps fp32).
TOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _problem(t, h, i, e, k, dtype, device=DEVICE, seed=0, drop_every=0, empty_expert=False):
    """Random activations and weights, scaled so outputs are O(1), and a routing for them."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=gen)
    w13 = torch.randn(e, 2 * i, h, generator=gen) / h**0.5
    w2 = torch.randn(e, h, i, generator=gen) / i**0.5
    logits = torch.randn(t, e, generator=gen)
    if empty_expert:
        logits[:, 0] = -1e4  # expert 0 is never chosen
    r = moe_routing_ref(logits, k)
    ids, weights = r.topk_ids.clone(), r.topk_weights
    if drop_every:
        ids.view(-1)[::drop_every] = e  # dropped slots: their experts compute nothing for them
    sorted_slots, offsets = sort_by_expert_ref(ids, e)
    args = (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, sorted_slots, offsets)
    return tuple(a.to(device) for a in args), ids


CASES = {
    "odd": dict(t=37, h=48, i=40, e=5, k=2),
    "one_token": dict(t=1, h=48, i=40, e=5, k=2),
    "empty_expert": dict(t=19, h=32, i=24, e=4, k=2, empty_expert=True),
    "dropped_slots": dict(t=23, h=32, i=24, e=4, k=3, drop_every=4),
    "k1_ragged": dict(t=45, h=20, i=36, e=3, k=1),
}


def test_reference_matches_dense_loop():
    (x, w13, w2, weights, slots, offsets), ids = _problem(
        7, 16, 12, 3, 2, torch.float32, device="cpu", drop_every=3
    )
    want = torch.zeros(7, 16)
    for t in range(7):
        for j in range(2):
            e = int(ids[t, j])
            if e >= 3:
                continue
            gate, up = w13[e, :12] @ x[t], w13[e, 12:] @ x[t]
            want[t] += weights[t, j] * (w2[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(
        moe_experts_ref(x, w13, w2, weights, slots, offsets), want, atol=1e-5, rtol=1e-5
    )


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_moe_experts_matches_ref(case, dtype):
    args, _ = _problem(**CASES[case], dtype=dtype)
    got, want = moe_experts(*args), moe_experts_ref(*args)
    assert got.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


@needs_triton
def test_moe_experts_dropped_tokens_get_zero():
    (x, w13, w2, weights, slots, offsets), ids = _problem(6, 16, 16, 2, 1, torch.float32)
    ids[:] = 2  # every slot dropped
    slots, offsets = sort_by_expert_ref(ids, 2)
    out = moe_experts(x, w13, w2, weights, slots.to(DEVICE), offsets.to(DEVICE))
    assert out.abs().max() == 0


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_block_map_covers_each_row_once(block_m):
    counts = torch.tensor([0, 5, 1, 0, 17, 16])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    num_slots = int(counts.sum()) + 3  # a few dropped slots too
    block_expert, block_row = _block_map(offsets, num_slots, block_m)
    seen = []
    for e, start in zip(block_expert.tolist(), block_row.tolist(), strict=True):
        if e < 0:
            continue
        end = min(start + block_m, int(offsets[e + 1]))
        assert int(offsets[e]) <= start < end
        seen.extend(range(start, end))
    assert seen == list(range(int(offsets[-1])))


def test_block_map_bound_is_tight_enough():
    # Worst case for the grid bound: every expert holds one row.
    offsets = torch.arange(9)
    block_expert, _ = _block_map(offsets, 8, 16)
    assert (block_expert >= 0).sum() == 8 and block_expert.numel() == 8


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda a: (a[0][:, :-1], *a[1:]),
            r"w13 has shape \(5, 80, 48\) but expected \(E, 2\*I, H\) with H=47",
        ),
        (
            lambda a: (a[0], a[1], a[2][:, :, :-1], *a[3:]),
            r"w2 has shape \(5, 48, 39\) but expected \(E, H, I\)",
        ),
        (
            lambda a: (*a[:3], a[3][:-1], *a[4:]),
            r"topk_weights has shape \(36, 2\) but expected \(T, K\) with T=37",
        ),
        (
            lambda a: (*a[:4], a[4][:-1], a[5]),
            r"sorted_slots has shape \(73,\) but expected \(T\*K,\) = \(74,\)",
        ),
        (lambda a: (*a[:5], a[5][:-1]), r"expert_offsets has shape \(5,\) but expected \(E\+1,\) = \(6,\)"),
        (lambda a: (a[0], a[1].double(), *a[2:]), "must share one dtype"),
        (lambda a: (a[0].int(), a[1].int(), a[2].int(), *a[3:]), "must share one dtype"),
        (lambda a: (*a[:4], a[4].float(), a[5]), "sorted_slots must be int32 or int64"),
        (lambda a: (a[0][None], *a[1:]), "x must be 2-D"),
    ],
)
@pytest.mark.parametrize("fn", [moe_experts_ref, moe_experts])
def test_experts_errors(fn, mutate, match):
    args, _ = _problem(**CASES["odd"], dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=match):
        fn(*mutate(args))


def test_launcher_says_why_it_cannot_run(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", False)
    args, _ = _problem(**CASES["one_token"], dtype=torch.float32, device="cpu")
    with pytest.raises(
        RuntimeError, match="moe_experts needs Triton.*triton is not installed.*moe_experts_ref"
    ):
        moe_experts(*args)


# ---- an independent implementation: a tiny Hugging Face Mixtral block --------------------------------------


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
def test_matches_hf_mixtral_block(use_triton):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from kernels.moe_routing import moe_routing

    config = MixtralConfig(hidden_size=32, intermediate_size=37, num_local_experts=4, num_experts_per_tok=2)
    block = MixtralSparseMoeBlock(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # transformers 5 leaves the expert weights uninitialised (torch.empty)
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    hidden = torch.randn(1, 29, 32, generator=gen)
    with torch.no_grad():
        want = block(hidden)[0]  # (T, H)
        logits = block.gate(hidden[0])[0]
    device = DEVICE if use_triton else "cpu"
    route, experts = (moe_routing, moe_experts) if use_triton else (moe_routing_ref, moe_experts_ref)
    r = route(logits.to(device), 2)
    got = experts(
        hidden[0].to(device), block.experts.gate_up_proj.detach().to(device),
        block.experts.down_proj.detach().to(device), r.topk_weights, r.sorted_slots, r.expert_offsets,
    )  # fmt: skip
    torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)


# ---- compiled on a GPU, larger shapes ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or TRITON_INTERPRET, reason="needs compiled Triton on CUDA")
@pytest.mark.parametrize(
    "shape",
    [
        dict(t=1, h=1024, i=768, e=64, k=8),
        dict(t=515, h=1024, i=1408, e=8, k=2, drop_every=7),
        dict(t=2048, h=2048, i=768, e=128, k=8, empty_expert=True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_moe_experts_matches_ref_gpu(shape, dtype):
    args, _ = _problem(**shape, dtype=dtype, device="cuda")
    got, want = moe_experts(*args), moe_experts_ref(*args)
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])
