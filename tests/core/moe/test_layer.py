from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from core.moe import MoE, MoEConfig
from core.moe import experts as experts_mod


def naive_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token reference, written independently of the layer's routing and experts."""
    cfg = layer.config
    out = torch.zeros_like(x)
    w13, w2 = layer.experts.w13, layer.experts.w2
    inter = cfg.intermediate_size
    for t in range(x.shape[0]):
        logits = layer.gate.weight @ x[t]
        scores = logits.softmax(-1) if cfg.scoring == "softmax" else logits.sigmoid()
        bias = layer.gate.e_score_correction_bias
        choice = scores + bias if bias is not None else scores
        ids = choice.topk(cfg.top_k).indices
        weights = scores[ids]
        if cfg.renormalize:
            weights = weights / weights.sum()
        weights = weights * cfg.routed_scaling_factor
        for w, e in zip(weights, ids, strict=True):
            h = w13[e] @ x[t]
            out[t] += w * (w2[e] @ (F.silu(h[:inter]) * h[inter:]))
    if layer.shared_experts is not None:
        shared = layer.shared_experts(x)
        if layer.shared_expert_gate is not None:
            shared = torch.sigmoid(layer.shared_expert_gate(x)) * shared
        out = out + shared
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"renormalize": False},
        {"scoring": "sigmoid", "routed_scaling_factor": 2.5, "num_shared_experts": 2},
        {"num_shared_experts": 1, "shared_expert_gate": True, "shared_intermediate_size": 23},
        {"top_k": 1},
    ],
)
def test_matches_token_by_token_reference(overrides: dict) -> None:
    torch.manual_seed(0)
    layer = MoE(MoEConfig.tiny(**overrides), backend="torch").eval()
    if layer.gate.e_score_correction_bias is not None:
        layer.gate.e_score_correction_bias.normal_(0, 0.05)
    x = torch.randn(37, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), naive_moe(layer, x), atol=1e-5, rtol=1e-5)


def test_keeps_leading_shape_and_dtype() -> None:
    layer = MoE(MoEConfig.tiny(), backend="torch").eval()
    x = torch.randn(2, 3, 7, 32)
    assert layer(x).shape == x.shape
    y = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_the_inference_schedules_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """C decode kernel, grouped_mm (short segments), streamed GEMMs (long) and the autograd path."""
    from kernels.moe_experts_cpu import cpu_kernel_status

    torch.manual_seed(1)
    layer = MoE(MoEConfig.tiny(num_experts=7, top_k=3, intermediate_size=40), backend="torch").eval()
    x = torch.randn(41, 32)
    calls: list[str] = []
    for name in ("moe_experts_cpu",):
        real = getattr(experts_mod, name)
        monkeypatch.setattr(
            experts_mod, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k)
        )
    real_gm = experts_mod.F.grouped_mm
    monkeypatch.setattr(
        experts_mod.F, "grouped_mm", lambda *a, **k: calls.append("grouped_mm") or real_gm(*a, **k)
    )
    outputs = {}
    with torch.no_grad():
        if cpu_kernel_status()[0]:
            monkeypatch.setattr(experts_mod, "CPU_KERNEL_MAX_AVG_ROWS", 10**9)
            outputs["kernel"] = layer(x)
            assert calls[-1] == "moe_experts_cpu"
        monkeypatch.setattr(experts_mod, "CPU_KERNEL_MAX_AVG_ROWS", -1)
        monkeypatch.setattr(experts_mod, "GROUPED_MM_MAX_AVG_ROWS", 10**9)
        outputs["grouped"] = layer(x)
        assert calls[-1] == "grouped_mm"
        monkeypatch.setattr(experts_mod, "GROUPED_MM_MAX_AVG_ROWS", 0)
        n_calls = len(calls)
        outputs["streamed"] = layer(x)
        assert len(calls) == n_calls
    outputs["autograd"] = layer(x.clone().requires_grad_()).detach()
    for name, out in outputs.items():
        torch.testing.assert_close(out, outputs["streamed"], atol=1e-5, rtol=1e-5, msg=name)


def test_gradients_flow_to_every_parameter_and_the_input() -> None:
    torch.manual_seed(2)
    cfg = MoEConfig.tiny(num_shared_experts=1, shared_expert_gate=True, z_loss_coef=1e-3)
    layer = MoE(cfg, backend="torch").train()
    x = torch.randn(19, 32, requires_grad=True)
    (layer(x).square().mean() + layer.aux_loss).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_aux_loss_is_one_when_perfectly_balanced_and_zero_in_eval() -> None:
    from core.moe import load_balancing_loss

    probs = torch.full((8, 4), 0.25)
    ids = torch.arange(8).remainder(4).view(8, 1)
    assert load_balancing_loss(probs, ids, 4).item() == pytest.approx(1.0)
    skewed = load_balancing_loss(torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 8), torch.zeros(8, 1), 4)
    assert skewed.item() > 3.5
    layer = MoE(MoEConfig.tiny(), backend="torch").eval()
    layer(torch.randn(5, 32))
    assert layer.aux_loss.item() == 0.0


def test_capacity_drops_and_reports_overflow() -> None:
    torch.manual_seed(3)
    layer = MoE(MoEConfig.tiny(capacity_factor=0.5), backend="torch").eval()
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.weight[0, :] = 1.0  # every token prefers expert 0
        x = torch.randn(40, 32).abs()
        out = layer(x)
    stats = layer.last_stats
    cap = layer.gate.capacity(40)
    assert stats.tokens_per_expert.max().item() <= cap
    assert stats.dropped_slots == stats.num_slots - stats.tokens_per_expert.sum().item() > 0
    # tokens beyond expert 0's capacity lost that expert's contribution
    full = MoE(MoEConfig.tiny(), backend="torch").eval()
    full.load_state_dict(layer.state_dict())
    with torch.no_grad():
        ref = full(x)
    torch.testing.assert_close(out[:cap], ref[:cap], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[cap:], ref[cap:])


def test_bias_balancing_moves_bias_towards_underloaded_experts() -> None:
    torch.manual_seed(4)
    layer = MoE(MoEConfig.tiny(balancing="bias", bias_update_rate=0.01), backend="torch").train()
    with torch.no_grad():
        layer.gate.weight[0].fill_(0.5)
    x = torch.randn(64, 32).abs()
    layer(x)
    bias = layer.gate.e_score_correction_bias
    load = layer.last_stats.tokens_per_expert
    assert bias[load.argmax()] < 0 < bias[load.argmin()]


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (torch.randn(4, 31), ValueError, r"shape \(\.\.\., 32\)"),
        (torch.ones(4, 32, dtype=torch.int64), TypeError, "float32, float16 or bfloat16"),
        ([1.0] * 32, TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_names_the_problem(x, error, match) -> None:
    layer = MoE(MoEConfig.tiny(), backend="torch")
    with pytest.raises(error, match=match):
        layer(x)


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown MoE backend"):
        MoE(MoEConfig.tiny(), backend="cutlass")  # type: ignore[arg-type]


def test_triton_backend_matches_torch_path_under_the_interpreter() -> None:
    from kernels.capabilities import triton_status

    ok, why = triton_status("cpu")
    if not ok:
        pytest.skip(why)
    torch.manual_seed(5)
    cfg = MoEConfig.tiny(num_shared_experts=1)
    ref = MoE(cfg, backend="torch").eval()
    fused = MoE(cfg, backend="triton").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(13, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref(x), atol=1e-4, rtol=1e-4)
    # while autograd records, the forward-only kernels are bypassed
    y = fused.train()(x.requires_grad_())
    y.sum().backward()
    assert fused.experts.w13.grad is not None


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    tokens=st.integers(1, 24),
    experts=st.integers(1, 9),
    data=st.data(),
    scoring=st.sampled_from(["softmax", "sigmoid"]),
    shared=st.integers(0, 2),
)
def test_any_small_shape_matches_the_reference(tokens, experts, data, scoring, shared) -> None:
    top_k = data.draw(st.integers(1, experts))
    hidden = data.draw(st.sampled_from([8, 16, 19, 32]))
    cfg = MoEConfig(
        hidden_size=hidden, intermediate_size=data.draw(st.integers(1, 24)), num_experts=experts, top_k=top_k,
        scoring=scoring, num_shared_experts=shared,
    )  # fmt: skip
    torch.manual_seed(tokens * 131 + experts)
    layer = MoE(cfg, backend="torch").eval()
    x = torch.randn(tokens, hidden)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), naive_moe(layer, x), atol=1e-5, rtol=1e-4)
