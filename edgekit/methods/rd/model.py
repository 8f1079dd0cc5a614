"""Plain reverse distillation (Deng & Li, CVPR 2022): frozen pretrained teacher encoder,
trainable one-class bottleneck + student decoder; loss = Σ_layers mean(1 − cos); anomaly map =
Σ upsampled per-layer 1 − cos, Gaussian-smoothed; image score = max of the map."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.config.base import StrictModel
from edgekit.config.recipe import Recipe
from edgekit.methods import METHODS
from edgekit.methods.base import AnomalyModel, MethodPlugin
from edgekit.methods.rd.components import OneClassBottleneck, StudentDecoder
from edgekit.methods.rd.scoring import DistillationModel, DistillationScorer, cosine_distance_maps


class RdConfig(StrictModel):
    type: Literal["rd"] = "rd"
    # code channels = embed_factor × deepest teacher stage channels
    embed_factor: float = Field(2.0, gt=0, le=8)
    # decoder width relative to the teacher's stage widths (1.0 = mirror)
    decoder_width: float = Field(1.0, gt=0, le=4)
    combine: Literal["sum", "mean"] = "sum"


class ReverseDistillation(DistillationModel):
    """Teacher → OCBE → student decoder; eval forward returns (map, max score)."""

    method_name = "rd"

    def __init__(self, teacher: nn.Module, cfg: RdConfig, smoothing_sigma: float, memory: Any = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        ch, st = list(teacher.channels), list(teacher.strides)
        embed = max(16, int(round(ch[-1] * cfg.embed_factor)))
        self.bottleneck = OneClassBottleneck(ch, st, embed)
        self.decoder = StudentDecoder(embed, ch, st, width=cfg.decoder_width)
        weights = self.attach_memory(ch, memory, seed)  # recipe score.memory (None: none)
        self.scorer = DistillationScorer(smoothing_sigma, cfg.combine, n_layers=len(ch) + (weights is not None),
                                         map_stride=int(st[0]), weights=weights)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = [f.detach() for f in self.teacher(x)]
        s = self.decoder(self.bottleneck(t))
        return t, s

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t, s = self._features(x)
        losses = [m.mean() for m in cosine_distance_maps(t, s)]
        total = torch.stack(losses).sum()
        return total, {f"l{i}": float(v.detach()) for i, v in enumerate(losses)}

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer 1 − cos maps, (N, 1, h_l, w_l) each, shallow → deep (then the memory's map)."""
        t, s = self._features(x)
        return self.with_memory(t, cosine_distance_maps(t, s))


@METHODS.register("rd", family="distillation")
class RdMethod(MethodPlugin):
    Config = RdConfig
    family = "distillation"
    default_layers = (1, 2, 3)

    def build(self, recipe: Recipe, cfg: RdConfig, backbone: nn.Module) -> AnomalyModel:
        return ReverseDistillation(backbone, cfg, recipe.score.smoothing_sigma, recipe.score.memory,
                                   recipe.train.seed)
