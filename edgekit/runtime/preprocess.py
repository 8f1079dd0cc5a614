"""Preprocess stage: ``Frame`` → ``Batch`` (square uint8 RGB tiles of the model input size).

Uses the same tiling as training and evaluation (``edgekit.data.preprocess.make_tiles``), so the
device scores exactly what the bundle was calibrated on."""

from __future__ import annotations

import time

import numpy as np

from edgekit.data.preprocess import PreprocessSpec, make_tiles
from edgekit.errors import DataError
from edgekit.runtime.types import Batch, Frame


class Preprocessor:
    """Cut a frame into model tiles.

    Args:
        spec: the bundle's PreprocessSpec.
        max_pixels: frames above this are refused (a huge frame would blow the deadline and
            memory; it is a camera/config fault, handled fail-safe).
        expect_hw: if set, frames of another (H, W) are refused (a camera that silently changed
            resolution would change what the model sees).
    """

    def __init__(self, spec: PreprocessSpec, max_pixels: int = 40_000_000,
                 expect_hw: tuple[int, int] | None = None) -> None:
        self.spec = spec
        self.max_pixels = max_pixels
        self.expect_hw = expect_hw

    def run(self, frame: Frame) -> Batch:
        """Tiles for one frame; DataError when the frame cannot be used.

        Returns:
            Batch with tiles (T, S, S, 3) uint8.
        """
        t0 = time.perf_counter()
        img = frame.image
        if img is None:
            raise DataError(frame.error or "frame has no image")
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"frame {frame.part_id}: expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        if h < 8 or w < 8:
            raise DataError(f"frame {frame.part_id}: {w}x{h} is too small")
        if h * w > self.max_pixels:
            raise DataError(f"frame {frame.part_id}: {w}x{h} exceeds max_pixels={self.max_pixels}")
        if self.expect_hw is not None and (h, w) != tuple(self.expect_hw):
            raise DataError(f"frame {frame.part_id}: size {w}x{h} differs from expected "
                            f"{self.expect_hw[1]}x{self.expect_hw[0]}")
        tiles, _layout = make_tiles(img, self.spec)
        return Batch(frame, tiles, {"preprocess": time.perf_counter() - t0})
