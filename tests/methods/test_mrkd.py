"""Masked reverse distillation (edgekit/methods/mrkd): shapes per backbone, FMM only in
training, training progress, determinism and ONNX parity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from edgekit.backbones import create_backbone
from edgekit.config.recipe import method_config, recipe_from_dict
from edgekit.errors import ConfigError
from edgekit.methods import METHODS
from edgekit.methods.mrkd.model import MaskedReverseDistillation

SIZE = 64


def build(method: dict[str, Any], backbone: str = "tf_efficientnet_lite0", layers: list[int] | None = None,
          seed: int = 0) -> MaskedReverseDistillation:
    """Build through the registry exactly like the trainer (random-init backbone)."""
    bb: dict[str, Any] = {"name": backbone, "weights": "none"}
    if layers is not None:
        bb["layers"] = layers
    recipe = recipe_from_dict(
        {"name": "t", "method": method, "backbone": bb, "input": {"size": SIZE}, "score": {"smoothing_sigma": 1.0}}
    )
    plugin = METHODS.get(recipe.method["type"])()
    torch.manual_seed(seed)
    fx = create_backbone(recipe.backbone, plugin.layers_for(recipe))
    return plugin.build(recipe, method_config(recipe), fx)


def texture_batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Tiny synthetic 'fabric': oriented stripes + noise (N, 3, 64, 64)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    base = torch.sin((xx + 0.5 * yy) * 0.8)
    return (base.expand(n, 3, SIZE, SIZE) + 0.2 * torch.randn(n, 3, SIZE, SIZE, generator=g)).float()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18", "efficientnet_b0"])
def test_shapes(backbone: str) -> None:
    m = build({"type": "mrkd"}, backbone)
    x = texture_batch(2)
    m.train()
    loss, logs = m.training_loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) == {"l0", "l1", "l2"}
    torch.testing.assert_close(loss.detach(), torch.tensor(sum(logs.values())), rtol=1e-5, atol=1e-5)
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert out.map.shape == (2, 1, SIZE, SIZE) and out.score.shape == (2,)
    torch.testing.assert_close(out.score, out.map.amax(dim=(1, 2, 3)))
    assert [h.out_channels for h in m.decoder.heads][::-1] == list(m.teacher.channels)


@pytest.mark.slow
def test_shapes_wide_resnet50() -> None:
    m = build({"type": "mrkd"}, "wide_resnet50_2").eval()
    with torch.no_grad():
        out = m(texture_batch(1))
    assert out.map.shape == (1, 1, SIZE, SIZE) and out.score.shape == (1,)


def test_fmm_masks_only_in_training() -> None:
    m = build({"type": "mrkd", "mask_ratio": 0.5})
    x = texture_batch(2)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
    torch.testing.assert_close(a.map, b.map, rtol=0, atol=0)  # eval: no random masks
    # training: two passes differ only by the random mask (BatchNorm uses batch stats both times)
    m.train()
    with torch.no_grad():
        la, _ = m.training_loss(x)
        lb, _ = m.training_loss(x)
    assert float(la) != float(lb)
    m0 = build({"type": "mrkd", "mask_ratio": 0.0}).train()
    with torch.no_grad():
        l0a, _ = m0.training_loss(x)
        l0b, _ = m0.training_loss(x)
    assert float(l0a) == pytest.approx(float(l0b), abs=1e-6)


def test_unsupported_backbone_stage_count_is_config_error() -> None:
    with pytest.raises(ConfigError, match="method mrkd needs 3 feature stages"):
        build({"type": "mrkd"}, layers=[3, 4])


def test_config_strict() -> None:
    with pytest.raises(ConfigError, match="method.mask_ratio"):
        recipe_from_dict({"name": "t", "method": {"type": "mrkd", "mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match="unknown key"):
        recipe_from_dict({"name": "t", "method": {"type": "mrkd", "residual": True}})


def test_loss_decreases_on_tiny_texture_set() -> None:
    m = build({"type": "mrkd"})
    x = texture_batch(4)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=5e-3, betas=(0.5, 0.999))
    m.train()
    losses = []
    for _ in range(12):
        loss, _ = m.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def _train_steps(seed: int) -> tuple[list[float], torch.Tensor]:
    m = build({"type": "mrkd"}, seed=seed)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-3)
    m.train()
    torch.manual_seed(seed)  # the FMM masks come from the global generator, like the trainer's seed
    out = []
    for i in range(2):
        loss, _ = m.training_loss(texture_batch(2, seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    m.eval()
    with torch.no_grad():
        return out, m(texture_batch(1, seed=5)).map


def test_deterministic_with_seed() -> None:
    a_loss, a_map = _train_steps(0)
    b_loss, b_map = _train_steps(0)
    assert a_loss == b_loss
    torch.testing.assert_close(a_map, b_map, rtol=0, atol=0)


def test_onnx_export_matches_torch(tmp_path) -> None:
    from edgekit.compile.onnx_export import ExportWrapper, export_onnx, ort_run
    from edgekit.data.preprocess import PreprocessSpec

    m = build({"type": "mrkd"})
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-3)
    m.train()
    for _ in range(2):
        loss, _ = m.training_loss(texture_batch(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    spec = PreprocessSpec(size=SIZE, mean=m.teacher.mean, std=m.teacher.std)
    path = export_onnx(m, spec, tmp_path / "mrkd.onnx")
    tiles = np.random.default_rng(0).integers(0, 256, size=(2, SIZE, SIZE, 3), dtype=np.uint8)
    maps, scores = ort_run(path, tiles, threads=2)
    with torch.no_grad():
        tmap, tscore = ExportWrapper(m, spec).eval()(torch.from_numpy(tiles))
    np.testing.assert_allclose(maps, tmap[:, 0].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores, tscore.numpy(), atol=1e-4, rtol=0)
