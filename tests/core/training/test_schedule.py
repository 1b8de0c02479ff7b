import pytest
import torch

from core.training import warmup_cosine


def _lrs(warmup: int, total: int, min_ratio: float = 0.0) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=warmup, total_steps=total, min_ratio=min_ratio)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_rises_then_cosine_falls_to_floor():
    lrs = _lrs(4, 20, min_ratio=0.1)
    assert lrs[:5] == sorted(lrs[:5]) and lrs[0] < 0.5
    assert max(lrs) == pytest.approx(1.0)
    tail = lrs[4:]
    assert tail == sorted(tail, reverse=True)
    assert tail[-1] >= 0.1 and tail[-1] < 0.15


def test_no_warmup_starts_at_peak():
    assert _lrs(0, 10)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("warmup,total,ratio", [(-1, 10, 0.0), (11, 10, 0.0), (0, 0, 0.0), (0, 10, 1.5)])
def test_bad_arguments(warmup, total, ratio):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, warmup_steps=warmup, total_steps=total, min_ratio=ratio)
