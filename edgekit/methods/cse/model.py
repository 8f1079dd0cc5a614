"""CSE — contrastively selected embeddings (Thomine & Snoussi), scored by the minimum cosine
distance to k good-product centres.

Frozen pretrained backbone (two stages, fused onto one grid) → trainable 1×1-conv embedder →
E×g×g embedding (64×7×7 at 224², 64×8×8 at 256²). Training pairs good/good embeddings (pull
together) and good/synthetic-defect embeddings (push apart below a margin); a frozen random
decoder reconstructs the deep features from the embedding so it stays informative. After
training, k-means over the training embeddings gives k centres (each snapped to the nearest real
embedding); they are a buffer, so the exported graph scores on its own.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from edgekit.config.base import StrictModel
from edgekit.config.recipe import Recipe
from edgekit.errors import ConfigError
from edgekit.methods import METHODS
from edgekit.methods.base import AnomalyModel, AnomalyOutput, MethodPlugin
from edgekit.methods.cse.cluster import centres_sha256, kmeans
from edgekit.methods.cse.components import Embedder, FeatureFusion, FrozenDecoder
from edgekit.methods.cse.loss import contrastive_loss, reconstruction_loss
from edgekit.methods.cse.scoring import CentreScorer
from edgekit.methods.cse.synthesis import synthesize

# memory the good-image feature cache may use (lite0 at 256²: 0.44 MB per image)
_CACHE_BYTES = 2 * 1024**3


class CseConfig(StrictModel):
    type: Literal["cse"] = "cse"
    # embedding channels (paper: 64)
    embed_dim: int = Field(64, ge=4, le=1024)
    # good/defect pairs are pushed apart until cos <= margin
    margin: float = Field(0.5, ge=-1.0, lt=1.0)
    # λ in total = λ · contrastive + reconstruction (paper: 10)
    contrastive_weight: float = Field(10.0, ge=0.0, le=1000.0)
    # number of k-means centres (1 = one good-product prototype)
    k: int = Field(1, ge=1, le=1024)
    # seed of the frozen random decoder's weights
    decoder_seed: int = 0


def module_sha256(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and float32 bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        a = t.detach().cpu().contiguous()
        h.update(name.encode() + b"\0" + str(tuple(a.shape)).encode() + b"\0")
        h.update(a.numpy().tobytes() if a.dtype != torch.bfloat16 else a.float().numpy().tobytes())
    return h.hexdigest()


class ContrastiveEmbeddings(AnomalyModel):
    """Backbone → fusion → embedder → centre scorer. Eval forward returns (per-cell distance
    map upsampled to the input, min cosine distance to the centres)."""

    method_name = "cse"

    def __init__(self, backbone: nn.Module, cfg: CseConfig, input_size: int, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        ch, st = list(backbone.channels), list(backbone.strides)
        embed_stride = st[-1]
        if input_size % embed_stride:
            raise ConfigError(f"input.size: {input_size} must be a multiple of the backbone's deepest stride {embed_stride}")
        # fuse on a grid twice as fine as the embedding, then 2×2-pool (paper: 14×14 → 7×7)
        fuse_stride = max(1, embed_stride // 2)
        self.fusion = FeatureFusion(ch, st, fuse_stride)
        c = self.fusion.out_channels
        self.embedder = Embedder(c, cfg.embed_dim, pool=embed_stride // fuse_stride)
        self.decoder = FrozenDecoder(cfg.embed_dim, c, upsample=embed_stride // fuse_stride, seed=cfg.decoder_seed)
        self.grid = input_size // embed_stride
        self.scorer = CentreScorer(cfg.k, cfg.embed_dim, self.grid)
        self.cfg = cfg
        self.seed = int(seed)
        # synthesis draws from default_rng([seed, step]); the counter is saved with the weights so
        # a resumed run continues the same defect sequence
        self.register_buffer("synth_step", torch.zeros((), dtype=torch.int64))
        # fused features of good training images by content hash: the backbone is frozen and in
        # eval mode, so they never change; only the synthetic defects need a backbone pass after
        # the first epoch (3x fewer backbone passes per step at batch 8). Not saved.
        self._feature_cache: dict[bytes, torch.Tensor] = {}
        self.register_buffer("mean", torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone, self.decoder]

    # ------------------------------------------------------------------ features / embedding
    def deep_features(self, x: torch.Tensor) -> torch.Tensor:
        """Fused frozen features: (N, 3, H, W) normalised → (N, C, 2g, 2g)."""
        with torch.no_grad():
            return self.fusion([f.detach() for f in self.backbone(x)])

    def cached_features(self, x: torch.Tensor) -> torch.Tensor:
        """``deep_features`` of good training images through the content-hash cache."""
        keys = [hashlib.blake2b(xi.numpy().tobytes(), digest_size=16).digest() for xi in x.detach().float().cpu()]
        missing = [i for i, k in enumerate(keys) if k not in self._feature_cache]
        if missing:
            feats = self.deep_features(x[missing])
            room = max(0, _CACHE_BYTES // max(1, feats[0].numel() * feats.element_size()) - len(self._feature_cache))
            if room < len(missing):  # dataset larger than the cache: plain pass, no caching
                return self.deep_features(x) if len(missing) < len(keys) else feats
            for i, f in zip(missing, feats, strict=True):
                self._feature_cache[keys[i]] = f.detach().clone()
        return torch.stack([self._feature_cache[k] for k in keys])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of normalised images: (N, 3, H, W) → (N, E, g, g) float32."""
        return self.embedder(self.deep_features(x))

    # ------------------------------------------------------------------ synthesis
    def _synthesis_rng(self, x: torch.Tensor) -> np.random.Generator:
        if self.training:
            rng = np.random.default_rng([self.seed, int(self.synth_step)])
            self.synth_step += 1
            return rng
        # held-out loss: the same batch always gets the same defects, so epochs compare fairly
        probe = x[:, :, ::16, ::16].detach().float().cpu().numpy().tobytes()
        return np.random.default_rng([self.seed, 1 << 20, zlib.crc32(probe)])

    def synthesize_defects(self, x: torch.Tensor, pool: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Synthetic defects on normalised images.

        Args:
            x: (M, 3, H, W) normalised good images to damage.
            pool: (N, 3, H, W) normalised good images that may serve as foreign textures.
        Returns:
            (M, 3, H, W) normalised defective images (same device and dtype as ``x``).
        """
        def to_np(t: torch.Tensor) -> np.ndarray:
            return (t.detach().float() * self.std + self.mean).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

        imgs, others = to_np(x), to_np(pool)
        out = []
        for img in imgs:
            other = others[int(rng.integers(0, len(others)))] if len(others) > 1 else None
            out.append(synthesize(img, rng, other=other).image)
        t = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, torch.float32)
        return ((t - self.mean) / self.std).to(x.dtype)

    # ------------------------------------------------------------------ training
    def training_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """λ · contrastive + reconstruction on a batch of good images (N, 3, H, W).

        The first half of the batch is paired with the second half (good/good, pulled); every
        image of the second half is paired with a synthetic defect of itself (good/defect,
        pushed). N = 1 gives one push pair only."""
        n = x.shape[0]
        h = n // 2
        rng = self._synthesis_rng(x)
        defects = self.synthesize_defects(x[h:], x, rng)
        feats = torch.cat([self.cached_features(x).float(), self.deep_features(defects).float()], dim=0)
        emb = self.embedder(feats)
        good, bad = emb[:n], emb[n:]
        contrastive, pull, push = contrastive_loss(good[:h], good[h : 2 * h], good[h:], bad, self.cfg.margin)
        recon = reconstruction_loss(self.decoder(emb), feats)
        loss = self.cfg.contrastive_weight * contrastive + recon
        return loss, {
            "contrastive": float(contrastive.detach()), "pull": float(pull.detach()),
            "push": float(push.detach()), "recon": float(recon.detach()),
        }

    # ------------------------------------------------------------------ centres
    @torch.no_grad()
    def collect_embeddings(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Embeddings (M, E, g, g) float32 on CPU of normalised image batches (eval mode)."""
        was = self.training
        self.eval()
        embs = [self.embed(b).float().cpu() for b in batches]
        self.train(was)
        if not embs:
            raise ConfigError("cse: no training images to cluster; add good images")
        return torch.cat(embs)

    def fit_centres(self, embeddings: torch.Tensor, k: int | None = None) -> dict[str, Any]:
        """k-means (k-means++ seeded with the training seed) over ``embeddings`` (M, E, g, g);
        the centres become the nearest real embeddings. Returns facts for run.json."""
        k = int(k or self.cfg.k)
        flat = embeddings.reshape(embeddings.shape[0], -1).numpy()
        res = kmeans(flat, k, seed=self.seed)
        centres = torch.from_numpy(res.centres).view(k, *embeddings.shape[1:])
        self.scorer.set_centres(centres)
        return {
            "k": k, "centres_sha256": centres_sha256(res.centres), "cluster_sizes": res.sizes,
            "centre_indices": [int(i) for i in res.indices], "n_embeddings": int(flat.shape[0]),
            "mean_train_distance": round(res.inertia, 6),
        }

    def after_training(self, images: Iterable[torch.Tensor]) -> dict[str, Any]:
        return self.fit_centres(self.collect_embeddings(images))

    def export_info(self) -> dict[str, Any]:
        c = self.scorer.centres.detach().cpu().numpy()
        return {
            "k": int(c.shape[0]), "centres_sha256": centres_sha256(c), "embedding_shape": list(c.shape[1:]),
            "centres_fitted": bool(int(self.scorer.fitted)), "score": "min cosine distance to k-means centres",
        }

    # ------------------------------------------------------------------ eval
    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        amap, score = self.scorer(self.embed(x), (x.shape[-2], x.shape[-1]))
        return AnomalyOutput(amap, score)


@METHODS.register("cse", family="embedding")
class CseMethod(MethodPlugin):
    Config = CseConfig
    family = "embedding"
    # EfficientNet stages 3 and 4 (strides 16 and 32): B3 136/384 ch, Lite0 112/320 ch
    default_layers = (3, 4)

    def build(self, recipe: Recipe, cfg: CseConfig, backbone: nn.Module) -> AnomalyModel:
        return ContrastiveEmbeddings(backbone, cfg, recipe.input.size, seed=recipe.train.seed)
