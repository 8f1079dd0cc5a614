"""Shared distillation scoring: per-layer 1 − cosine maps → upsample → combine → Gaussian
smoothing → image score = max of the map. Used by rd, rrd and mrkd (export-friendly ops only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_distance_maps(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer 1 − cosine similarity along channels.

    Args:
        teacher, student: lists of (N, C_l, H_l, W_l) float tensors.
    Returns:
        list of (N, 1, H_l, W_l) maps in [0, 2].
    """
    return [
        (1.0 - F.cosine_similarity(t, s, dim=1, eps=1e-6)).unsqueeze(1) for t, s in zip(teacher, student)
    ]


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur with a fixed kernel (a buffer, so it exports as an initializer).
    Edge padding avoids the dark border zero padding would leave in the map."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        radius = max(1, math.ceil(3.0 * sigma)) if sigma > 0 else 0
        self.radius = radius
        if radius:
            x = torch.arange(-radius, radius + 1, dtype=torch.float32)
            k = torch.exp(-(x**2) / (2 * sigma**2))
            k = k / k.sum()
        else:
            k = torch.ones(1)
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.radius:
            return x
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), self.kernel_h)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), self.kernel_v)


class DistillationScorer(nn.Module):
    """Combine per-layer distance maps into an anomaly map and a max-based image score."""

    def __init__(self, sigma: float, combine: str = "sum") -> None:
        super().__init__()
        if combine not in ("sum", "mean"):
            raise ValueError(f"combine must be sum or mean, got {combine!r}")
        self.combine = combine
        self.smooth = GaussianSmoothing(sigma)

    def forward(self, layer_maps: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: layer_maps list of (N,1,h,w); size (H, W). Returns map (N,1,H,W), score (N,)."""
        up = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in layer_maps]
        amap = torch.stack(up, dim=0).sum(dim=0)
        if self.combine == "mean":
            amap = amap / len(up)
        amap = self.smooth(amap)
        score = torch.amax(amap, dim=(1, 2, 3))
        return amap, score


def layer_cosine_losses(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer training loss: mean over pixels of 1 − cos (the RD objective)."""
    return [m.mean() for m in cosine_distance_maps(teacher, student)]
