"""CSE training losses (Thomine & Snoussi): contrastive cosine loss on embedding pairs plus the
reconstruction loss through the frozen random decoder. Total = λ · contrastive + reconstruction
(paper λ = 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of flattened embeddings: (P, ...) × (P, ...) → (P,)."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


def pull_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Good/good pairs are pulled together: mean of 1 − cos; 0 for identical pairs."""
    return (1.0 - pair_cosine(a, b)).mean()


def push_loss(a: torch.Tensor, b: torch.Tensor, margin: float) -> torch.Tensor:
    """Good/defect pairs are pushed apart until their cosine is at most ``margin``:
    mean of max(0, cos − margin)."""
    return F.relu(pair_cosine(a, b) - margin).mean()


def contrastive_loss(
    good_a: torch.Tensor, good_b: torch.Tensor, anchor: torch.Tensor, defect: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair-averaged contrastive loss over P_pull good/good and P_push good/defect pairs.

    Args:
        good_a, good_b: (P_pull, E, g, g) embeddings of good pairs (P_pull may be 0).
        anchor, defect: (P_push, E, g, g) embeddings of a good image and a defective one.
    Returns:
        (loss, pull, push) where loss weights every pair equally.
    """
    n_pull, n_push = good_a.shape[0], anchor.shape[0]
    zero = anchor.new_zeros(())
    pull = pull_loss(good_a, good_b) if n_pull else zero
    push = push_loss(anchor, defect, margin) if n_push else zero
    total = (pull * n_pull + push * n_push) / max(1, n_pull + n_push)
    return total, pull, push


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between decoded and true fused features, both (N, C, h, w), divided
    by the target's variance over the batch.

    The division (ours, not the paper's) makes the term scale-free: B3 (SiLU) and Lite0 (ReLU6)
    features differ in magnitude, and without it the balance λ · contrastive vs reconstruction
    would depend on the backbone. 1.0 = no better than predicting the mean feature."""
    scale = target.detach().var(dim=(0, 2, 3)).mean().clamp_min(1e-8)
    return F.mse_loss(recon, target) / scale
