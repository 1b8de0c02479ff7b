"""The nodule model: configs, the network, the false-positive reducer, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.nodule.model import FEATURES, FalsePositiveReducer, NoduleModel, NoduleNetConfig


def test_named_configs_build_networks_of_decreasing_size():
    sizes = {
        name: NoduleModel.create(NoduleNetConfig.named(name)).n_parameters
        for name in ("tiny", "student", "default")
    }
    assert sizes["tiny"] < sizes["student"] < sizes["default"]
    net = NoduleModel.create(NoduleNetConfig.tiny()).net
    out = net(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strides": (2,)}, "strides needs 3 entries"),
        ({"patch": 60}, "multiple of the total stride 8"),
        ({"overlap": 1.0}, "overlap"),
        ({"hu_window": (400, -1000)}, "hu_window"),
        ({"report_threshold": 1.5}, "report_threshold"),
        ({"channels": (16,)}, "at least 2"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        NoduleNetConfig(**{**NoduleNetConfig().to_dict(), **change})
    with pytest.raises(ValueError, match="unknown nodule model size"):
        NoduleNetConfig.named("huge")


def test_reducer_learns_to_separate_and_round_trips_as_json():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.random(n) < 0.3
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, FEATURES.index("elongation")] += np.where(y, -2.0, 2.0)  # nodules are compact, vessels long
    reducer = FalsePositiveReducer().fit(x, y)
    scores = reducer.confidence(x)
    assert scores[y].mean() > 0.8 and scores[~y].mean() < 0.2
    assert reducer.metrics["train_ap"] > 0.95
    again = FalsePositiveReducer.from_dict(json.loads(json.dumps(reducer.to_dict())))
    np.testing.assert_allclose(again.confidence(x), scores)


def test_reducer_needs_both_classes_and_matching_features():
    x = np.zeros((10, len(FEATURES)))
    with pytest.raises(ValueError, match="at least 2 nodule"):
        FalsePositiveReducer().fit(x, np.zeros(10, bool))
    with pytest.raises(ValueError, match="features must be"):
        FalsePositiveReducer().fit(np.zeros((10, 3)), np.ones(10, bool))
    with pytest.raises(ValueError, match="do not match"):
        FalsePositiveReducer.from_dict(
            {"features": ["a"], "mean": [], "scale": [], "coef": [], "intercept": 0}
        )
    # unfitted: the confidence is the maximum probability
    x[:, FEATURES.index("max_prob")] = 0.7
    assert np.all(FalsePositiveReducer().confidence(x) == 0.7)


def test_save_and_load_restore_weights_config_and_reducer(tmp_path):
    model = NoduleModel.create(NoduleNetConfig.tiny(), seed=3)
    model.reducer = FalsePositiveReducer(mean=[0.0] * 7, scale=[1.0] * 7, coef=[0.5] * 7, intercept=-1.0)
    model.save(tmp_path / "m", name="test-nodule", metrics={"val_cpm": 0.5}, summary="test")
    loaded = NoduleModel.load(tmp_path / "m")
    assert loaded.config == model.config
    assert loaded.reducer.coef == [0.5] * 7
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, loaded.net.state_dict()[key])
    assert loaded.card["metrics"]["val_cpm"] == 0.5


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NoduleModel.load(tmp_path / "missing")
    model = NoduleModel.create(NoduleNetConfig.tiny())
    model.save(tmp_path / "m", name="t", metrics={}, summary="")
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    card["config"]["model"]["channels"] = [8, 16, 32]
    (tmp_path / "m" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="weights do not fit"):
        NoduleModel.load(tmp_path / "m")


def test_patch_classifier_saves_with_the_model_and_its_reducer_must_match(tmp_path):
    from apps.nodule.model import PATCH_FEATURE
    from apps.nodule.patches import PatchClassifier, PatchConfig

    model = NoduleModel.create(NoduleNetConfig.tiny(), seed=1)
    model.patch = PatchClassifier.create(PatchConfig.tiny(), seed=2)
    n = len(FEATURES) + 1
    model.reducer = FalsePositiveReducer(
        [0.0] * n, [1.0] * n, [0.5] * n, 0.0, features=FEATURES + (PATCH_FEATURE,)
    )
    model.save(tmp_path / "m", name="t", metrics={}, summary="")
    loaded = NoduleModel.load(tmp_path / "m")
    assert loaded.patch is not None and loaded.patch.config == PatchConfig.tiny()
    assert loaded.reducer.features[-1] == PATCH_FEATURE
    image = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    centres = np.array([[10, 10, 10], [3, 15, 7]])
    np.testing.assert_allclose(
        loaded.patch.logits(image, centres), model.patch.logits(image, centres), rtol=1e-6
    )
    for key, value in model.net.state_dict().items():  # the U-Net's tensors stay apart from the classifier's
        assert torch.equal(value, loaded.net.state_dict()[key])
    # a reducer that wants the patch logit without a classifier (or the reverse) is refused
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    card["config"]["patch"] = None
    (tmp_path / "m" / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="do not match the model"):
        NoduleModel.load(tmp_path / "m")


def test_candidate_threshold_is_checked_and_may_be_unset():
    assert NoduleNetConfig(candidate_threshold=None).candidate_threshold is None
    with pytest.raises(ValueError, match="candidate_threshold"):
        NoduleNetConfig(candidate_threshold=0.0)
