"""Helpers shared by the runtime tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# accept < 0.4 <= review < 0.5 <= reject (score = mean intensity / 255)
LEVELS = [20, 60, 110, 115, 120, 130, 200, 250]


def expected_kind(level: int) -> str:
    s = level / 255.0
    return "accept" if s < 0.4 else ("reject" if s >= 0.5 else "review")


def write_levels(folder: Path, levels: list[int], hw: tuple[int, int] = (40, 56)) -> list[Path]:
    """One PNG per level (uniform grey image): score = level / 255 with the intensity bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(levels):
        p = folder / f"f{i:04d}.png"
        cv2.imwrite(str(p), np.full((*hw, 3), v, np.uint8))
        paths.append(p)
    return paths
