"""Residual reverse distillation (edgekit/methods/rrd): shapes per backbone, residual path vs DG
variant, adaptive weights, SSPCAB loss, training progress, determinism and ONNX parity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from edgekit.backbones import create_backbone
from edgekit.config.recipe import method_config, recipe_from_dict
from edgekit.errors import ConfigError
from edgekit.methods import METHODS
from edgekit.methods.rrd.model import ResidualReverseDistillation, RrdConfig

SIZE = 64


def build(method: dict[str, Any], backbone: str = "tf_efficientnet_lite0", layers: list[int] | None = None,
          seed: int = 0) -> ResidualReverseDistillation:
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
    """Tiny synthetic 'fabric': oriented stripes + noise, normalised-ish (N, 3, 64, 64)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    base = torch.sin((xx + 0.5 * yy) * 0.8)
    imgs = base.expand(n, 3, SIZE, SIZE) + 0.2 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return imgs.float()


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18", "efficientnet_b0"])
@pytest.mark.parametrize("residual", [True, False])
def test_shapes(backbone: str, residual: bool) -> None:
    m = build({"type": "rrd", "residual": residual}, backbone)
    x = texture_batch(2)
    m.train()
    loss, logs = m.training_loss(x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"l0", "l1", "l2", "w0", "w1", "w2", "sspcab"} <= set(logs)
    m.eval()
    with torch.no_grad():
        out = m(x)
    assert out.map.shape == (2, 1, SIZE, SIZE) and out.map.dtype == torch.float32
    assert out.score.shape == (2,)
    # image score is the max of the (smoothed) map, not the mean
    torch.testing.assert_close(out.score, out.map.amax(dim=(1, 2, 3)))
    # student decoder mirrors the teacher's stage channels
    assert [h.out_channels for h in m.decoder.heads][::-1] == list(m.teacher.channels)


@pytest.mark.slow
def test_shapes_wide_resnet50() -> None:
    m = build({"type": "rrd"}, "wide_resnet50_2").eval()
    with torch.no_grad():
        out = m(texture_batch(1))
    assert out.map.shape == (1, 1, SIZE, SIZE) and out.score.shape == (1,)


def test_student_lighter_than_teacher_and_teacher_frozen() -> None:
    m = build({"type": "rrd"})
    student = sum(p.numel() for p in m.trainable_parameters())
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert m.frozen_modules() == [m.teacher]
    m.train()
    assert not m.teacher.training  # BatchNorm statistics of the teacher stay fixed
    assert student > 0


def test_dg_variant_has_no_residual_path() -> None:
    res = build({"type": "rrd", "residual": True})
    dg = build({"type": "rrd", "residual": False})
    assert len(res.residuals) == 1 and res.residual_at == {2: 0}
    assert len(dg.residuals) == 0 and dg.residual_at == {}
    assert not any("residual" in n for n, _ in dg.named_parameters())
    # with a residual path the decoder sees the shallow teacher stage directly: perturbing only
    # stage 0 changes the student's shallowest reconstruction; in DG it changes it only through
    # the bottleneck, so zeroing the bottleneck's view of stage 0 makes the DG student blind to it
    x = texture_batch(1)
    for model, expect_change in ((res, True), (dg, False)):
        model.eval()
        with torch.no_grad():
            t = model._teacher(x)
            t2 = [t[0] + 1.0, t[1], t[2]]
            fusion_forward = model.fusion.forward
            # freeze the bottleneck input: both runs see the original features there
            model.fusion.forward = lambda _f, fwd=fusion_forward, orig=t: fwd(orig)  # type: ignore[method-assign]
            try:
                s1 = model._student(t)[0][0]
                s2 = model._student(t2)[0][0]
            finally:
                model.fusion.forward = fusion_forward  # type: ignore[method-assign]
        changed = not torch.allclose(s1, s2)
        assert changed == expect_change


def test_residual_stages_configurable_and_checked() -> None:
    m = build({"type": "rrd", "residual_stages": [0, 1]})
    assert sorted(m.residual_at.items()) == [(1, 1), (2, 0)]
    with torch.no_grad():
        assert m.eval()(texture_batch(1)).map.shape == (1, 1, SIZE, SIZE)
    with pytest.raises(ConfigError, match="residual_stages"):
        build({"type": "rrd", "residual_stages": [3]})


def test_unsupported_backbone_stage_count_is_config_error() -> None:
    with pytest.raises(ConfigError, match="needs 3 feature stages"):
        build({"type": "rrd"}, layers=[2, 3])
    with pytest.raises(ConfigError, match="consecutive"):
        build({"type": "rrd"}, layers=[1, 2, 4])


def test_config_strict_with_defaults() -> None:
    cfg = RrdConfig()
    assert cfg.residual and cfg.adaptive_weights and 0 < cfg.adaptive_momentum < 1
    with pytest.raises(ConfigError, match="method.residual_chanels: unknown key"):
        recipe_from_dict({"name": "t", "method": {"type": "rrd", "residual_chanels": 4}})
    with pytest.raises(ConfigError, match="method.sspcab_loss_weight"):
        recipe_from_dict({"name": "t", "method": {"type": "rrd", "sspcab_loss_weight": -1}})


def test_adaptive_weights_survive_state_dict_and_freeze_in_eval() -> None:
    m = build({"type": "rrd", "adaptive_momentum": 0.5})
    x = texture_batch(2)
    m.train()
    m.training_loss(x)
    ema = m.layer_weights.loss_ema.clone()
    assert bool(m.layer_weights.initialised)
    m.eval()
    m.training_loss(x)  # validation pass: running means must not move
    torch.testing.assert_close(m.layer_weights.loss_ema, ema)
    sd = m.state_dict()
    assert "layer_weights.loss_ema" in sd and "layer_weights.initialised" in sd
    m2 = build({"type": "rrd", "adaptive_momentum": 0.5}, seed=1)
    m2.load_state_dict(sd)
    torch.testing.assert_close(m2.layer_weights.weights(), m.layer_weights.weights())


def test_loss_decreases_on_tiny_texture_set() -> None:
    m = build({"type": "rrd"})
    x = texture_batch(4)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=5e-3, betas=(0.5, 0.999))
    m.train()
    losses = []
    for _ in range(12):
        loss, logs = m.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(sum(logs[f"l{i}"] for i in range(3)))
    assert losses[-1] < 0.7 * losses[0], losses


def _train_steps(seed: int) -> tuple[list[float], torch.Tensor]:
    m = build({"type": "rrd"}, seed=seed)
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-3)
    m.train()
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


@pytest.mark.parametrize("residual", [True, False])
def test_onnx_export_matches_torch(tmp_path, residual: bool) -> None:
    from edgekit.compile.onnx_export import ExportWrapper, export_onnx, ort_run
    from edgekit.data.preprocess import PreprocessSpec

    m = build({"type": "rrd", "residual": residual})
    # a few training steps so BatchNorm statistics and gates are not at their init values
    opt = torch.optim.Adam(list(m.trainable_parameters()), lr=1e-3)
    m.train()
    for _ in range(2):
        loss, _ = m.training_loss(texture_batch(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    spec = PreprocessSpec(size=SIZE, mean=m.teacher.mean, std=m.teacher.std)
    path = export_onnx(m, spec, tmp_path / "rrd.onnx")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(2, SIZE, SIZE, 3), dtype=np.uint8)
    maps, scores = ort_run(path, tiles, threads=2)
    with torch.no_grad():
        tmap, tscore = ExportWrapper(m, spec).eval()(torch.from_numpy(tiles))
    np.testing.assert_allclose(maps, tmap[:, 0].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(scores, tscore.numpy(), atol=1e-4, rtol=0)
