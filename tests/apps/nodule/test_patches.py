"""The patch classifier: cubes around candidates, its config, and that it learns blobs from tubes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from apps.nodule.patches import PatchConfig, PatchExamples, cubes, train_patch_classifier


def test_cubes_are_centred_and_read_zero_outside_the_image():
    image = torch.arange(10 * 12 * 14, dtype=torch.float32).reshape(10, 12, 14) + 1
    out = cubes(image, np.array([[5, 6, 7], [0, 0, 0], [9.4, 11.6, 13]]), 4)
    assert out.shape == (3, 1, 4, 4, 4)
    assert float(out[0, 0, 2, 2, 2]) == float(image[5, 6, 7])
    assert torch.equal(out[0, 0], image[3:7, 4:8, 5:9])
    assert float(out[1, 0, :2].abs().sum()) == 0 and float(out[1, 0, 2, 2, 2]) == float(image[0, 0, 0])
    assert float(out[2, 0, 2, 2, 2]) == float(image[9, 11, 13])  # rounded, clipped to the image
    assert cubes(image, np.zeros((0, 3)), 4).shape == (0, 1, 4, 4, 4)
    half = cubes(image.half(), np.array([[5, 6, 7], [0, 0, 0]]), 4)  # float16 training images
    assert half.dtype == torch.float32 and torch.equal(half, out[:2])  # values < 2048: exact in float16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch": 20}, "multiple of"),
        ({"channels": ()}, "positive numbers"),
        ({"channels": (4, 0)}, "positive"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        PatchConfig(**{**PatchConfig().to_dict(), **change})


def _scene(rng: np.random.Generator, size: int = 40):
    """Noise with bright tubes along random axes (vessels) and bright balls (nodules)."""
    image = rng.normal(0.1, 0.03, (size,) * 3).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1)
    balls, tubes = [], []
    for _ in range(3):
        c = rng.integers(8, size - 8, 3)
        image[np.linalg.norm(grid - c, axis=-1) <= rng.uniform(1.5, 3.0)] = 0.6
        balls.append(c)
    for _ in range(3):
        c, axis = rng.integers(8, size - 8, 3), int(rng.integers(0, 3))
        off = np.delete(grid - c, axis, axis=-1)
        image[np.linalg.norm(off, axis=-1) <= rng.uniform(1.5, 3.0)] = 0.6
        tubes.append(c)
    return torch.from_numpy(image), np.array(balls), np.array(tubes)


def test_classifier_learns_to_tell_balls_from_tubes():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    examples = [PatchExamples(*_scene(rng)) for _ in range(6)]
    model, metrics = train_patch_classifier(
        examples, PatchConfig.tiny(), steps=150, batch=16, lr=5e-3, jitter=1
    )
    assert metrics["positives"] == 18 and metrics["negatives"] == 18 and metrics["steps"] == 150
    image, balls, tubes = _scene(np.random.default_rng(99))  # a scene it has not seen
    scores = model.logits(image, np.concatenate([balls, tubes]))
    assert roc_auc_score([1] * len(balls) + [0] * len(tubes), scores) >= 0.85


def test_training_needs_both_classes_and_steps():
    image = torch.zeros(16, 16, 16)
    with pytest.raises(ValueError, match="nodule and non-nodule examples, got 1 and 0"):
        train_patch_classifier(
            [PatchExamples(image, np.array([[8, 8, 8]]), np.zeros((0, 3)))], PatchConfig.tiny(), steps=1
        )
    with pytest.raises(ValueError, match="steps must be >= 1"):
        train_patch_classifier(
            [PatchExamples(image, np.array([[8, 8, 8]]), np.array([[4, 4, 4]]))], PatchConfig.tiny(), steps=0
        )
