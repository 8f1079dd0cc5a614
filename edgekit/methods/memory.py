"""Nearest-normal-patch memory for the distillation methods (recipe ``score.memory``).

A student that reconstructs teacher features also reconstructs thin structures it never saw
(1–2 px cracks on ELPV cells): its 1 − cos map stays low there. The distance of a teacher patch
feature to its nearest *normal* patch (PatchCore, Roth et al. 2022) does not have that failure.
This module adds that distance as one more map next to the per-layer 1 − cos maps, so the
distillation scorer normalises it per position like the other layers and the image score stays
the max of the smoothed sum.

Graph (all export-friendly, one matrix product): per selected teacher layer ``f_l / rms_l``
(``Div``: the first op of the branch, so the INT8 quantizer keeps the whole branch in float, see
``edgekit.compile.quantize.scoring_tail``), bilinear ``Resize`` to the finest selected layer,
``Concat``, local ``AveragePool`` (PatchCore's neighbourhood aggregation), then
``d² = ‖x‖² + min_m(‖c_m‖² − 2 x·c_m)``: ``MatMul`` with the bank (an initializer, stored as
``−2 Cᵀ``) + ``ReduceMin``; ``sqrt``.

Fitting (``PatchMemory.fit``) is fast on 2 CPU cores: a seeded sample of ``patches_per_tile``
positions per training tile, then either a greedy k-centre coreset (PatchCore's selection, on a
seeded random projection of the sample) or k-means (Lloyd on the sample, seeded random init).
Anomalib's greedy coreset over *all* patches is the step that takes hours here; sampling first
bounds it by ``size × n_sample``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import ConfigError

FIT_METHODS = ("coreset", "kmeans")
_CHUNK = 8192  # rows per distance block while fitting (8192 × 4096 float32 = 128 MB at most)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def nearest_sq_distances(x: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance of every row of ``x`` (N, D) to its nearest row of ``centres`` (K, D) and
    that row's index, computed in blocks. Returns ((N,) float32 ≥ 0, (N,) int64)."""
    c_sq = (centres * centres).sum(1)
    dmin, arg = [], []
    for i in range(0, x.shape[0], _CHUNK):
        xb = x[i : i + _CHUNK]
        d = torch.addmm(c_sq.unsqueeze(0), xb, centres.T, alpha=-2.0)  # ‖c‖² − 2 x·c
        v, j = d.min(1)
        dmin.append((v + (xb * xb).sum(1)).clamp_min_(0.0))
        arg.append(j)
    return torch.cat(dmin), torch.cat(arg)


def greedy_coreset(x: torch.Tensor, k: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """Indices (k,) of a greedy k-centre coreset of the rows of ``x`` (N, D): each step adds the
    row farthest from those chosen (PatchCore's selection). Distances are taken on a seeded
    Gaussian projection to ``proj_dim`` dimensions when D is larger (Johnson–Lindenstrauss, as
    PatchCore does); the first row is drawn from ``seed``. Deterministic for a seed and input."""
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"coreset of {k} rows from {n}")
    g = _generator(seed)
    z = x
    if dim > proj_dim:
        proj = torch.randn(dim, proj_dim, generator=g) / proj_dim**0.5
        z = x @ proj
    z_sq = (z * z).sum(1)
    first = int(torch.randint(n, (1,), generator=g))
    chosen = torch.empty(k, dtype=torch.int64)
    chosen[0] = first
    dmin = (z_sq - 2.0 * (z @ z[first]) + z_sq[first]).clamp_min_(0.0)
    for i in range(1, k):
        j = int(torch.argmax(dmin))
        chosen[i] = j
        torch.minimum(dmin, (z_sq - 2.0 * (z @ z[j]) + z_sq[j]).clamp_min_(0.0), out=dmin)
    return chosen


def kmeans_centres(x: torch.Tensor, k: int, seed: int = 0, iters: int = 10) -> torch.Tensor:
    """k-means centres (k, D) of the rows of ``x`` (N, D): seeded random distinct rows as the
    start, then ``iters`` Lloyd steps (sums in float64); an empty cluster keeps its centre."""
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means with {k} centres on {n} rows")
    c = x[torch.randperm(n, generator=_generator(seed))[:k]].clone()
    for _ in range(iters):
        _, labels = nearest_sq_distances(x, c)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x.double())
        counts = torch.bincount(labels, minlength=k).double()
        filled = counts > 0
        new = c.clone()
        new[filled] = (sums[filled] / counts[filled].unsqueeze(1)).float()
        if torch.equal(new, c):
            break
        c = new
    return c


class PatchMemory(nn.Module):
    """Distance of each teacher patch to its nearest normal patch, as a (N, 1, h, w) map at the
    finest selected layer's resolution. Before ``fit`` the bank is empty and the forward refuses
    to run; the bank and the per-layer scales are buffers (checkpoint, ONNX initializers)."""

    def __init__(self, channels: Sequence[int], layers: Sequence[int], pool: int = 3) -> None:
        """Args:
            channels: channels of every teacher stage the method reads (shallow → deep).
            layers: indices into those stages whose features form a patch (0 = shallowest).
            pool: side of the local average (odd; 1 = none).
        """
        super().__init__()
        layers = tuple(int(i) for i in layers)
        if not layers or any(not 0 <= i < len(channels) for i in layers) or len(set(layers)) != len(layers):
            raise ConfigError(
                f"score.memory.layers: {list(layers)} must be distinct indices of the teacher's {len(channels)} "
                f"feature stages (0..{len(channels) - 1}, 0 = shallowest); e.g. [1, 2]")
        if pool < 1 or pool % 2 == 0:
            raise ConfigError(f"score.memory.pool: {pool} must be an odd number >= 1 (e.g. 3)")
        self.layers = layers
        self.pool = int(pool)
        self.widths = [int(channels[i]) for i in layers]
        self.dim = int(sum(self.widths))
        self.register_buffer("layer_rms", torch.ones(len(layers)))
        self.register_buffer("bank_t", torch.zeros(self.dim, 0))  # −2 Cᵀ, (D, M)
        self.register_buffer("bank_sq", torch.zeros(0))  # ‖c_m‖², (M,)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # the bank's size comes from the checkpoint
        for name in ("bank_t", "bank_sq"):
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name], dtype=torch.float32,
                                                     device=self.layer_rms.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return int(self.bank_sq.numel())

    def centres(self) -> torch.Tensor:
        """The bank entries (M, D) in the scaled feature space."""
        return (self.bank_t / -2.0).T.contiguous()

    def embed(self, feats: Sequence[torch.Tensor], scaled: bool = True) -> torch.Tensor:
        """Patch features (N, D, h, w) from the teacher's stage features (shallow → deep)."""
        sel = [feats[i] for i in self.layers]
        if scaled:
            sel = [f / self.layer_rms[j] for j, f in enumerate(sel)]  # Div: starts the float tail
        h = max(int(f.shape[-2]) for f in sel)
        w = max(int(f.shape[-1]) for f in sel)
        sel = [f if (int(f.shape[-2]), int(f.shape[-1])) == (h, w)
               else F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False) for f in sel]
        x = torch.cat(sel, dim=1) if len(sel) > 1 else sel[0]
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
        return x

    def distance_sq(self, x: torch.Tensor) -> torch.Tensor:
        """Squared distance of each patch of ``x`` (N, D, h, w) to its nearest entry → (N, 1, h, w)."""
        if not self.size:
            raise ConfigError("score.memory: the patch memory is empty; train the run again "
                              "(the bank is fitted after the last epoch)")
        n, d, h, w = x.shape
        flat = x.flatten(2).transpose(1, 2)  # (N, hw, D)
        near = torch.amin(torch.matmul(flat, self.bank_t) + self.bank_sq, dim=-1)  # (N, hw)
        d2 = near + (flat * flat).sum(-1)
        return d2.clamp_min(0.0).reshape(n, 1, h, w)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Distance map (N, 1, h, w) of the teacher features ``feats``."""
        return self.distance_sq(self.embed(feats)).sqrt()

    @torch.no_grad()
    def fit(self, feature_batches: Iterable[Sequence[torch.Tensor]], size: int, method: str = "coreset",
            patches_per_tile: int = 128, iters: int = 10, seed: int = 0) -> dict[str, Any]:
        """Fill the bank from the teacher features of good tiles.

        Args:
            feature_batches: per batch, the teacher's stage features (N, C_l, h_l, w_l), shallow → deep.
            size: bank entries (fewer if the sample is smaller).
            method: "coreset" (greedy k-centre) or "kmeans".
            patches_per_tile: positions sampled per tile (all of them where the map is smaller).
            iters: Lloyd iterations (kmeans).
            seed: seeds the position sample, the projection and the initialisation.
        Returns:
            facts for the run (bank size, dimensions, sample size, per-layer scales, sha256).
        """
        if method not in FIT_METHODS:
            raise ConfigError(f"score.memory.fit: {method!r} unknown; use one of {', '.join(FIT_METHODS)}")
        g = _generator(seed)
        rows: list[torch.Tensor] = []
        n_tiles = 0
        for feats in feature_batches:
            x = self.embed([f.detach().float().cpu() for f in feats], scaled=False)
            n, d, h, w = x.shape
            flat = x.flatten(2).transpose(1, 2)  # (N, hw, D)
            take = min(int(patches_per_tile), h * w)
            for t in range(n):
                idx = torch.randperm(h * w, generator=g)[:take] if take < h * w else torch.arange(h * w)
                rows.append(flat[t, idx])
            n_tiles += n
        if not rows:
            raise ConfigError("score.memory: no training tiles to fit the patch memory from")
        sample = torch.cat(rows)
        # per-layer scale: each selected layer contributes the same mean energy to a patch
        widths = self.widths
        bounds = np.cumsum([0, *widths])
        rms = torch.stack([sample[:, a:b].pow(2).sum(1).mean().sqrt().clamp_min(1e-6)
                           for a, b in zip(bounds[:-1], bounds[1:])])
        scale = torch.cat([torch.full((w,), float(r)) for w, r in zip(widths, rms)])
        sample = sample / scale
        k = min(int(size), int(sample.shape[0]))
        if method == "coreset":
            centres = sample[greedy_coreset(sample, k, seed)]
        else:
            centres = kmeans_centres(sample, k, seed, iters)
        dev = self.layer_rms.device
        self.layer_rms = rms.float().to(dev)
        self.bank_t = (-2.0 * centres.T).contiguous().to(dev)
        self.bank_sq = (centres * centres).sum(1).to(dev)
        d2, _ = nearest_sq_distances(sample, centres)
        return {"memory": {
            "fit": method, "size": k, "dim": self.dim, "layers": list(self.layers), "pool": self.pool,
            "n_tiles": n_tiles, "n_patches_sampled": int(sample.shape[0]),
            "layer_rms": [round(float(r), 6) for r in rms],
            "mean_sample_distance": round(float(d2.sqrt().mean()), 6),
            "bank_sha256": bank_sha256(centres),
        }}


def bank_sha256(centres: torch.Tensor) -> str:
    """sha256 of the bank entries as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(centres.detach().cpu().numpy(), dtype="<f4").tobytes()).hexdigest()


def build_memory(channels: Sequence[int], cfg: Any) -> PatchMemory | None:
    """The recipe's ``score.memory`` block → a PatchMemory (None when the block is absent)."""
    if cfg is None:
        return None
    return PatchMemory(channels, cfg.layers, cfg.pool)
