"""Building blocks of reverse distillation (Deng & Li, CVPR 2022): the one-class bottleneck
embedding (OCBE) that fuses multi-scale teacher features into a compact code, and the student
decoder that mirrors the teacher's stages. Widths adapt to the backbone's stage channels."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_act(c_in: int, c_out: int, k: int = 3, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Basic residual block; ``stride`` 2 halves the resolution."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(c_in, c_out, 3, stride), conv_bn_act(c_out, c_out, 3, 1, act=False))
        self.skip = (
            nn.Identity() if stride == 1 and c_in == c_out else conv_bn_act(c_in, c_out, 1, stride, act=False)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class MultiScaleFusion(nn.Module):
    """Bring every teacher stage to the deepest stage's resolution with stride-2 3×3 convs,
    concatenate and fuse with a 1×1 conv (shared by OCBE and MSFF)."""

    def __init__(self, channels: list[int], strides: list[int], out_channels: int) -> None:
        super().__init__()
        deepest = strides[-1]
        self.down = nn.ModuleList()
        in_total = 0
        for c, s in zip(channels, strides):
            blocks, cur = [], c
            while s < deepest:  # each step halves the resolution and doubles the width
                blocks.append(conv_bn_act(cur, cur * 2, 3, 2))
                cur, s = cur * 2, s * 2
            self.down.append(nn.Sequential(*blocks) if blocks else nn.Identity())
            in_total += cur
        self.fuse = conv_bn_act(in_total, out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.fuse(torch.cat([d(f) for d, f in zip(self.down, feats)], dim=1))


class OneClassBottleneck(nn.Module):
    """OCBE: fused multi-scale features → compact code at half the deepest resolution."""

    def __init__(self, channels: list[int], strides: list[int], embed_channels: int) -> None:
        super().__init__()
        self.fusion = MultiScaleFusion(channels, strides, embed_channels)
        self.encode = ResBlock(embed_channels, embed_channels, stride=2)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.encode(self.fusion(feats))


class UpBlock(nn.Module):
    """×2 transposed-conv upsampling followed by a residual block."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        self.block = ResBlock(c_out, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.up(x))


class StudentDecoder(nn.Module):
    """Mirror of the teacher's stages: from the code (stride 2×deepest) up to each teacher stage,
    with a 1×1 projection head per stage producing that stage's channel count.

    ``width`` scales the decoder's internal channels (students must stay light for the device).
    """

    def __init__(self, embed_channels: int, channels: list[int], strides: list[int], width: float = 1.0) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.heads = nn.ModuleList()
        cur = embed_channels
        prev_stride = strides[-1] * 2
        for c, s in zip(reversed(channels), reversed(strides)):
            inner = max(8, int(round(c * width)))
            ups = []
            while prev_stride > s:
                ups.append(UpBlock(cur, inner))
                cur, prev_stride = inner, prev_stride // 2
            self.stages.append(nn.Sequential(*ups) if ups else ResBlock(cur, inner))
            cur = inner
            self.heads.append(nn.Conv2d(inner, c, 1))
        self.out_channels = list(channels)

    def forward(self, code: torch.Tensor, residuals: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """Returns student features ordered like the teacher's (shallow → deep).

        ``residuals`` (deep → shallow, None where unused) are added to a stage's hidden state
        before its head; used by residual RD."""
        outs = []
        x = code
        for i, (stage, head) in enumerate(zip(self.stages, self.heads)):
            x = stage(x)
            if residuals is not None and residuals[i] is not None:
                x = x + residuals[i]
            outs.append(head(x))
        return outs[::-1]
