"""MRKD training objective: Σ over distilled layers of mean(1 − cos(teacher, student)) — the
plain reverse-distillation loss; the masking makes the task harder, not the loss different."""

from __future__ import annotations

import torch

from edgekit.methods.rd.scoring import layer_cosine_losses


def masked_distillation_loss(
    teacher: list[torch.Tensor], student: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Args: teacher, student lists of (N, C_l, H_l, W_l). Returns (total scalar, per-layer)."""
    losses = layer_cosine_losses(teacher, student)
    return torch.stack(losses).sum(), losses
