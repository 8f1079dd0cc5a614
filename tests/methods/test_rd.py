"""Plain reverse distillation: shapes per backbone, scoring math, training signal."""

from __future__ import annotations

import pytest
import torch

from edgekit.config.recipe import recipe_from_dict
from edgekit.methods.rd.scoring import DistillationScorer, GaussianSmoothing
from edgekit.train import build_model, seed_everything


def _recipe(backbone: str) -> dict:
    return {
        "name": "t", "method": {"type": "rd", "embed_factor": 1.0, "decoder_width": 0.5},
        "backbone": {"name": backbone, "weights": "none"}, "input": {"size": 64},
        "score": {"smoothing_sigma": 1.0},
    }


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_shapes(backbone: str) -> None:
    model = build_model(recipe_from_dict(_recipe(backbone))).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.map.shape == (2, 1, 64, 64) and out.score.shape == (2,)
    # image score is the max of the smoothed map
    assert torch.allclose(out.score, out.map.amax(dim=(1, 2, 3)))
    feats = model.teacher(x)
    student = model.decoder(model.bottleneck(feats))
    assert [f.shape for f in feats] == [s.shape for s in student]


def test_gaussian_smoothing_keeps_constants_and_mass() -> None:
    g = GaussianSmoothing(2.0)
    c = torch.full((1, 1, 20, 20), 3.0)
    assert torch.allclose(g(c), c, atol=1e-5)
    spike = torch.zeros(1, 1, 41, 41)
    spike[0, 0, 20, 20] = 1.0
    out = g(spike)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4) and out[0, 0, 20, 20] < 1.0


def test_scorer_detects_local_difference() -> None:
    sc = DistillationScorer(sigma=1.0)
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 2, 3] = 1.0
    amap, score = sc([m], (32, 32))
    y, x = divmod(int(amap[0, 0].argmax()), 32)
    assert 8 <= y < 12 and 12 <= x < 16 and score.item() > 0


def test_loss_decreases_and_teacher_frozen() -> None:
    seed_everything(0)
    model = build_model(recipe_from_dict(_recipe("tf_efficientnet_lite0")))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    losses = []
    for _ in range(8):
        loss, scalars = model.training_loss(x)
        assert set(scalars) == {"l0", "l1", "l2"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] * 0.8
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher changed: {k}"
