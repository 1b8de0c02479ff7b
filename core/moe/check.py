"""Check that a Hugging Face MoE model runs unchanged on Fathom's MoE layer.

``check_patched_model`` runs a causal LM before and after ``core.moe.hf.patch_model`` on the same
input and reports whether the logits and the greedy generation match, and how long a forward
took each way. ``fathom moe check MODEL_DIR`` is the command-line face of it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from core.moe.hf import patch_model
from core.moe.layer import Backend


@dataclass
class PatchCheck:
    """What ``check_patched_model`` found.

    Args:
        blocks: qualified names of the MoE blocks replaced.
        backend: the path the Fathom blocks run (``triton`` or ``torch``).
        max_abs_logit_diff: largest |logit before - logit after| over the prompt.
        tokens_before, tokens_after: the greedy continuations.
        forward_ms_before, forward_ms_after: median time of one forward over the prompt.
    """

    blocks: list[str]
    backend: str
    max_abs_logit_diff: float
    tokens_before: list[int]
    tokens_after: list[int]
    forward_ms_before: float
    forward_ms_after: float

    @property
    def same_tokens(self) -> bool:
        return self.tokens_before == self.tokens_after

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "same_tokens": self.same_tokens}


def _median_forward_ms(model: nn.Module, input_ids: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        start = time.perf_counter()
        model(input_ids=input_ids)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times[1:])[len(times[1:]) // 2]


@torch.inference_mode()
def check_patched_model(
    model: nn.Module,
    input_ids: torch.Tensor,
    new_tokens: int = 8,
    backend: Backend = "auto",
    repeats: int = 3,
) -> PatchCheck:
    """Patch ``model`` in place and compare it with itself before patching.

    Args:
        model: a transformers causal LM (``generate`` and ``.logits``) holding supported MoE blocks.
        input_ids: the prompt.
        new_tokens: greedy tokens to generate each way.
        backend: the Fathom blocks' path (see ``core.moe.layer``).
        repeats: timed forwards each way (median reported).

    Shapes:
        input_ids (B, S) int64.
    """
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty (B, S) tensor, got shape {tuple(input_ids.shape)}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    model.eval()
    generate = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    logits_before = model(input_ids=input_ids).logits.float()
    tokens_before = model.generate(input_ids, **generate)[0, input_ids.shape[1] :].tolist()
    ms_before = _median_forward_ms(model, input_ids, repeats)

    blocks = patch_model(model, backend=backend)
    backend_used = model.get_submodule(blocks[0]).backend
    logits_after = model(input_ids=input_ids).logits.float()
    tokens_after = model.generate(input_ids, **generate)[0, input_ids.shape[1] :].tolist()
    ms_after = _median_forward_ms(model, input_ids, repeats)
    return PatchCheck(
        blocks=blocks,
        backend=backend_used,
        max_abs_logit_diff=float((logits_before - logits_after).abs().max()),
        tokens_before=tokens_before,
        tokens_after=tokens_after,
        forward_ms_before=round(ms_before, 3),
        forward_ms_after=round(ms_after, 3),
    )
