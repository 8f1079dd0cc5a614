"""Masked reverse distillation (MRKD; facts from the MRKD papers; our own code).

    teacher (frozen) ──► stages t_1..t_L (shallow → deep)
        │  MSFF: stride-2 3×3 convs bring shallow maps down, concatenate, 1×1 fuse
        │  FMM: training only — random spatial masks on the fused features; a 3×3/1×1
        │       generative module restores them (runs unmasked in eval)
        │  SCSAtt: SCConv (SRU + CRU) → SimAM → one-class embedding (stride-2 residual block)
        ▼
    student decoder (mirror of the teacher's stages, width ``decoder_width``)
    loss = Σ_l mean(1 − cos(t_l, s_l))
    score: per-layer 1 − cos maps → upsample → sum → Gaussian → image score = max

The eval forward is deterministic and traceable: masking depends only on ``self.training``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.config.base import StrictModel
from edgekit.config.recipe import Recipe
from edgekit.methods import METHODS
from edgekit.methods.base import AnomalyModel, MethodPlugin
from edgekit.methods.mrkd.components import FeatureMasking, SCSAttBottleneck, even
from edgekit.methods.mrkd.loss import masked_distillation_loss
from edgekit.methods.mrkd.scoring import DistillationModel, DistillationScorer, cosine_distance_maps
from edgekit.methods.rd.components import MultiScaleFusion, ResBlock, StudentDecoder
from edgekit.methods.rrd.model import check_stages


class MrkdConfig(StrictModel):
    """Hyper-parameters of masked RD. Defaults are the generic ones used for every product."""

    type: Literal["mrkd"] = "mrkd"
    # fused/code channels = embed_factor × deepest teacher stage channels (rounded up to even)
    embed_factor: float = Field(1.0, gt=0, le=8)
    # student decoder width relative to the teacher's stage widths
    decoder_width: float = Field(0.5, gt=0, le=4)
    # FMM: fraction of fused-feature positions masked per training sample
    mask_ratio: float = Field(0.3, ge=0.0, lt=1.0)
    # FMM generative module width relative to the fused channels
    fmm_width: float = Field(0.5, gt=0, le=4)
    # SCConv: group-norm groups of the SRU; CRU split ratio alpha (upper part share)
    scconv_gn_groups: int = Field(4, ge=1, le=64)
    scconv_alpha: float = Field(0.5, gt=0.0, lt=1.0)
    combine: Literal["sum", "mean"] = "sum"


class MaskedReverseDistillation(DistillationModel):
    """Teacher → MSFF → FMM → SCSAtt bottleneck → student decoder."""

    method_name = "mrkd"

    def __init__(self, teacher: nn.Module, cfg: MrkdConfig, smoothing_sigma: float, memory: Any = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        ch, st = list(teacher.channels), list(teacher.strides)
        embed = even(ch[-1] * cfg.embed_factor)
        self.msff = MultiScaleFusion(ch, st, embed)
        self.fmm = FeatureMasking(embed, cfg.mask_ratio, max(8, int(round(embed * cfg.fmm_width))))
        self.bottleneck = SCSAttBottleneck(
            embed, ResBlock(embed, embed, stride=2), cfg.scconv_gn_groups, cfg.scconv_alpha
        )
        self.decoder = StudentDecoder(embed, ch, st, width=cfg.decoder_width)
        weights = self.attach_memory(ch, memory, seed)  # recipe score.memory (None: none)
        self.scorer = DistillationScorer(smoothing_sigma, cfg.combine, n_layers=len(ch) + (weights is not None),
                                         map_stride=int(st[0]), weights=weights)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def _features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            t = [f.detach() for f in self.teacher(x)]
        s = self.decoder(self.bottleneck(self.fmm(self.msff(t))))
        return t, s

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t, s = self._features(x)
        total, losses = masked_distillation_loss(t, s)
        return total, {f"l{i}": float(v.detach()) for i, v in enumerate(losses)}

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer 1 − cos maps, (N, 1, h_l, w_l) each, shallow → deep (then the memory's map)."""
        t, s = self._features(x)
        return self.with_memory(t, cosine_distance_maps(t, s))


@METHODS.register("mrkd", family="distillation")
class MrkdMethod(MethodPlugin):
    Config = MrkdConfig
    family = "distillation"
    default_layers = (1, 2, 3)

    def build(self, recipe: Recipe, cfg: MrkdConfig, backbone: nn.Module) -> AnomalyModel:
        check_stages("mrkd", backbone)
        return MaskedReverseDistillation(backbone, cfg, recipe.score.smoothing_sigma, recipe.score.memory,
                                         recipe.train.seed)
