"""Building blocks of CSE (Thomine & Snoussi): feature fusion of two backbone stages onto one
grid, the 1×1-conv embedder and the frozen, randomly initialised decoder whose reconstruction
loss keeps the embedding from collapsing. Widths and grids are derived from the backbone's
declared ``channels`` and ``strides``, never hard-coded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureFusion(nn.Module):
    """Bring every stage onto the grid of stride ``fuse_stride`` (finer maps average-pooled,
    coarser ones bilinearly upsampled) and concatenate along channels.

    Paper (B3 at 224²): 136×14×14 and 384×7×7 → 520×14×14.
    """

    def __init__(self, channels: list[int], strides: list[int], fuse_stride: int) -> None:
        super().__init__()
        for s in strides:
            if max(s, fuse_stride) % min(s, fuse_stride):
                raise ValueError(f"stage stride {s} and fuse stride {fuse_stride} must divide each other")
        self.strides = list(strides)
        self.fuse_stride = int(fuse_stride)
        self.out_channels = int(sum(channels))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: list of (N, C_i, H/s_i, W/s_i) → (N, ΣC_i, H/fuse_stride, W/fuse_stride)."""
        out = []
        for f, s in zip(feats, self.strides, strict=True):
            if s < self.fuse_stride:
                k = self.fuse_stride // s
                f = F.avg_pool2d(f, kernel_size=k, stride=k)
            elif s > self.fuse_stride:
                f = F.interpolate(f, scale_factor=float(s // self.fuse_stride), mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)


def reduction_widths(c_in: int, embed_dim: int) -> list[int]:
    """Channel widths of the embedder: halve from ``c_in`` while staying above ``embed_dim``,
    then ``embed_dim`` (paper: 520 → 260 → 130 → 64)."""
    widths = [c_in]
    c = c_in // 2
    while c > embed_dim and len(widths) < 3:
        widths.append(c)
        c //= 2
    widths.append(embed_dim)
    return widths


class Embedder(nn.Module):
    """Stack of 1×1 conv + BatchNorm + ReLU reducing channels, a linear 1×1 conv to
    ``embed_dim`` (no ReLU: a signed embedding lets the push loss reach negative cosines), then
    2×2 average pooling to the deepest stage's grid (64×7×7 at 224², 64×8×8 at 256²)."""

    def __init__(self, c_in: int, embed_dim: int, pool: int) -> None:
        super().__init__()
        widths = reduction_widths(c_in, embed_dim)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-2], widths[1:-1], strict=True):
            layers += [nn.Conv2d(a, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(widths[-2], widths[-1], 1))
        self.body = nn.Sequential(*layers)
        self.pool = int(pool)
        self.widths = widths

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) → (N, embed_dim, h/pool, w/pool)."""
        e = self.body(fused)
        if self.pool > 1:
            e = F.avg_pool2d(e, kernel_size=self.pool, stride=self.pool)
        return e


class FrozenDecoder(nn.Module):
    """Randomly initialised and never trained (CSE): maps the embedding back to the fused deep
    features. Because it cannot adapt, the embedder must keep enough information for a fixed
    random map to reconstruct the features, which keeps the embedding diverse instead of
    collapsing to a constant under the pull loss."""

    def __init__(self, embed_dim: int, c_out: int, upsample: int, seed: int = 0) -> None:
        super().__init__()
        widths = list(reversed(reduction_widths(c_out, embed_dim)))
        # the random init comes from its own seeded generator so it does not depend on what
        # else was built before it (and is reproducible across runs)
        gen = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            conv = nn.Conv2d(a, b, 1)
            bound = (6.0 / a) ** 0.5  # He-uniform keeps the activation scale through ReLUs
            with torch.no_grad():
                conv.weight.copy_(torch.empty_like(conv.weight).uniform_(-bound, bound, generator=gen))
                conv.bias.zero_()
            layers.append(conv)
            if i < len(widths) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.upsample = int(upsample)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, embed_dim, g, g) → (N, c_out, g·upsample, g·upsample)."""
        if self.upsample > 1:
            emb = F.interpolate(emb, scale_factor=float(self.upsample), mode="nearest")
        return self.body(emb)
