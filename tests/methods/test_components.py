"""Building blocks of rrd and mrkd: SSPCAB, attention, residual hint, adaptive weights, SCConv
(SRU/CRU), SimAM and FMM behave as documented."""

from __future__ import annotations

import pytest
import torch

from edgekit.methods.mrkd.components import (
    ChannelReconstructionUnit,
    FeatureMasking,
    SCConv,
    SimAM,
    SpatialReconstructionUnit,
)
from edgekit.methods.rrd.components import SSPCAB, ConvAttention, PooledFusion, ShallowResidual
from edgekit.methods.rrd.loss import AdaptiveLayerWeights, sspcab_reconstruction_loss


@pytest.mark.parametrize(("k", "d"), [(1, 1), (2, 1), (1, 0), (3, 2)])
def test_sspcab_shape_and_centre_is_masked(k: int, d: int) -> None:
    torch.manual_seed(0)
    block = SSPCAB(8, kernel=k, dilation=d).eval()
    x = torch.randn(1, 8, 17, 17)
    assert block(x).shape == x.shape
    # receptive field: the four corner sub-kernels only; the centre (and the ring of width d
    # around it) must not influence the output at the centre
    x = x.clone().requires_grad_(True)
    c = 8
    # the SE branch pools globally, so probe the pre-SE masked conv response directly
    p = block.pad
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    far = k + 2 * d + 1
    y = sum(
        block.corners[i](xp[:, :, r : r + 17 + k - 1, cc : cc + 17 + k - 1])
        for i, (r, cc) in enumerate([(0, 0), (0, far), (far, 0), (far, far)])
    )
    y[0, :, c, c].sum().backward()
    g = x.grad[0].abs().sum(0)
    hidden = g[c - d : c + d + 1, c - d : c + d + 1]
    assert float(hidden.sum()) == 0.0
    corner = g[c - d - k, c - d - k]
    assert float(corner) > 0.0
    size = 2 * k + 2 * d + 1
    nz = torch.nonzero(g)
    assert int(nz[:, 0].max() - nz[:, 0].min()) + 1 == size
    assert int((g > 0).sum()) == 4 * k * k


def test_sspcab_has_channel_attention_and_learns_reconstruction() -> None:
    torch.manual_seed(0)
    block = SSPCAB(8)
    assert any(isinstance(m, torch.nn.Sigmoid) for m in block.se)
    # a smooth field is predictable from its neighbours: the MSE loss must go down
    yy, xx = torch.meshgrid(torch.linspace(0, 3, 16), torch.linspace(0, 3, 16), indexing="ij")
    x = torch.stack([torch.sin(xx + i * yy) for i in range(8)]).unsqueeze(0).relu()
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = sspcab_reconstruction_loss(x, block(x))
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_attention_and_fusion_shapes() -> None:
    att = ConvAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert att(x).shape == x.shape
    fusion = PooledFusion([24, 40, 112], [4, 8, 16], 64)
    feats = [torch.randn(2, 24, 16, 16), torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    assert fusion(feats).shape == (2, 64, 4, 4)


def test_shallow_residual_is_low_rank_half_resolution_and_gated() -> None:
    r = ShallowResidual(24, 32, squeeze_channels=4, pool=2, gate_init=0.0).eval()
    t = torch.randn(2, 24, 16, 16)
    out = r(t)
    assert out.shape == (2, 32, 8, 8)
    assert float(out.detach().abs().max()) == 0.0  # closed gate passes nothing
    with torch.no_grad():
        r.gate.fill_(1.0)
        out = r(t)
    # everything passes through a 4-channel squeeze: rank of the channel mixing ≤ 4
    flat = out.permute(1, 0, 2, 3).reshape(32, -1)
    assert int(torch.linalg.matrix_rank(flat - r.expand.bias.view(-1, 1) * torch.tanh(r.gate))) <= 4


def test_adaptive_weights_move_toward_balance() -> None:
    w = AdaptiveLayerWeights(3, momentum=0.9)
    losses = torch.tensor([0.6, 0.2, 0.1])
    for _ in range(50):
        w.update(losses)
    weights = w.weights()
    assert float(weights.sum()) == pytest.approx(3.0, rel=1e-5)
    # the dominant layer gets the smallest weight and the weighted terms become equal
    assert weights[0] < weights[1] < weights[2]
    contrib = weights * losses
    assert float(contrib.max() - contrib.min()) < 1e-4
    # after the losses change, the weights follow (EMA), i.e. move toward the new balance
    before = w.weights().clone()
    for _ in range(5):
        w.update(torch.tensor([0.1, 0.2, 0.6]))
    after = w.weights()
    assert after[0] > before[0] and after[2] < before[2]
    off = AdaptiveLayerWeights(3, enabled=False)
    off.update(losses)
    torch.testing.assert_close(off.weights(), torch.ones(3))


def test_simam_has_no_parameters_and_highlights_outliers() -> None:
    s = SimAM()
    assert sum(p.numel() for p in s.parameters()) == 0
    x = torch.zeros(1, 2, 8, 8)
    x[0, :, 3, 3] = 5.0  # a distinctive neuron
    y = s(x)
    assert y.shape == x.shape
    gain = y / x.clamp_min(1e-6)
    # sigmoid(1/e*) ∈ (0.5, 1]: the distinctive neuron gets a gain close to 1
    assert float(gain[0, 0, 3, 3]) > 0.99
    z = torch.randn(2, 4, 6, 6)
    ratio = (s(z) / z)
    assert float(ratio.min()) >= 0.5 - 1e-6 and float(ratio.max()) <= 1.0 + 1e-6


def test_sru_gates_and_reconstructs() -> None:
    torch.manual_seed(0)
    sru = SpatialReconstructionUnit(16, groups=4)
    x = torch.randn(2, 16, 8, 8)
    y = sru(x)
    assert y.shape == x.shape
    # threshold below every weight: all positions informative (W1 = 1, W2 = 0) → identity
    all_info = SpatialReconstructionUnit(16, groups=4, threshold=-1.0)
    all_info.load_state_dict(sru.state_dict())
    torch.testing.assert_close(all_info(x), x)
    # threshold above every weight: all redundant (W1 = W2 = W) → halves of W·x cross-added
    all_red = SpatialReconstructionUnit(16, groups=4, threshold=2.0)
    all_red.load_state_dict(sru.state_dict())
    gamma = sru.gn.weight.abs()
    w = torch.sigmoid(sru.gn(x) * (gamma / gamma.sum()).view(1, -1, 1, 1))
    a, b = torch.chunk(w * x, 2, dim=1)
    torch.testing.assert_close(all_red(x), torch.cat([a + b, b + a], dim=1))
    # the default 0.5 threshold splits: sigmoid weights ≥ 0.5 exist and < 0.5 exist
    assert bool((w >= 0.5).any()) and bool((w < 0.5).any())
    assert not torch.allclose(y, x)
    with pytest.raises(ValueError):
        SpatialReconstructionUnit(15)


def test_cru_and_scconv_shapes_and_fusion_weights() -> None:
    torch.manual_seed(0)
    cru = ChannelReconstructionUnit(32, alpha=0.5, squeeze=2, groups=2)
    x = torch.randn(2, 32, 8, 8)
    assert cru(x).shape == x.shape
    assert cru.gwc.groups == 2
    sc = SCConv(32)
    assert sc(x).shape == x.shape
    # CRU is lighter than a dense 3×3 conv of the same width (that is its point)
    dense = 32 * 32 * 9
    assert sum(p.numel() for p in cru.parameters()) < dense


def test_fmm_only_active_in_training() -> None:
    torch.manual_seed(0)
    fmm = FeatureMasking(16, mask_ratio=0.5)
    x = torch.randn(4, 16, 8, 8)
    keep = fmm.mask(x)
    assert keep.shape == (4, 1, 8, 8)
    assert 0.3 < float(keep.mean()) < 0.7
    fmm.eval()
    with torch.no_grad():
        torch.testing.assert_close(fmm(x), fmm(x), rtol=0, atol=0)
        # eval = generator on the unmasked input
        torch.testing.assert_close(fmm(x), fmm.generate(x))
    fmm.train()
    seen: list[torch.Tensor] = []
    h = fmm.generate.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    fmm(x)
    h.remove()
    zeroed = (seen[0].abs().sum(1) == 0).float().mean()
    assert 0.3 < float(zeroed) < 0.7  # about mask_ratio of the positions were blanked
