"""RRD training objective: adaptively weighted per-layer cosine distillation loss plus the SSPCAB
self-supervised reconstruction loss.

Adaptive layer weights (our rule, documented because the paper leaves the exact form open):
each layer's loss ``L_l`` is tracked by an exponential moving average ``m_l`` (momentum ``β``,
initialised with the first batch), and the weights are

    w_l = (1 / m_l) / mean_k(1 / m_k)          so that  Σ_l w_l = number of layers.

The weighted terms ``w_l · L_l`` then have equal running means, i.e. no layer dominates the
gradient (this is the gradient of Σ_l log L_l up to the slowly moving EMA: every layer is pushed
to make the same *relative* progress). The EMA lives in buffers, so it survives checkpoints and
resume; it only moves in training mode (the early-stop validation pass does not touch it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.methods.rd.scoring import layer_cosine_losses


class AdaptiveLayerWeights(nn.Module):
    """Inverse-running-mean layer weights.

    Args:
        n_layers: number of distilled layers L.
        momentum: EMA momentum β in [0, 1); 0 uses only the current batch.
        enabled: False gives constant weights 1 (plain RD sum).
    """

    def __init__(self, n_layers: int, momentum: float = 0.9, enabled: bool = True) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.enabled = enabled
        self.register_buffer("loss_ema", torch.ones(n_layers))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, losses: torch.Tensor) -> None:
        """Fold a batch's per-layer losses ``(L,)`` into the running means."""
        losses = losses.detach().to(self.loss_ema)
        if not bool(self.initialised):
            self.loss_ema.copy_(losses)
            self.initialised.fill_(True)
        else:
            self.loss_ema.mul_(self.momentum).add_((1.0 - self.momentum) * losses)

    def weights(self) -> torch.Tensor:
        """Current weights ``(L,)`` (no gradient), summing to L."""
        if not self.enabled:
            return torch.ones_like(self.loss_ema)
        inv = 1.0 / self.loss_ema.clamp_min(1e-8)
        return (inv / inv.mean()).detach()


def weighted_distillation_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor], weighting: AdaptiveLayerWeights, update: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Σ_l w_l · mean(1 − cos(t_l, s_l)).

    Args:
        teacher, student: lists of (N, C_l, H_l, W_l) float tensors.
        weighting: the model's AdaptiveLayerWeights.
        update: fold this batch into the running means first (training mode only).
    Returns: (total scalar, per-layer losses, weights (L,)).
    """
    losses = layer_cosine_losses(teacher, student)
    stacked = torch.stack(losses)
    if update and weighting.enabled:
        weighting.update(stacked)
    w = weighting.weights()
    return (w * stacked).sum(), losses, w


def sspcab_reconstruction_loss(block_in: torch.Tensor, block_out: torch.Tensor) -> torch.Tensor:
    """SSPCAB's self-supervised loss: mean squared error between its input and output
    ``(N, C, H, W)``."""
    return F.mse_loss(block_out, block_in)
