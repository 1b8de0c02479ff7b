from __future__ import annotations

from pathlib import Path

import pytest

from core.moe import MoEConfig

CONFIG_DIR = Path(__file__).resolve().parents[3] / "core" / "moe" / "configs"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"top_k": 6}, "top_k=6 is larger than num_experts=5"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"scoring": "relu"}, "scoring must be"),
        ({"balancing": "magic"}, "balancing must be"),
        ({"num_groups": 2}, "not divisible by num_groups"),
        ({"num_experts": 8, "num_groups": 4, "topk_groups": 5}, "topk_groups=5 exceeds"),
        (
            {"num_experts": 8, "num_groups": 4, "topk_groups": 1, "top_k": 3},
            "exceeds the 2 experts reachable",
        ),
        ({"capacity_factor": 0.0}, "capacity_factor must be positive"),
        ({"shared_expert_gate": True}, "needs shared experts"),
    ],
)
def test_invalid_configs_are_rejected_with_the_reason(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MoEConfig.tiny(**overrides)


def test_yaml_configs_load_and_match_the_presets(tmp_path: Path) -> None:
    assert MoEConfig.from_yaml(CONFIG_DIR / "mixtral_like.yaml") == MoEConfig.mixtral_like()
    assert MoEConfig.from_yaml(CONFIG_DIR / "fine_grained.yaml") == MoEConfig.fine_grained()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "moe:\n  hidden_size: 8\n  intermediate_size: 8\n  num_experts: 2\n  top_k: 1\n  colour: red\n"
    )
    with pytest.raises(ValueError, match="unknown MoEConfig fields: colour"):
        MoEConfig.from_yaml(bad)


def test_round_trip_through_dict() -> None:
    cfg = MoEConfig.fine_grained()
    assert MoEConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.shared_width == 1024
