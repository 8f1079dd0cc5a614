"""Building blocks of masked reverse distillation (MRKD; facts from the MRKD papers: multi-scale
feature fusion, an SCConv + SimAM bottleneck, feature masking; our own code):

- MSFF = ``edgekit.methods.rd.components.MultiScaleFusion`` (stride-2 3×3 convs bring shallow
  maps down, concatenate, 1×1 fuse) — shared with plain RD, not duplicated.
- ``SpatialReconstructionUnit`` / ``ChannelReconstructionUnit`` / ``SCConv``: SCConv (Li et al.,
  CVPR 2023) — group-norm gating separates informative from redundant spatial content and
  cross-reconstructs them; then a split / squeeze / group-wise + point-wise transform / softmax
  fuse over channels.
- ``SimAM`` (Yang et al., ICML 2021): parameter-free attention from the closed-form minimal
  energy of each neuron against the others in its channel.
- ``FeatureMasking`` (FMM): in training, random spatial positions of the fused features are
  zeroed and a small 3×3 / 1×1 generative module restores them, so the student learns to
  *restore* normal features rather than copy its input (and cannot copy anomalies). In eval
  mode no mask is drawn (deterministic, traceable); the generative module still runs so the
  downstream layers see the same kind of features they were trained on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgekit.methods.rd.components import conv_bn_act


def _groups_for(channels: int, wanted: int) -> int:
    """Largest group count ≤ wanted that divides ``channels``."""
    g = max(1, min(wanted, channels))
    while channels % g:
        g -= 1
    return g


class SpatialReconstructionUnit(nn.Module):
    """SRU: group-norm gating + cross reconstruction.

    Weights ``W = sigmoid(GN(X) · γ/Σγ)``; positions with ``W ≥ threshold`` are informative
    (``W1 = 1`` there, else ``W``), the rest redundant (``W2 = 0`` there, else ``W``). The two
    gated copies are split into channel halves and cross-added. Uses ``torch.where`` (exports
    to ONNX Where), no Python branching on values.

    Input and output: (N, C, H, W), C even.
    """

    def __init__(self, channels: int, groups: int = 4, threshold: float = 0.5) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"SRU needs an even channel count, got {channels}")
        self.gn = nn.GroupNorm(_groups_for(channels, groups), channels)
        self.threshold = float(threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gn(x)
        gamma = self.gn.weight.abs()
        w_gamma = (gamma / gamma.sum().clamp_min(1e-8)).view(1, -1, 1, 1)
        w = torch.sigmoid(g * w_gamma)
        informative = torch.where(w >= self.threshold, torch.ones_like(w), w)
        redundant = torch.where(w >= self.threshold, torch.zeros_like(w), w)
        x1, x2 = informative * x, redundant * x
        x11, x12 = torch.chunk(x1, 2, dim=1)
        x21, x22 = torch.chunk(x2, 2, dim=1)
        return torch.cat([x11 + x22, x12 + x21], dim=1)


class ChannelReconstructionUnit(nn.Module):
    """CRU: split channels (α upper / 1−α lower), squeeze each by ``squeeze``; upper → group-wise
    k×k conv + point-wise conv (rich features), lower → point-wise conv concatenated with itself
    (cheap reuse); the two results are fused with a per-channel softmax over their global means.

    Input and output: (N, C, H, W)."""

    def __init__(self, channels: int, alpha: float = 0.5, squeeze: int = 2, groups: int = 2, kernel: int = 3) -> None:
        super().__init__()
        self.up_c = max(1, int(round(channels * alpha)))
        self.low_c = channels - self.up_c
        if self.low_c < 1:
            raise ValueError(f"CRU alpha {alpha} leaves no lower channels for {channels}")
        up_sq = max(2, self.up_c // squeeze)
        low_sq = max(1, self.low_c // squeeze)
        if low_sq >= channels:
            raise ValueError(f"CRU squeeze {squeeze} too small for {channels} channels")
        self.squeeze_up = nn.Conv2d(self.up_c, up_sq, 1, bias=False)
        self.squeeze_low = nn.Conv2d(self.low_c, low_sq, 1, bias=False)
        g = _groups_for(up_sq, groups)
        self.gwc = nn.Conv2d(up_sq, channels, kernel, padding=kernel // 2, groups=g)
        self.pwc_up = nn.Conv2d(up_sq, channels, 1, bias=False)
        self.pwc_low = nn.Conv2d(low_sq, channels - low_sq, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, low = torch.split(x, [self.up_c, self.low_c], dim=1)
        up, low = self.squeeze_up(up), self.squeeze_low(low)
        y1 = self.gwc(up) + self.pwc_up(up)
        y2 = torch.cat([self.pwc_low(low), low], dim=1)
        s = torch.stack([y1.mean(dim=(2, 3)), y2.mean(dim=(2, 3))], dim=0)  # (2, N, C)
        beta = torch.softmax(s, dim=0).unsqueeze(-1).unsqueeze(-1)
        return beta[0] * y1 + beta[1] * y2


class SCConv(nn.Module):
    """SCConv = SRU followed by CRU. Input and output: (N, C, H, W)."""

    def __init__(self, channels: int, gn_groups: int = 4, alpha: float = 0.5, squeeze: int = 2, groups: int = 2) -> None:
        super().__init__()
        self.sru = SpatialReconstructionUnit(channels, gn_groups)
        self.cru = ChannelReconstructionUnit(channels, alpha, squeeze, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cru(self.sru(x))


class SimAM(nn.Module):
    """Parameter-free attention: each activation is scaled by ``sigmoid(1/e*)`` where
    ``1/e* = (x − μ)² / (4(σ² + λ)) + 0.5`` with μ, σ² the channel's spatial mean and variance
    (over n = H·W − 1 other neurons). Input and output: (N, C, H, W)."""

    def __init__(self, lam: float = 1e-4) -> None:
        super().__init__()
        self.lam = float(lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        v = d.sum(dim=(2, 3), keepdim=True) / n  # n ≥ 3: inputs ≥ 32 px give ≥ 2×2 maps at stride 16
        return x * torch.sigmoid(d / (4.0 * (v + self.lam)) + 0.5)


class FeatureMasking(nn.Module):
    """FMM: random spatial masks (training only) + generative restoration module.

    Args:
        channels: C of the fused features.
        mask_ratio: fraction of spatial positions zeroed per sample in training.
        hidden: width of the generative module (3×3 conv-BN-ReLU then 1×1 conv).
    Input and output: (N, C, H, W).
    """

    def __init__(self, channels: int, mask_ratio: float = 0.3, hidden: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)
        hidden = hidden or channels
        self.generate = nn.Sequential(conv_bn_act(channels, hidden, 3), nn.Conv2d(hidden, channels, 1))

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) float mask of kept positions (1) for a batch ``x``; training only."""
        keep = torch.rand(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device) >= self.mask_ratio
        return keep.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mask_ratio > 0:  # module state, not tensor values: traces fine
            x = x * self.mask(x)
        return self.generate(x)


class SCSAttBottleneck(nn.Module):
    """SCSAtt bottleneck: SCConv → SimAM → one-class embedding (stride-2 residual block).

    Input (N, C, H, W) fused features; output (N, C, H/2, W/2) compact code."""

    def __init__(self, channels: int, encode: nn.Module, gn_groups: int = 4, alpha: float = 0.5) -> None:
        super().__init__()
        self.scconv = SCConv(channels, gn_groups, alpha)
        self.simam = SimAM()
        self.encode = encode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(self.simam(self.scconv(x)))


def even(n: float) -> int:
    """Round up to an even integer ≥ 16 (SRU halves channels; group norms want divisibility)."""
    return max(16, 2 * math.ceil(n / 2))


__all__ = [
    "ChannelReconstructionUnit",
    "FeatureMasking",
    "SCConv",
    "SCSAttBottleneck",
    "SimAM",
    "SpatialReconstructionUnit",
    "even",
]
