"""Contract every method plug-in fulfils (training side).

An ``AnomalyModel`` takes normalised float images ``(N, 3, H, W)`` and, in eval mode, returns
``AnomalyOutput(map=(N, 1, H, W) float32, score=(N,) float32)``. The same forward is what
``compile.onnx_export`` traces (with uint8 → float normalisation put in front), so it must be
traceable: no Python branching on tensor values, no numpy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from edgekit.config.base import StrictModel
from edgekit.config.recipe import Recipe


class AnomalyOutput(NamedTuple):
    map: torch.Tensor  # (N, 1, H, W) float32, higher = more anomalous
    score: torch.Tensor  # (N,) float32 image score


class AnomalyModel(nn.Module):
    """Base of all methods. Subclasses implement ``forward`` and ``training_loss``."""

    method_name: str = "?"

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss on a batch of good images ``(N, 3, H, W)``; returns (loss, scalars to log)."""
        raise NotImplementedError

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimiser updates (frozen teachers excluded)."""
        return (p for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> AnomalyModel:
        super().train(mode)
        # frozen pretrained encoders always stay in eval mode (BatchNorm statistics fixed)
        for m in self.frozen_modules():
            m.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def after_training(self, images: Iterable[torch.Tensor]) -> dict[str, Any]:
        """Hook run once after the last epoch with batches of training images (e.g. k-means
        for CSE). Returns facts to store in the run (JSON-serialisable)."""
        return {}

    def fit_score_normalisation(self, images: Iterable[torch.Tensor], mode: str = "position") -> dict[str, Any]:
        """Hook run after training with batches of good training images: fit score statistics
        that become part of the model (distillation: per-position or per-layer map normalisation,
        ``mode`` = recipe ``score.layer_norm``). Returns facts to store in the run; the default
        fits nothing."""
        return {}

    def export_info(self) -> dict[str, Any]:
        """Extra manifest facts (e.g. CSE centre count and hash)."""
        return {}


class MethodPlugin:
    """Registered class per method: config model + factory."""

    Config: type[StrictModel]
    family: str = "distillation"
    # feature stages (timm ``out_indices``) used when the recipe's backbone.layers is unset
    default_layers: tuple[int, ...] = (1, 2, 3)

    def layers_for(self, recipe: Recipe) -> tuple[int, ...]:
        """Feature stages to extract for this recipe."""
        return tuple(recipe.backbone.layers) if recipe.backbone.layers else tuple(self.default_layers)

    def build(self, recipe: Recipe, cfg: Any, backbone: nn.Module) -> AnomalyModel:
        raise NotImplementedError
