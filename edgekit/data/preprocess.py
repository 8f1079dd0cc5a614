"""Preprocessing shared by training, evaluation, build and the device runtime (numpy + OpenCV
only, no torch). An image of any size/aspect becomes one or more square uint8 RGB tiles of the
model's input size; per-tile anomaly maps are stitched back and the image score is the max over
tiles.

Why tiles by default: a square resize of a 4096×256 line-scan strip or a tall part squeezes
hairline defects below one feature cell. ``fit: auto`` resizes near-square images and tiles
elongated ones (short side → model size, windows along the long side)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a decoded image into model input; stored in runs and bundles."""

    size: int = 256
    fit: str = "auto"  # auto | resize | tile
    max_aspect_for_resize: float = 1.5
    tile_overlap: float = 0.25
    color: str = "RGB"  # channel order fed to the model
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # applied inside the graph
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        d = dict(d)  # keys left out take the defaults (older and hand-made manifests)
        if "mean" in d:
            d["mean"] = tuple(d["mean"])
        if "std" in d:
            d["std"] = tuple(d["std"])
        return cls(**d)


@dataclass(frozen=True)
class TileLayout:
    """Where each tile came from. ``scaled_hw`` is the image size after the aspect-preserving
    (or square) resize; ``origins`` are (y, x) offsets of each size×size tile in it."""

    source_hw: tuple[int, int]
    scaled_hw: tuple[int, int]
    origins: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    size: int = 256

    @property
    def n_tiles(self) -> int:
        return len(self.origins)


def _positions(length: int, size: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering [0, length) with at least ``overlap`` overlap."""
    if length <= size:
        return [0]
    stride = max(1, int(size * (1.0 - overlap)))
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def plan_tiles(h: int, w: int, spec: PreprocessSpec) -> TileLayout:
    """Decide the resize and tile origins for an ``h × w`` image."""
    s = spec.size
    aspect = max(h, w) / max(1, min(h, w))
    if spec.fit == "resize" or (spec.fit == "auto" and aspect <= spec.max_aspect_for_resize):
        return TileLayout((h, w), (s, s), ((0, 0),), s)
    # aspect-preserving: the short side becomes the model size, never smaller
    scale = s / min(h, w)
    sh, sw = max(s, round(h * scale)), max(s, round(w * scale))
    origins = tuple((y, x) for y in _positions(sh, s, spec.tile_overlap) for x in _positions(sw, s, spec.tile_overlap))
    return TileLayout((h, w), (sh, sw), origins, s)


def make_tiles(image_rgb: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, TileLayout]:
    """Cut a decoded image into model inputs.

    Args:
        image_rgb: (H, W, 3) uint8 in ``spec.color`` order.
    Returns:
        tiles (T, size, size, 3) uint8 and the layout to stitch maps back.
    """
    h, w = image_rgb.shape[:2]
    layout = plan_tiles(h, w, spec)
    sh, sw = layout.scaled_hw
    if (sh, sw) != (h, w):
        interp = cv2.INTER_AREA if sh * sw < h * w else cv2.INTER_LINEAR
        scaled = cv2.resize(image_rgb, (sw, sh), interpolation=interp)
    else:
        scaled = image_rgb
    s = layout.size
    tiles = np.stack([scaled[y : y + s, x : x + s] for y, x in layout.origins])
    return np.ascontiguousarray(tiles), layout


def stitch_maps(maps: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Stitch per-tile maps back into one map over the scaled image (max where tiles overlap).

    Args:
        maps: (T, size, size) float32 anomaly maps, one per tile.
    Returns:
        (scaled_h, scaled_w) float32.
    """
    sh, sw = layout.scaled_hw
    s = layout.size
    out = np.full((sh, sw), -np.inf, dtype=np.float32)
    for m, (y, x) in zip(maps, layout.origins):
        np.maximum(out[y : y + s, x : x + s], m, out=out[y : y + s, x : x + s])
    return out


def image_score(tile_scores: np.ndarray) -> float:
    """Image score from per-tile scores: the max (a defect anywhere makes the part bad)."""
    return float(np.max(tile_scores))
