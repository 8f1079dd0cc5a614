"""Building blocks of residual reverse distillation (RRD; facts from Thomine & Snoussi,
"Distillation-based fabric anomaly detection"; our own code):

- ``PooledFusion``: multi-scale teacher features brought to the deepest stage's resolution by
  average pooling and fused with 1×1 convolutions (the paper's 1×1 bottleneck embedding).
- ``ConvAttention``: channel + spatial attention block applied to the fused code.
- ``SSPCAB``: self-supervised predictive convolutional attention block (Ristea et al., CVPR 2022):
  a masked convolution whose receptive field has its centre hidden, so every output position is
  predicted from four k×k sub-kernels in the corners, followed by squeeze-and-excitation channel
  attention. Trained with its own reconstruction loss (MSE between its input and output).
- ``ShallowResidual``: the teacher→student residual path passing *selected* shallow information:
  a shallow teacher stage is average-pooled by 2, squeezed to a few channels by a 1×1 conv,
  expanded back and scaled by a learned tanh gate, then added to the decoder's hidden state
  *before* the decoder stage that reconstructs that teacher stage. The student thus gets a
  low-resolution, low-rank hint of the shallow texture (so it can spend its capacity on
  high-level texture features) but cannot copy the full-resolution features (so it still fails
  to reconstruct anomalies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.methods.rd.components import conv_bn_act


class PooledFusion(nn.Module):
    """Average-pool each teacher stage to the deepest stage's resolution, project it with a 1×1
    conv, concatenate and fuse with a 1×1 conv.

    Args:
        channels: teacher stage channels, shallow → deep.
        strides: teacher stage strides (each a power-of-two multiple of the previous).
        out_channels: fused code channels.
    Input: list of (N, C_l, H_l, W_l); output (N, out_channels, H_deep, W_deep).
    """

    def __init__(self, channels: list[int], strides: list[int], out_channels: int) -> None:
        super().__init__()
        deepest = strides[-1]
        self.factors = [deepest // s for s in strides]
        per_stage = max(8, out_channels // len(channels))
        self.proj = nn.ModuleList(conv_bn_act(c, per_stage, 1) for c in channels)
        self.fuse = conv_bn_act(per_stage * len(channels), out_channels, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for f, k, proj in zip(feats, self.factors, self.proj):
            if k > 1:  # static per-stage factor: traces to a fixed AveragePool
                f = F.avg_pool2d(f, k, k)
            parts.append(proj(f))
        return self.fuse(torch.cat(parts, dim=1))


class ConvAttention(nn.Module):
    """Channel attention (shared MLP on average- and max-pooled descriptors) followed by spatial
    attention (7×7 conv on the channel-mean and channel-max maps), CBAM-style.

    Input and output: (N, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 8, spatial_kernel: int = 7) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = torch.amax(x, dim=(2, 3), keepdim=True)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        desc = torch.cat([x.mean(dim=1, keepdim=True), torch.amax(x, dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(desc))


class SSPCAB(nn.Module):
    """Masked convolution + squeeze-and-excitation.

    The masked receptive field is ``2k + 2d + 1`` wide: four ``k × k`` sub-kernels sit in its
    corners at distance ``d`` from the hidden centre. Implemented as four valid convolutions on
    shifted windows of one padded input (cheaper than a dense kernel with zeros), summed, ReLU,
    then SE channel attention with reduction ``reduction``.

    Args:
        channels: C (input = output channels).
        kernel: k, sub-kernel size.
        dilation: d, gap between the centre and the sub-kernels.
        reduction: SE reduction ratio.
    Input and output: (N, C, H, W) float32.
    """

    def __init__(self, channels: int, kernel: int = 1, dilation: int = 1, reduction: int = 8) -> None:
        super().__init__()
        self.k = kernel
        self.d = dilation
        self.pad = kernel + dilation
        self.corners = nn.ModuleList(nn.Conv2d(channels, channels, kernel) for _ in range(4))
        hidden = max(4, channels // reduction)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        p, k = self.pad, self.k
        xp = F.pad(x, (p, p, p, p))
        far = k + 2 * self.d + 1  # offset of the bottom/right sub-kernels in padded coordinates
        rows = (0, far)
        cols = (0, far)
        out = None
        i = 0
        for r in rows:
            for c in cols:
                y = self.corners[i](xp[:, :, r : r + h + k - 1, c : c + w + k - 1])
                out = y if out is None else out + y
                i += 1
        out = F.relu(out)
        return out * self.se(out)


class ShallowResidual(nn.Module):
    """Gated low-rank, half-resolution hint of a shallow teacher stage for the decoder.

    Args:
        teacher_channels: channels of the shallow teacher stage.
        hidden_channels: channels of the decoder hidden state it is added to.
        squeeze_channels: width of the low-rank squeeze (small on purpose: limits what passes).
        pool: spatial reduction factor from the teacher stage to the decoder hidden state.
        gate_init: initial value of the learned gate's pre-activation (tanh).
    Input: (N, teacher_channels, H, W); output (N, hidden_channels, H/pool, W/pool).
    """

    def __init__(
        self, teacher_channels: int, hidden_channels: int, squeeze_channels: int, pool: int, gate_init: float
    ) -> None:
        super().__init__()
        self.pool = pool
        self.squeeze = conv_bn_act(teacher_channels, squeeze_channels, 1)
        self.expand = nn.Conv2d(squeeze_channels, hidden_channels, 1)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            t = F.avg_pool2d(t, self.pool, self.pool)
        return torch.tanh(self.gate) * self.expand(self.squeeze(t))
