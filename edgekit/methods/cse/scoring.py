"""CSE scoring: minimum cosine distance of an image embedding to k good-product centres.

The centres are a registered buffer, so the ONNX export carries them as an initializer and the
graph outputs the score directly (no sklearn or side files on the device). Cosine distance is
computed as ½‖â − ĉ‖² of unit vectors, which equals 1 − cos but keeps float32 precision when
embeddings are nearly parallel (the usual case for good parts)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _unit(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x / torch.clamp(torch.sqrt((x * x).sum(dim=dim, keepdim=True)), min=1e-12)


def cosine_distance_to_centres(emb: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """1 − cos between flattened embeddings and centres.

    Args:
        emb: (N, E, g, g) float32 embeddings.
        centres: (K, E, g, g) float32 centres.
    Returns:
        (N, K) float32 distances in [0, 2].
    """
    e = _unit(emb.flatten(1), 1).unsqueeze(1)  # (N, 1, D)
    c = _unit(centres.flatten(1), 1).unsqueeze(0)  # (1, K, D)
    return 0.5 * ((e - c) ** 2).sum(dim=2)


def cell_cosine_distance(emb: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-cell 1 − cos along channels: (N, E, g, g) × (N, E, g, g) → (N, 1, g, g)."""
    return 0.5 * ((_unit(emb, 1) - _unit(ref, 1)) ** 2).sum(dim=1, keepdim=True)


class CentreScorer(nn.Module):
    """Holds the centres (buffer ``centres`` (K, E, g, g)) and turns embeddings into
    (map, score): score = min distance over centres; map = per-cell distance to the nearest
    centre's cell, bilinearly upsampled to the input size (for heat-maps)."""

    def __init__(self, k: int, embed_dim: int, grid: int) -> None:
        super().__init__()
        self.register_buffer("centres", torch.zeros(k, embed_dim, grid, grid))
        # 0 until k-means ran; a run that scores with unfitted centres is refused by callers
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))

    @property
    def k(self) -> int:
        return int(self.centres.shape[0])

    def set_centres(self, centres: torch.Tensor) -> None:
        """Replace the centres (K may change, e.g. after ``edgekit recluster --k``)."""
        self.centres = centres.detach().to(self.centres.device, torch.float32).clone()
        self.fitted.fill_(1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a reclustered checkpoint may hold a different K than the recipe: adopt its shape
        key = prefix + "centres"
        if key in state_dict and state_dict[key].shape != self.centres.shape:
            self.centres = torch.zeros_like(state_dict[key], device=self.centres.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, emb: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """emb (N, E, g, g), size (H, W) → map (N, 1, H, W), score (N,)."""
        dist = cosine_distance_to_centres(emb, self.centres)
        score, nearest = torch.min(dist, dim=1)
        cell = cell_cosine_distance(emb, self.centres[nearest])
        amap = F.interpolate(cell, size=size, mode="bilinear", align_corners=False)
        return amap, score
