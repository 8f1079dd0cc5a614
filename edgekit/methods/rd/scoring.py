"""Shared distillation scoring: per-layer 1 − cosine maps → upsample → combine → Gaussian
smoothing → image score = max of the map. Used by rd, rrd and mrkd (export-friendly ops only)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.methods.base import AnomalyModel, AnomalyOutput
from edgekit.methods.memory import PatchMemory, build_memory


def cosine_distance_maps(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer 1 − cosine similarity along channels.

    Args:
        teacher, student: lists of (N, C_l, H_l, W_l) float tensors.
    Returns:
        list of (N, 1, H_l, W_l) maps in [0, 2].
    """
    return [
        (1.0 - F.cosine_similarity(t, s, dim=1, eps=1e-6)).unsqueeze(1) for t, s in zip(teacher, student)
    ]


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur with a fixed kernel (a buffer, so it exports as an initializer).
    Edge padding avoids the dark border zero padding would leave in the map."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        radius = max(1, math.ceil(3.0 * sigma)) if sigma > 0 else 0
        self.radius = radius
        if radius:
            x = torch.arange(-radius, radius + 1, dtype=torch.float32)
            k = torch.exp(-(x**2) / (2 * sigma**2))
            k = k / k.sum()
        else:
            k = torch.ones(1)
        self.register_buffer("kernel_h", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_v", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.radius:
            return x
        r = self.radius
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), self.kernel_h)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), self.kernel_v)


class DistillationScorer(nn.Module):
    """Combine per-layer distance maps into an anomaly map and a max-based image score.

    Per-layer normalisation, fitted on good images (``fit``; the trainer uses the training tiles
    and keeps the held-out ones for the threshold), before the layers are summed:

    * ``"layer"``: each layer's 1 − cos map is standardised with the mean and standard deviation
      of that layer over all pixels of the good images. Without it the shallowest layer, whose
      residual is large and noisy on every image (mean 1 − cos ≈ 0.33 at stride 4 against ≈ 0.07
      at stride 16 for lite0 on fabric), sets the max of the map by itself; synthetic fabric,
      same checkpoint: image AUROC 0.904 (plain sum) → 0.987.
    * ``"position"`` (default): the same, but the mean is taken per map position and the variance
      is the position's variance plus the layer's overall variance (the overall variance acts as
      a prior, so a position seen on few good images is not over-trusted). The residual of a
      student is not uniform over the tile: convolution padding makes the border systematically
      worse, and an aligned product (busbars of a solar cell, the print of a label) has
      positions that are always hard to reconstruct. Those positions otherwise hold the max of
      every good image. Same checkpoints, statistics from the held-out images, image AUROC
      layer → position: fabric rd 0.988 → 0.999,
      rrd 0.968 → 1.000, mrkd 0.944 → 0.999; ELPV mono rd 0.903 → 0.905, mrkd 0.890 → 0.905,
      rrd 0.878 → 0.898. The statistics are per position *of the model's input tile*, which is
      fixed per run (a wide image is cut into tiles of that size), so they are valid for any
      image size the run accepts.

    The statistics are buffers, so they travel in the checkpoint and become ONNX initializers;
    before ``fit`` they are the identity (shift 0, scale 1) and the scorer is the plain sum of the
    RD paper.

    Edge (ring) calibration, fitted after the layers' normalisation (``fit_edges``; recipe
    ``score.edge_norm: ring``): the combined, smoothed map is rescaled by the distance of each
    pixel to the tile edge, so that on good training tiles every ring of positions has the same
    median (0) and the same upper tail (1 at ``score.edge_quantile``). Per-position mean/variance
    fix the *typical* residual at a position but not its tail: where a part's bright edge runs into
    the image border, or near a tile edge (convolution padding, receptive fields that see outside
    the tile), the good maps are heavy-tailed, and the max of a map is decided by the tail. The
    rings pool every position at the same distance from the edge (thousands of values each, so a
    0.999 quantile is stable on a hundred tiles), and they do not assume where the part is.
    Same trained rd-mem-lite0 runs, image AUROC as-is → ring: synthetic parts 0.900 → 0.938 (60 %
    of good parts had their max within 8 px of the border, 15 % after), and the bundles on fabric
    0.995 → 0.9996, ELPV poly 0.883 → 0.890, mono 0.930 → 0.932 (benchmarks/README.md).

    Per term (``fit_term_edges``; recipe ``score.edge_norm: terms``, opt-in): the same rings,
    fitted on each term (a layer's map, the memory's map) at the working resolution before the
    weighted sum, then the ring of the final map as above. Besides flattening each term's border
    profile, this sets every term's tail to 1, which is a re-weighting: the memory's map, whose
    position-normalised tail is the lightest (≈ 1.1 against 2.4–4.2 for the layers on ELPV mono),
    gains weight against the student's. Same trained rd-mem-lite0 weights, ring → terms: ELPV mono
    0.932 → 0.936, poly 0.890 → 0.897, fabric PRO 0.963 → 0.957; the border profile alone (each
    term keeping its typical scale) gives mono 0.930, poly 0.890, fabric = ring, and terms with the
    memory at weight 1 gives mono 0.929: the gain is the weight, not the border, so it is not the
    default (benchmarks/README.md, 2026-12-04).
    """

    MODES = ("layer", "position")

    def __init__(self, sigma: float, combine: str = "sum", n_layers: int = 3, map_stride: int = 1,
                 weights: Sequence[float] | None = None) -> None:
        """Args:
            sigma: Gaussian smoothing in input pixels.
            combine: "sum" or "mean" of the layer maps.
            n_layers: number of layer maps.
            map_stride: stride of the shallowest (largest) layer map. With ``map_stride > 1`` the
                layers are combined and smoothed at that map's resolution (σ / stride) and only the
                result is upsampled to the input size: every layer map is a bilinear upsampling of
                a map at most that fine, so this is the same smooth surface up to discretisation,
                at 1/stride² of the cost (lite0, stride 4: 64² instead of 256²; the full-size
                1-channel blur and three full-size Resizes were ~2 ms of a 12 ms int8 run).
            weights: per map, the weight of its normalised map in the sum (None: all 1, no
                multiplication in the graph); the patch memory's map uses ``score.memory.weight``.
        """
        super().__init__()
        if combine not in ("sum", "mean"):
            raise ValueError(f"combine must be sum or mean, got {combine!r}")
        if map_stride < 1:
            raise ValueError(f"map_stride must be >= 1, got {map_stride}")
        self.combine_mode = combine
        self.map_stride = int(map_stride)
        self.n_layers = int(n_layers)
        if weights is not None and len(weights) != self.n_layers:
            raise ValueError(f"{len(weights)} map weights for {self.n_layers} maps")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.smooth = GaussianSmoothing(sigma / self.map_stride)
        self.register_buffer("layer_shift", torch.zeros(n_layers))
        self.register_buffer("layer_scale", torch.ones(n_layers))
        # per-position statistics: (1, 1, h_l, w_l) each once fitted in "position" mode, empty
        # (numel 0) otherwise; sized by ``fit`` or by the checkpoint they are loaded from
        for i in range(n_layers):
            self.register_buffer(f"pos_shift{i}", torch.zeros(0))
            self.register_buffer(f"pos_scale{i}", torch.zeros(0))
        # edge (ring) calibration of the final map: (1, 1, H, W) each once fitted, empty otherwise
        self.register_buffer("edge_shift", torch.zeros(0))
        self.register_buffer("edge_scale", torch.zeros(0))
        # edge calibration of each term before the sum (edge_norm "terms"): (1, 1, h, w) at the
        # working resolution each once fitted, empty otherwise
        for i in range(n_layers):
            self.register_buffer(f"term_shift{i}", torch.zeros(0))
            self.register_buffer(f"term_scale{i}", torch.zeros(0))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # runs trained before per-layer normalisation existed load as the identity (plain sum),
        # runs from before per-position normalisation as the per-layer standardisation
        for name, fill in (("layer_shift", 0.0), ("layer_scale", 1.0)):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), fill))
        for i in range(self.n_layers):
            for name in (f"pos_shift{i}", f"pos_scale{i}"):
                value = state_dict.setdefault(prefix + name, torch.zeros(0))
                setattr(self, name, torch.zeros_like(value, dtype=torch.float32, device=self.layer_shift.device))
        edge_names = ["edge_shift", "edge_scale"] + [f"term_{k}{i}" for i in range(self.n_layers) for k in ("shift", "scale")]
        for name in edge_names:  # runs from before the edge calibration: none
            value = state_dict.setdefault(prefix + name, torch.zeros(0))
            setattr(self, name, torch.zeros_like(value, dtype=torch.float32, device=self.layer_shift.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    @property
    def mode(self) -> str:
        """"position", "layer" (or the plain sum, "none", before any fit)."""
        if self.pos_shift0.numel():
            return "position"
        fitted = bool((self.layer_shift != 0).any() or (self.layer_scale != 1).any())
        return "layer" if fitted else "none"

    @torch.no_grad()
    def reset(self) -> None:
        """Back to the identity: the plain sum of the RD paper (mode "none")."""
        self.layer_shift.zero_()
        self.layer_scale.fill_(1.0)
        for i in range(self.n_layers):
            setattr(self, f"pos_shift{i}", torch.zeros(0, device=self.layer_shift.device))
            setattr(self, f"pos_scale{i}", torch.zeros(0, device=self.layer_shift.device))
        self.reset_edges()

    @torch.no_grad()
    def reset_edges(self) -> None:
        """No edge calibration (the map as the layers' normalisation leaves it)."""
        empty = torch.zeros(0, device=self.layer_shift.device)
        self.edge_shift, self.edge_scale = empty, empty.clone()
        for i in range(self.n_layers):
            setattr(self, f"term_shift{i}", empty.clone())
            setattr(self, f"term_scale{i}", empty.clone())

    @property
    def edge_mode(self) -> str:
        """"terms" (every term and the final map), "ring" (the final map) or "none"."""
        if self.term_shift0.numel():
            return "terms"
        return "ring" if self.edge_shift.numel() else "none"

    @staticmethod
    def edge_distance(h: int, w: int) -> torch.Tensor:
        """(h, w) long: distance of each pixel to the nearest tile edge, in pixels."""
        yy = torch.arange(h).view(-1, 1).expand(h, w)
        xx = torch.arange(w).view(1, -1).expand(h, w)
        return torch.minimum(torch.minimum(yy, xx), torch.minimum(h - 1 - yy, w - 1 - xx))

    @classmethod
    def ring_index(cls, h: int, w: int, ring_width: int) -> torch.Tensor:
        """(h, w) long: distance of each pixel to the nearest tile edge, in rings of ``ring_width`` px."""
        return torch.div(cls.edge_distance(h, w), max(1, int(ring_width)), rounding_mode="floor")

    @classmethod
    def _fit_rings(cls, map_batches: Iterable[torch.Tensor], ring_width: int, quantile: float,
                   per_tile: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]] | None:
        """Per-pixel (h, w) shift and scale that give every ring of ``ring_width`` px median 0 and
        ``quantile`` 1 on the good (N, 1, h, w) maps, linear in the distance to the edge between
        ring centres; None without any map."""
        if not 0.5 < quantile < 1.0:
            raise ValueError(f"edge quantile must be in (0.5, 1), got {quantile}")
        picks: list[torch.Tensor] = []
        values: list[list[torch.Tensor]] = []
        n_tiles = 0
        hw: tuple[int, int] | None = None
        for m in map_batches:
            m = m.detach().to("cpu", torch.float32)
            if hw is None:
                hw = (int(m.shape[-2]), int(m.shape[-1]))
                ring_of = cls.ring_index(*hw, ring_width).flatten()
                n_rings = int(ring_of.max()) + 1
                for r in range(n_rings):
                    idx = torch.nonzero(ring_of == r).flatten()
                    step = max(1, math.ceil(idx.numel() / per_tile))
                    picks.append(idx[::step])
                values = [[] for _ in range(n_rings)]
            elif (int(m.shape[-2]), int(m.shape[-1])) != hw:
                raise ValueError(f"maps change size between batches ({hw} vs {tuple(m.shape[-2:])})")
            flat = m.reshape(m.shape[0], -1)
            for r, idx in enumerate(picks):
                values[r].append(flat[:, idx].reshape(-1))
            n_tiles += int(m.shape[0])
        if hw is None:
            return None
        med = torch.stack([torch.cat(v).median() for v in values])
        tail = torch.stack([torch.quantile(torch.cat(v).double(), quantile).float() for v in values])
        spread = tail - med
        # a ring whose good maps hardly vary (a flat or clipped map) must not be amplified without
        # bound: no ring's scale exceeds 10x the typical ring's
        floor = max(0.1 * float(spread.median()), 1e-6 * float(tail.abs().max().clamp_min(1.0)))
        spread = spread.clamp_min(floor)
        # per pixel: linear in the distance to the edge between ring centres, so the rescaled map
        # has no steps at ring boundaries
        h, w = hw
        d = cls.edge_distance(h, w).float()
        width = float(max(1, ring_width))
        centres = (torch.arange(len(med), dtype=torch.float32) + 0.5) * width - 0.5
        pos = ((d - centres[0]) / width).clamp(0, len(med) - 1)
        lo = pos.floor().long().clamp(max=len(med) - 1)
        hi = (lo + 1).clamp(max=len(med) - 1)
        frac = pos - lo.float()
        shift = med[lo] * (1 - frac) + med[hi] * frac
        scale = 1.0 / (spread[lo] * (1 - frac) + spread[hi] * frac)
        facts = {"tiles": n_tiles, "ring_px": int(width), "spread_floor": float(floor),
                 "median": [round(float(v), 4) for v in med], "tail": [round(float(v), 4) for v in tail]}
        return shift, scale, facts

    @torch.no_grad()
    def fit_edges(self, map_batches: Iterable[torch.Tensor], quantile: float = 0.999,
                  per_tile: int = 256) -> dict[str, object]:
        """Fit the edge (ring) calibration on the final maps of good tiles (see the class docstring).

        Args:
            map_batches: per batch, the (N, 1, H, W) maps this scorer produces (before any edge
                calibration of the final map: call ``reset_edges`` first when refitting).
            quantile: the upper quantile each ring is scaled to (1 after the calibration).
            per_tile: at most this many pixels per ring and tile enter the quantiles (evenly
                spaced: neighbouring pixels of a smoothed map carry the same information).
        Returns:
            facts for the run: rings, their width, per-ring median and quantile, tile count.
        """
        fitted = self._fit_rings(map_batches, self.map_stride, quantile, per_tile)
        if fitted is None:
            return {"edge_norm": "not fitted: no images"}
        shift, scale, facts = fitted
        h, w = shift.shape
        dev = self.layer_shift.device
        self.edge_shift = shift.view(1, 1, h, w).to(dev)
        self.edge_scale = scale.view(1, 1, h, w).to(dev)
        return {"edge_norm": {"mode": "ring", "quantile": quantile, **facts}}

    @torch.no_grad()
    def fit_term_edges(self, term_batches: Sequence[list[torch.Tensor]], quantile: float = 0.999,
                       per_tile: int = 256) -> dict[str, object]:
        """Edge calibration of every term before the sum (edge_norm "terms"): the same rings as
        ``fit_edges``, one pixel of the working resolution wide, fitted per term on the good tiles'
        ``terms`` (each term's tail is set by the border differently: the memory's by patches that
        see outside the part, a student layer's by its padding). Then fit ``fit_edges`` on the
        ``combine`` of the same terms.

        Args:
            term_batches: per batch, ``terms`` of good tiles (a sequence: it is read once per term).
        """
        facts: list[dict[str, object]] = []
        dev = self.layer_shift.device
        for i in range(self.n_layers):
            fitted = self._fit_rings((t[i] for t in term_batches), 1, quantile, per_tile)
            if fitted is None:
                self.reset_edges()
                return {"term_edge_norm": "not fitted: no images"}
            shift, scale, f = fitted
            h, w = shift.shape
            setattr(self, f"term_shift{i}", shift.view(1, 1, h, w).to(dev))
            setattr(self, f"term_scale{i}", scale.view(1, 1, h, w).to(dev))
            facts.append({"median": f["median"], "tail": f["tail"], "spread_floor": f["spread_floor"]})
        return {"term_edge_norm": {"quantile": quantile, "terms": facts}}

    @torch.no_grad()
    def fit(self, layer_map_batches: Iterable[list[torch.Tensor]], mode: str = "position",
            reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, object]:
        """Fit the normalisation on good images.

        Args:
            layer_map_batches: per batch, the list of (N, 1, h_l, w_l) 1 − cos maps of each layer.
            mode: "position" or "layer" (see the class docstring); "none" resets to the plain sum
                without reading any batch.
            reduce: for a DDP run, where each rank reads its share of the images: the sum of a
                float64 tensor over the ranks (``Dist.all_reduce``). Applied to the per-position
                sums and the image count, so every rank fits the statistics of all the images.
        Returns:
            facts for the run: mode, per-layer mean, std and pixel count.
        """
        if mode == "none":
            self.reset()
            return {"layer_norm": "none"}
        if mode not in self.MODES:
            raise ValueError(f"score normalisation mode must be one of {self.MODES + ('none',)}, got {mode!r}")
        n_layers = self.n_layers
        s1: list[torch.Tensor | None] = [None] * n_layers  # per-position sums, float64
        s2: list[torch.Tensor | None] = [None] * n_layers
        n_img = 0
        for maps in layer_map_batches:
            if len(maps) != n_layers:
                raise ValueError(f"scorer fitted on {len(maps)} layer maps, built for {n_layers}")
            for i, m in enumerate(maps):
                m64 = m.detach().to("cpu", torch.float64)
                a, b = m64.sum(dim=0), (m64 * m64).sum(dim=0)  # (1, h, w)
                if s1[i] is not None and s1[i].shape != a.shape:
                    raise ValueError(f"layer {i} maps change size between batches ({tuple(s1[i].shape)} vs {tuple(a.shape)})")
                s1[i] = a if s1[i] is None else s1[i] + a
                s2[i] = b if s2[i] is None else s2[i] + b
            n_img += int(maps[0].shape[0])
        if reduce is not None:
            if any(a is None for a in s1):
                raise ValueError("every rank needs at least one image to fit the score statistics")
            n_img = int(reduce(torch.tensor([float(n_img)], dtype=torch.float64)).item())
            s1 = [reduce(a) for a in s1]  # type: ignore[arg-type]
            s2 = [reduce(b) for b in s2]  # type: ignore[arg-type]
        if n_img == 0:
            return {"layer_norm": "not fitted: no images"}
        facts: dict[str, list] = {"mean": [], "std": [], "pixels": []}
        for i in range(n_layers):
            pos_mean = s1[i] / n_img
            pos_var = (s2[i] / n_img - pos_mean * pos_mean).clamp_min(0)
            mean = pos_mean.mean()
            var = (s2[i].sum() / (n_img * pos_mean.numel()) - mean * mean).clamp_min(0)
            std = var.sqrt().clamp_min(1e-6)
            self.layer_shift[i] = float(mean)
            self.layer_scale[i] = float(1.0 / std)
            if mode == "position":
                shift = pos_mean.unsqueeze(0).float()
                scale = (1.0 / (pos_var + var).sqrt().clamp_min(1e-6)).unsqueeze(0).float()
            else:
                shift = scale = torch.zeros(0)
            setattr(self, f"pos_shift{i}", shift.to(self.layer_shift.device))
            setattr(self, f"pos_scale{i}", scale.to(self.layer_shift.device))
            facts["mean"].append(round(float(mean), 6))
            facts["std"].append(round(float(std), 6))
            facts["pixels"].append(int(n_img * pos_mean.numel()))
        return {"layer_norm": {"mode": mode, "images": n_img, **facts}}

    def terms(self, layer_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The normalised term of each layer map (per-position or per-layer statistics), at the
        working resolution: (N, 1, h, w) each, before any per-term edge calibration and weight."""
        work = None
        if self.map_stride > 1:
            work = (int(layer_maps[0].shape[-2]), int(layer_maps[0].shape[-1]))
        out = []
        for i, m in enumerate(layer_maps):
            pos_shift, pos_scale = getattr(self, f"pos_shift{i}"), getattr(self, f"pos_scale{i}")
            if pos_shift.numel():
                if tuple(pos_shift.shape[-2:]) != tuple(m.shape[-2:]):
                    raise ValueError(
                        f"layer {i} map is {tuple(m.shape[-2:])} but the score normalisation was fitted on "
                        f"{tuple(pos_shift.shape[-2:])} maps: run the model at the input size it was trained with"
                    )
                z = (m - pos_shift) * pos_scale
            else:
                z = (m - self.layer_shift[i]) * self.layer_scale[i]
            if work is not None and (int(z.shape[-2]), int(z.shape[-1])) != work:
                z = F.interpolate(z, size=work, mode="bilinear", align_corners=False)
            out.append(z)
        return out

    def combine(self, terms: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``terms`` → per-term edge calibration, weights, sum, smoothing, the input size, edge
        calibration of the map. Returns map (N,1,H,W), score (N,)."""
        up = []
        for i, z in enumerate(terms):
            t_shift, t_scale = getattr(self, f"term_shift{i}"), getattr(self, f"term_scale{i}")
            if self.map_stride == 1 and (int(z.shape[-2]), int(z.shape[-1])) != size:
                z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
            if t_shift.numel():
                if tuple(t_shift.shape[-2:]) != (int(z.shape[-2]), int(z.shape[-1])):
                    raise ValueError(
                        f"term {i} is {tuple(z.shape[-2:])} but its edge calibration was fitted on "
                        f"{tuple(t_shift.shape[-2:])} maps: run the model at the input size it was trained with")
                z = (z - t_shift) * t_scale
            if self.weights is not None and self.weights[i] != 1.0:
                z = z * self.weights[i]
            up.append(z)
        amap = torch.stack(up, dim=0).sum(dim=0)
        if self.combine_mode == "mean":
            amap = amap / len(up)
        amap = self.smooth(amap)
        if (int(amap.shape[-2]), int(amap.shape[-1])) != tuple(size):
            amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
        if self.edge_shift.numel():
            if tuple(self.edge_shift.shape[-2:]) != (int(amap.shape[-2]), int(amap.shape[-1])):
                raise ValueError(
                    f"the map is {tuple(amap.shape[-2:])} but the edge calibration was fitted on "
                    f"{tuple(self.edge_shift.shape[-2:])} maps: run the model at the input size it was trained with")
            amap = (amap - self.edge_shift) * self.edge_scale
        score = torch.amax(amap, dim=(1, 2, 3))
        return amap, score

    def forward(self, layer_maps: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: layer_maps list of (N,1,h,w); size (H, W). Returns map (N,1,H,W), score (N,)."""
        return self.combine(self.terms(layer_maps), size)


class DistillationModel(AnomalyModel):
    """Shared eval side of rd, rrd and mrkd: a subclass provides ``layer_maps`` (per-layer
    1 − cos maps) and ``self.scorer`` (a ``DistillationScorer``); the map, the max score and the
    fit of the per-layer normalisation are the same for all three."""

    scorer: DistillationScorer
    # recipe ``score.memory``: nearest-normal-patch distance on the teacher features, scored as
    # one more map after the layers' (``attach_memory``, submodule ``memory``); see ``patch_memory``

    def layer_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer 1 − cos maps of a normalised batch, (N, 1, h_l, w_l) each, shallow → deep,
        then the patch memory's distance map where the recipe has one."""
        raise NotImplementedError

    def attach_memory(self, channels: Sequence[int], memory_cfg: Any, seed: int = 0) -> list[float] | None:
        """Build the recipe's patch memory (``score.memory``; None: none) for teacher stages of
        ``channels``; returns the map weights for the scorer (None without a memory)."""
        memory = build_memory(channels, memory_cfg)
        self._memory_cfg = memory_cfg
        self._memory_seed = int(seed)
        if memory is None:
            return None
        self.memory = memory
        return [1.0] * len(channels) + [float(memory_cfg.weight)]

    def patch_memory(self) -> PatchMemory | None:
        """The recipe's patch memory, None without one (no submodule, the graph of before)."""
        mem = self._modules.get("memory")
        return mem if isinstance(mem, PatchMemory) else None

    def with_memory(self, teacher: list[torch.Tensor], maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """``maps`` followed by the memory's distance map of the ``teacher`` features, if any."""
        mem = self.patch_memory()
        return maps if mem is None else [*maps, mem(teacher)]

    @torch.no_grad()
    def after_training(self, images: Iterable[torch.Tensor]) -> dict[str, Any]:
        """Fit the patch memory's bank on the training tiles (before the score normalisation,
        which then sees the memory map like the layers' maps)."""
        mem = self.patch_memory()
        if mem is None:
            return {}
        cfg = self._memory_cfg
        teacher = self.memory_teacher()
        feats = ([f.detach() for f in teacher(x)] for x in images)
        return mem.fit(feats, cfg.size, cfg.fit, cfg.patches_per_tile, cfg.iters, self._memory_seed)

    def memory_teacher(self) -> nn.Module:
        """The frozen encoder whose stage features the memory reads (``self.teacher``)."""
        return self.teacher  # type: ignore[no-any-return]

    def export_info(self) -> dict[str, Any]:
        mem = self.patch_memory()
        if mem is None or not mem.size:
            return {}
        from edgekit.methods.memory import bank_sha256

        return {"memory": {"size": mem.size, "dim": mem.dim, "layers": list(mem.layers),
                           "bank_sha256": bank_sha256(mem.centres())}}

    @torch.no_grad()
    def fit_score_normalisation(self, images: Iterable[torch.Tensor], mode: str = "position",
                                reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """``reduce``: see ``DistillationScorer.fit`` (DDP: sums over the ranks)."""
        return self.scorer.fit((self.layer_maps(x) for x in images), mode, reduce)  # lazy: "none" runs no batch

    @torch.no_grad()
    def fit_edge_normalisation(self, images: Iterable[torch.Tensor], mode: str = "ring",
                               quantile: float = 0.999) -> dict[str, Any]:
        """Fit (``mode`` "ring": the final map; "terms": every term, then the final map) or drop
        ("none") the scorer's edge calibration on good images, after ``fit_score_normalisation``
        (see ``DistillationScorer.fit_edges`` / ``fit_term_edges``). One pass of the network; for
        "terms" the terms are kept (working resolution, 64 KB per lite0 tile at 256²) and the final
        maps are combined from them, "ring" streams the maps."""
        scorer = self.scorer
        scorer.reset_edges()
        if mode == "none":
            return {"edge_norm": "none"}
        if mode == "ring":
            return scorer.fit_edges((self(x).map for x in images), quantile)
        if mode != "terms":
            raise ValueError(f"edge normalisation mode must be terms, ring or none, got {mode!r}")
        cached: list[list[torch.Tensor]] = []
        size: tuple[int, int] | None = None
        for x in images:
            size = (int(x.shape[-2]), int(x.shape[-1]))
            cached.append([t.to("cpu") for t in scorer.terms(self.layer_maps(x))])
        facts: dict[str, Any] = dict(scorer.fit_term_edges(cached, quantile))
        dev = scorer.layer_shift.device
        maps = (scorer.combine([t.to(dev) for t in terms], size)[0] for terms in cached)  # type: ignore[arg-type]
        facts.update(scorer.fit_edges(maps, quantile))
        if isinstance(facts.get("edge_norm"), dict):
            facts["edge_norm"]["mode"] = "terms"
        return facts

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        amap, score = self.scorer(self.layer_maps(x), (x.shape[-2], x.shape[-1]))
        return AnomalyOutput(amap, score)


def layer_cosine_losses(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer training loss: mean over pixels of 1 − cos (the RD objective)."""
    return [m.mean() for m in cosine_distance_maps(teacher, student)]
