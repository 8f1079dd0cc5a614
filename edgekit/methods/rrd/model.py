"""Residual reverse distillation (RRD; facts from Thomine & Snoussi, "Distillation-based fabric
anomaly detection"; our own code) and its domain-generalisation variant.

    teacher (frozen) ──► stages t_1..t_L (shallow → deep)
        │  PooledFusion (avg-pool to the deepest stage + 1×1 convs)
        │  ConvAttention → SSPCAB (own MSE reconstruction loss)
        │  one-class embedding (stride-2 residual block)
        ▼
    student decoder (lighter mirror of the teacher's stages, deep → shallow)
        ▲  ShallowResidual: for each stage i in ``residual_stages`` a gated, half-resolution,
        │  low-rank hint of t_i is added to the decoder's hidden state just before the decoder
        │  stage that reconstructs t_i (see components.py for why this cannot copy anomalies)
    loss = Σ_l w_l · mean(1 − cos(t_l, s_l)) + sspcab_loss_weight · MSE(SSPCAB in, out)
           with adaptive w_l (see loss.py)
    score: per-layer 1 − cos maps → upsample → sum → Gaussian → image score = max

DG variant (``residual: false``): identical but without any residual path, so the student
depends only on the compact code and must model deeper, category-independent descriptors; the
trainer's ``--data`` given several times trains it on several categories at once.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from edgekit.config.base import StrictModel
from edgekit.config.recipe import Recipe
from edgekit.errors import ConfigError
from edgekit.methods import METHODS
from edgekit.methods.base import AnomalyModel, MethodPlugin
from edgekit.methods.rd.components import ResBlock, StudentDecoder
from edgekit.methods.rrd.components import SSPCAB, ConvAttention, PooledFusion, ShallowResidual
from edgekit.methods.rrd.loss import (
    AdaptiveLayerWeights,
    sspcab_reconstruction_loss,
    weighted_distillation_loss,
)
from edgekit.methods.rrd.scoring import DistillationModel, DistillationScorer, cosine_distance_maps


class RrdConfig(StrictModel):
    """Hyper-parameters of residual RD. Defaults are the generic ones used for every product."""

    type: Literal["rrd"] = "rrd"
    # code channels = embed_factor × deepest teacher stage channels
    embed_factor: float = Field(1.0, gt=0, le=8)
    # student decoder width relative to the teacher's stage widths (< 1: lighter student)
    decoder_width: float = Field(0.5, gt=0, le=4)
    # residual teacher→student path; false = domain-generalisation variant (no residual path)
    residual: bool = True
    # which extracted stages (0 = shallowest of backbone.layers) feed the residual path
    residual_stages: tuple[int, ...] = (0,)
    # width of the low-rank squeeze of each residual hint (small limits what can be copied)
    residual_channels: int = Field(8, ge=1, le=256)
    # initial pre-tanh value of each residual gate
    residual_gate_init: float = Field(0.1, ge=-3.0, le=3.0)
    # SSPCAB sub-kernel size k, dilation d (receptive field 2k + 2d + 1), SE reduction ratio
    sspcab_kernel: int = Field(1, ge=1, le=7)
    sspcab_dilation: int = Field(1, ge=0, le=8)
    sspcab_reduction: int = Field(8, ge=1, le=64)
    # weight of SSPCAB's own reconstruction loss (MSE between its input and output)
    sspcab_loss_weight: float = Field(0.1, ge=0.0, le=10.0)
    # adaptive per-layer loss weights w_l ∝ 1 / EMA(L_l), Σ w_l = L; momentum of that EMA
    adaptive_weights: bool = True
    adaptive_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    combine: Literal["sum", "mean"] = "sum"


class ResidualReverseDistillation(DistillationModel):
    """Teacher → fusion/attention/SSPCAB bottleneck → light decoder with gated shallow residuals."""

    method_name = "rrd"

    def __init__(self, teacher: nn.Module, cfg: RrdConfig, smoothing_sigma: float, memory: Any = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        ch, st = list(teacher.channels), list(teacher.strides)
        self.n_layers = len(ch)
        embed = max(16, int(round(ch[-1] * cfg.embed_factor)))
        self.fusion = PooledFusion(ch, st, embed)
        self.attention = ConvAttention(embed)
        self.sspcab = SSPCAB(embed, cfg.sspcab_kernel, cfg.sspcab_dilation, cfg.sspcab_reduction)
        self.encode = ResBlock(embed, embed, stride=2)
        self.decoder = StudentDecoder(embed, ch, st, width=cfg.decoder_width)
        # residual hints keyed by the decoder stage index (deep → shallow order) they feed
        self.residual_at: dict[int, int] = {}
        self.residuals = nn.ModuleDict()
        if cfg.residual:
            for i in sorted(set(cfg.residual_stages)):
                j = self.n_layers - 1 - i  # decoder stage reconstructing teacher stage i
                hidden_in = embed if j == 0 else self.decoder.heads[j - 1].in_channels
                prev_stride = st[i + 1] if i + 1 < self.n_layers else st[-1] * 2
                self.residuals[str(j)] = ShallowResidual(
                    ch[i], hidden_in, cfg.residual_channels, prev_stride // st[i], cfg.residual_gate_init
                )
                self.residual_at[j] = i
        self.layer_weights = AdaptiveLayerWeights(self.n_layers, cfg.adaptive_momentum, cfg.adaptive_weights)
        weights = self.attach_memory(ch, memory, seed)  # recipe score.memory (None: none)
        self.scorer = DistillationScorer(smoothing_sigma, cfg.combine, n_layers=len(ch) + (weights is not None),
                                         map_stride=int(st[0]), weights=weights)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def _teacher(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [f.detach() for f in self.teacher(x)]

    def _student(self, t: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Returns (student features shallow → deep, SSPCAB input, SSPCAB output)."""
        fused = self.attention(self.fusion(t))
        rec = self.sspcab(fused)
        h = self.encode(rec)
        outs = []
        for j, (stage, head) in enumerate(zip(self.decoder.stages, self.decoder.heads)):
            if j in self.residual_at:  # static structure decided at build time
                h = h + self.residuals[str(j)](t[self.residual_at[j]])
            h = stage(h)
            outs.append(head(h))
        return outs[::-1], fused, rec

    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        t = self._teacher(x)
        s, fused, rec = self._student(t)
        distill, losses, w = weighted_distillation_loss(t, s, self.layer_weights, update=self.training)
        ssp = sspcab_reconstruction_loss(fused, rec)
        total = distill + self.cfg.sspcab_loss_weight * ssp
        logs = {f"l{i}": float(v.detach()) for i, v in enumerate(losses)}
        logs.update({f"w{i}": float(v) for i, v in enumerate(w)})
        logs["sspcab"] = float(ssp.detach())
        return total, logs

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer 1 − cos maps, (N, 1, h_l, w_l) each, shallow → deep."""
        t = self._teacher(x)
        return self.with_memory(t, cosine_distance_maps(t, self._student(t)[0]))


def check_stages(method: str, backbone: nn.Module, min_stages: int = 3) -> None:
    """ConfigError unless the backbone gives ≥ ``min_stages`` stages with doubling strides."""
    ch, st = list(backbone.channels), list(backbone.strides)
    name = getattr(backbone, "name", "backbone")
    if len(ch) < min_stages:
        raise ConfigError(
            f"method {method} needs {min_stages} feature stages but backbone {name} gives {len(ch)} "
            f"(set backbone.layers to three consecutive stages, e.g. [1, 2, 3])"
        )
    for a, b in zip(st, st[1:]):
        if b != 2 * a:
            raise ConfigError(
                f"method {method} needs consecutive feature stages (each stride 2× the previous); "
                f"backbone {name} strides are {st} (set backbone.layers to consecutive stages, e.g. [1, 2, 3])"
            )


@METHODS.register("rrd", family="distillation")
class RrdMethod(MethodPlugin):
    Config = RrdConfig
    family = "distillation"
    default_layers = (1, 2, 3)

    def build(self, recipe: Recipe, cfg: RrdConfig, backbone: nn.Module) -> AnomalyModel:
        check_stages("rrd", backbone)
        n = len(backbone.channels)
        if cfg.residual:
            bad = [i for i in cfg.residual_stages if not 0 <= i < n]
            if bad:
                raise ConfigError(
                    f"method.residual_stages: {bad} out of range for {n} stages (use indices 0..{n - 1})"
                )
        return ResidualReverseDistillation(backbone, cfg, recipe.score.smoothing_sigma, recipe.score.memory,
                                           recipe.train.seed)
