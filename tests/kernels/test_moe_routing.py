"""Parity of kernels.moe_routing (Triton) with its torch reference, and of the reference with Hugging Face."""

import pytest
import torch

from kernels import capabilities
from kernels.capabilities import TRITON_INTERPRET, triton_status
from kernels.moe_routing import moe_routing, moe_routing_ref, sort_by_expert, sort_by_expert_ref

DEVICE = "cuda" if torch.cuda.is_available() and not TRITON_INTERPRET else "cpu"
_OK, _WHY = triton_status(DEVICE)
needs_triton = pytest.mark.skipif(not _OK, reason=f"Triton kernels cannot run on {DEVICE}: {_WHY}")
WEIGHT_TOL = {
    torch.float32: 1e-5,
    torch.float16: 1e-5,
    torch.bfloat16: 1e-5,
}  # scores are fp32 for every dtype


def _logits(t: int, e: int, dtype=torch.float32, seed: int = 0, device: str = DEVICE) -> torch.Tensor:
    """Logits that are distinct within each row in every dtype (multiples of 1/8 off a 1/32 shift, so no two
    pairs of sigmoids mirror each other either): top-k has no ties for the two paths to break differently."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.stack([torch.randperm(e, generator=gen) for _ in range(t)]).float()  # (T, E)
    return ((levels - e // 2) / 8 + 1 / 32).to(device=device, dtype=dtype)


def _check_sorted(
    ids: torch.Tensor, num_experts: int, sorted_slots: torch.Tensor, offsets: torch.Tensor
) -> None:
    """The invariants of a counting sort, independent of any implementation."""
    flat = ids.reshape(-1).long().cpu()
    slots, offsets = sorted_slots.long().cpu(), offsets.long().cpu()
    assert sorted(slots.tolist()) == list(range(flat.numel()))  # each slot exactly once
    assert offsets[0] == 0 and bool((offsets[1:] >= offsets[:-1]).all())
    kept = (flat >= 0) & (flat < num_experts)
    assert offsets[-1] == kept.sum()
    for e in range(num_experts):
        mine = slots[offsets[e] : offsets[e + 1]]
        assert bool((flat[mine] == e).all()) and bool((mine[1:] > mine[:-1]).all())
    assert not bool(kept[slots[offsets[-1] :]].any())  # dropped slots last


@pytest.mark.parametrize(
    "t, k, e, dropped",
    [(37, 2, 5, False), (1, 1, 3, False), (50, 3, 6, True), (90, 4, 8, True)],  # 90*4 spans several blocks
)
def test_sort_by_expert_ref_invariants(t, k, e, dropped):
    gen = torch.Generator().manual_seed(t)
    ids = torch.randint(0, e - 1, (t, k), generator=gen)  # expert e-1 receives nothing
    if dropped:
        ids[::3, -1] = e + 2
        ids[1, 0] = -1
    _check_sorted(ids, e, *sort_by_expert_ref(ids, e))


@needs_triton
@pytest.mark.parametrize("t, k, e, dropped", [(37, 2, 5, False), (1, 1, 3, False), (90, 4, 8, True)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_sort_by_expert_matches_ref(t, k, e, dropped, dtype):
    gen = torch.Generator().manual_seed(t)
    ids = torch.randint(0, e - 1, (t, k), generator=gen)
    if dropped:
        ids[::3, -1] = e
        ids[1, 0] = -1
    ids = ids.to(device=DEVICE, dtype=dtype)
    got = sort_by_expert(ids, e)
    want = sort_by_expert_ref(ids, e)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.int32
        torch.testing.assert_close(g, w)
    _check_sorted(ids, e, *got)


ROUTING_CASES = {
    "softmax_renorm": dict(t=37, e=5, k=2, kw={}),
    "softmax_no_renorm_scaled": dict(t=37, e=5, k=2, kw=dict(renormalize=False, scaling_factor=1.7)),
    "single_token_all_experts": dict(t=1, e=6, k=6, kw={}),
    "sigmoid_bias_groups": dict(
        t=37, e=16, k=4,
        kw=dict(scoring="sigmoid", num_groups=4, topk_groups=2, scaling_factor=2.5, correction_bias="rand"),
    ),
    "sigmoid_groups_of_six_no_renorm": dict(  # group size not a power of 2: padded lanes in each group
        t=23, e=18, k=4, kw=dict(scoring="sigmoid", renormalize=False, num_groups=3, topk_groups=2),
    ),
    "softmax_groups_of_one": dict(t=9, e=4, k=2, kw=dict(num_groups=4, topk_groups=3)),
}  # fmt: skip


def _kwargs(kw: dict, e: int, device: str) -> dict:
    kw = dict(kw)
    if kw.get("correction_bias") == "rand":
        kw["correction_bias"] = (torch.randn(e, generator=torch.Generator().manual_seed(1)) * 0.1).to(device)
    return kw


def test_reference_semantics():
    logits = _logits(4, 8, device="cpu")
    ref = moe_routing_ref(logits, 2, renormalize=False)
    probs = logits.softmax(-1)
    torch.testing.assert_close(ref.topk_weights, probs.topk(2).values)
    assert ref.topk_ids.dtype == torch.int32 and ref.topk_weights.dtype == torch.float32
    bias = torch.zeros(8)
    bias[3] = 10.0  # the bias forces expert 3 but does not enter the weights
    ref = moe_routing_ref(logits, 1, scoring="sigmoid", correction_bias=bias, renormalize=False)
    assert (ref.topk_ids == 3).all()
    torch.testing.assert_close(ref.topk_weights[:, 0], logits[:, 3].sigmoid())


@needs_triton
@pytest.mark.parametrize("case", list(ROUTING_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_moe_routing_matches_ref(case, dtype):
    c = ROUTING_CASES[case]
    logits = _logits(c["t"], c["e"], dtype)
    kw = _kwargs(c["kw"], c["e"], DEVICE)
    got, want = moe_routing(logits, c["k"], **kw), moe_routing_ref(logits, c["k"], **kw)
    tol = WEIGHT_TOL[dtype]
    torch.testing.assert_close(got.topk_weights, want.topk_weights, atol=tol, rtol=tol)
    for name in ("topk_ids", "sorted_slots", "expert_offsets"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), msg=name)


@needs_triton
def test_moe_routing_strided_logits():
    logits = _logits(20, 12)[:, ::2]  # (20, 6) with a row stride of 12
    torch.testing.assert_close(moe_routing(logits, 2).topk_weights, moe_routing_ref(logits, 2).topk_weights)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((torch.randn(2, 3, 4), 1), {}, "logits must be 2-D"),
        ((torch.randn(4, 6), 0), {}, r"top_k=0 must be in \[1, E=6\]"),
        ((torch.randn(4, 6), 7), {}, r"top_k=7 must be in \[1, E=6\]"),
        ((torch.randn(4, 6), 2), dict(num_groups=4), "cannot be split into num_groups=4"),
        (
            (torch.randn(4, 6), 2),
            dict(num_groups=3, topk_groups=4),
            r"topk_groups=4 must be in \[1, num_groups=3\]",
        ),
        ((torch.randn(4, 6), 3), dict(num_groups=3, topk_groups=1), "top_k=3 > topk_groups"),
        ((torch.randn(4, 6), 2), dict(scoring="relu"), "unknown scoring 'relu'"),
        ((torch.randn(4, 6), 2), dict(correction_bias=torch.zeros(5)), r"correction_bias has shape \(5,\)"),
    ],
)
@pytest.mark.parametrize("fn", [moe_routing_ref, moe_routing])
def test_routing_errors(fn, args, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kw)


def test_sort_by_expert_errors():
    with pytest.raises(ValueError, match="topk_ids must be 2-D"):
        sort_by_expert_ref(torch.zeros(4, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="topk_ids must be int32 or int64"):
        sort_by_expert_ref(torch.zeros(4, 2), 3)


def test_launchers_say_why_they_cannot_run(monkeypatch):
    monkeypatch.setattr(capabilities, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match="moe_routing needs Triton.*triton is not installed"):
        moe_routing(torch.randn(4, 6), 2)
    with pytest.raises(RuntimeError, match="sort_by_expert needs Triton"):
        sort_by_expert(torch.zeros(4, 2, dtype=torch.int32), 3)


# ---- an independent implementation: the Hugging Face routers -----------------------------------------------


def _hf_router(cls, config):
    router = cls(config)
    with torch.no_grad():
        router.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    return router


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
def test_matches_hf_mixtral_router(use_triton):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

    router = _hf_router(
        MixtralTopKRouter, MixtralConfig(hidden_size=32, num_local_experts=8, num_experts_per_tok=2)
    )
    hidden = torch.randn(37, 32, generator=torch.Generator().manual_seed(1))
    logits, weights, ids = router(hidden)
    fn = moe_routing if use_triton else moe_routing_ref
    ours = fn(logits.detach().to(DEVICE if use_triton else "cpu"), 2)
    torch.testing.assert_close(ours.topk_ids.long().cpu(), ids)
    torch.testing.assert_close(ours.topk_weights.cpu(), weights.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_matches_hf_qwen2_moe_router(norm_topk_prob):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

    config = Qwen2MoeConfig(
        hidden_size=32, num_experts=12, num_experts_per_tok=4, norm_topk_prob=norm_topk_prob
    )
    router = _hf_router(Qwen2MoeTopKRouter, config)
    logits, weights, ids = router(torch.randn(29, 32, generator=torch.Generator().manual_seed(2)))
    ours = moe_routing_ref(logits.detach(), 4, renormalize=norm_topk_prob)
    torch.testing.assert_close(ours.topk_ids.long(), ids)
    torch.testing.assert_close(ours.topk_weights, weights.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("use_triton", [False, pytest.param(True, marks=needs_triton)])
def test_matches_hf_deepseek_v3_router(use_triton):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    config = DeepseekV3Config(
        hidden_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=True,
    )  # fmt: skip
    router = _hf_router(DeepseekV3TopkRouter, config)
    with torch.no_grad():
        router.e_score_correction_bias.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(3))
    logits, weights, ids = router(torch.randn(37, 32, generator=torch.Generator().manual_seed(4)))
    fn = moe_routing if use_triton else moe_routing_ref
    device = DEVICE if use_triton else "cpu"
    bias = router.e_score_correction_bias.to(device)
    ours = fn(
        logits.detach().to(device), 4, scoring="sigmoid", correction_bias=bias, num_groups=4, topk_groups=2,
        scaling_factor=2.5,
    )  # fmt: skip
    # Hugging Face leaves its top-k unsorted: compare per token in expert-id order.
    hf_ids, order = ids.sort(-1)
    our_ids, our_order = ours.topk_ids.long().cpu().sort(-1)
    torch.testing.assert_close(our_ids, hf_ids)
    torch.testing.assert_close(
        ours.topk_weights.cpu().gather(1, our_order), weights.detach().gather(1, order), atol=1e-6, rtol=1e-5
    )


# ---- compiled on a GPU, larger shapes ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or TRITON_INTERPRET, reason="needs compiled Triton on CUDA")
@pytest.mark.parametrize(
    "t, e, k, kw",
    [
        (4099, 8, 2, {}),
        (3001, 64, 8, dict(renormalize=False)),
        (
            4096,
            256,
            8,
            dict(scoring="sigmoid", num_groups=8, topk_groups=4, scaling_factor=2.5, correction_bias="rand"),
        ),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_routing_matches_ref_gpu(t, e, k, kw, dtype):
    logits = torch.randn(t, e, generator=torch.Generator().manual_seed(0)).to("cuda", dtype)
    kw = _kwargs(kw, e, "cuda")
    got, want = moe_routing(logits, k, **kw), moe_routing_ref(logits, k, **kw)
    # Random bf16 logits at this size do tie; tied experts have equal scores, so the weights still agree.
    torch.testing.assert_close(got.topk_weights, want.topk_weights, atol=1e-5, rtol=1e-5)
    assert (got.topk_ids != want.topk_ids).float().mean() < 1e-2
    _check_sorted(got.topk_ids, e, got.sorted_slots, got.expert_offsets)
    torch.testing.assert_close(sort_by_expert(got.topk_ids, e)[0], sort_by_expert_ref(got.topk_ids, e)[0])
