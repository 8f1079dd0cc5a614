"""Score images with a trained run (torch) or a bundle (onnxruntime) behind one interface, so
evaluation, calibration and verification treat both the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.data.preprocess import PreprocessSpec, TileLayout, image_score, make_tiles, stitch_maps
from edgekit.errors import BundleError


class Scorer(Protocol):
    spec: PreprocessSpec
    kind: str
    thresholds: dict[str, Any]

    def score_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, S, S, 3) uint8 → maps (T, S, S) float32, scores (T,) float32."""
        ...


def score_image(scorer: Scorer, rgb: np.ndarray) -> tuple[float, np.ndarray, TileLayout]:
    """Score one decoded image (any size): tiles → model → max over tiles, stitched map.

    Args:
        rgb: (H, W, 3) uint8.
    Returns:
        image score, map (scaled_h, scaled_w) float32, tile layout."""
    tiles, layout = make_tiles(rgb, scorer.spec)
    maps, scores = scorer.score_tiles(tiles)
    return image_score(scores), stitch_maps(maps, layout), layout


class TorchScorer:
    """A trained run directory, scored in torch (needs the [train] extra)."""

    kind = "torch"

    def __init__(self, run_dir: str | Path, device: str = "cpu", batch: int = 8) -> None:
        import torch

        from edgekit.train import load_run

        self.run = load_run(run_dir, device)
        self.spec = self.run.spec
        self.device = torch.device(device)
        self.batch = batch
        self.thresholds = self.run.info.get("calibration") or {}
        self.info = self.run.info

    def score_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from edgekit.train import score_tiles_torch

        return score_tiles_torch(self.run.model, tiles, self.spec, self.batch, self.device)


class OrtScorer:
    """A bundle's ONNX model in onnxruntime (no torch)."""

    kind = "onnxruntime"

    def __init__(self, bundle_dir: str | Path, model_key: str = "fp32", threads: int = 0, batch: int = 8) -> None:
        from edgekit.bundle.io import load_bundle

        self.bundle = load_bundle(bundle_dir)
        self.spec = self.bundle.preprocess
        self.thresholds = self.bundle.thresholds
        self.info = self.bundle.manifest
        self.batch = batch
        from edgekit.runtime.backends.ort import ort_session

        self.session = ort_session(self.bundle.model_path(model_key), threads)

    def score_tiles(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = [], []
        for i in range(0, len(tiles), self.batch):
            m, s = self.session.run(["anomaly_map", "score"], {"image": np.ascontiguousarray(tiles[i : i + self.batch])})
            maps.append(m[:, 0])
            scores.append(s)
        if not scores:
            n = self.spec.size
            return np.zeros((0, n, n), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(maps).astype(np.float32), np.concatenate(scores).astype(np.float32)


def load_scorer(model_dir: str | Path, device: str = "cpu", model_key: str = "fp32") -> Scorer:
    """A bundle directory (has manifest.json) → OrtScorer; a run directory → TorchScorer."""
    p = Path(model_dir)
    if (p / "manifest.json").is_file():
        return OrtScorer(p, model_key)
    if (p / "run.json").is_file() or (p / "model.pt").is_file():
        return TorchScorer(p, device)
    if not p.exists():
        raise BundleError(f"{p}: not found; pass a run directory (edgekit train --out) or a bundle (edgekit build --out)")
    raise BundleError(f"{p}: neither a run directory (run.json + model.pt) nor a bundle (manifest.json)")
