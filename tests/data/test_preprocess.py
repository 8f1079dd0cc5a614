"""edgekit.data.preprocess: tiling of any aspect, stitching, image score."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.data.preprocess import PreprocessSpec, image_score, make_tiles, plan_tiles, stitch_maps


def _coverage(layout) -> np.ndarray:
    cov = np.zeros(layout.scaled_hw, np.int32)
    s = layout.size
    for y, x in layout.origins:
        cov[y : y + s, x : x + s] += 1
    return cov


def _ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([(x % 256), (y % 256), ((x // 256 + y // 256) % 256)]).astype(np.uint8)


def test_wide_line_scan_strip_tiled_end_to_end() -> None:
    spec = PreprocessSpec(size=256)
    img = _ramp(256, 4096)
    tiles, layout = make_tiles(img, spec)
    assert layout.scaled_hw == (256, 4096) and layout.source_hw == (256, 4096)
    assert tiles.shape == (layout.n_tiles, 256, 256, 3) and tiles.dtype == np.uint8
    cov = _coverage(layout)
    assert cov.min() >= 1  # every pixel of the strip is seen
    xs = sorted(x for _, x in layout.origins)
    assert xs[0] == 0 and xs[-1] == 4096 - 256
    assert max(np.diff(xs)) <= 256 * (1 - spec.tile_overlap) + 1  # at least the requested overlap
    # no resize at scale 1: tiles are exact crops
    for t, (y, x) in zip(tiles, layout.origins):
        np.testing.assert_array_equal(t, img[y : y + 256, x : x + 256])


def test_wide_strip_downscaled_keeps_aspect() -> None:
    tiles, layout = make_tiles(_ramp(512, 4096), PreprocessSpec(size=128))
    assert layout.scaled_hw == (128, 1024)
    assert _coverage(layout).min() >= 1 and tiles.shape[1:] == (128, 128, 3)


def test_tall_image_tiled_vertically() -> None:
    tiles, layout = make_tiles(_ramp(1000, 200), PreprocessSpec(size=64))
    sh, sw = layout.scaled_hw
    assert sw == 64 and sh == round(1000 * 64 / 200)
    assert all(x == 0 for _, x in layout.origins) and layout.n_tiles > 1
    assert _coverage(layout).min() >= 1


def test_small_elongated_image_upscaled_short_side() -> None:
    _, layout = make_tiles(_ramp(40, 160), PreprocessSpec(size=64))
    assert layout.scaled_hw == (64, 256) and _coverage(layout).min() >= 1


@pytest.mark.parametrize("hw", [(300, 320), (256, 256), (480, 640), (1000, 1000), (100, 149)])
def test_near_square_is_one_resized_tile(hw: tuple[int, int]) -> None:
    img = _ramp(*hw)
    tiles, layout = make_tiles(img, PreprocessSpec(size=64))
    assert tiles.shape == (1, 64, 64, 3) and layout.origins == ((0, 0),) and layout.scaled_hw == (64, 64)


def test_fit_modes() -> None:
    strip = _ramp(64, 640)
    tiles, layout = make_tiles(strip, PreprocessSpec(size=64, fit="resize"))
    assert tiles.shape[0] == 1 and layout.scaled_hw == (64, 64)
    tiles, layout = make_tiles(_ramp(100, 120), PreprocessSpec(size=64, fit="tile"))
    assert layout.scaled_hw[0] == 64 and layout.scaled_hw[1] == round(120 * 64 / 100) and tiles.shape[0] == 2


def test_stitch_takes_max_over_overlaps_and_covers_everything() -> None:
    spec = PreprocessSpec(size=64, tile_overlap=0.5)
    _, layout = make_tiles(_ramp(64, 200), spec)
    n = layout.n_tiles
    maps = np.stack([np.full((64, 64), float(i), np.float32) for i in range(n)])
    full = stitch_maps(maps, layout)
    assert full.shape == layout.scaled_hw and full.dtype == np.float32
    assert np.isfinite(full).all()
    for i, (y, x) in enumerate(layout.origins):
        # later tiles carry larger values, so a pixel shows the last tile covering it
        last = max(j for j, (_, xx) in enumerate(layout.origins) if xx <= x < xx + 64)
        assert full[y, x] == last
        assert full[y, x + 63] >= i
    # a hot spot in one tile survives stitching at its position
    maps[:] = 0
    maps[1, 10, 20] = 7.0
    y0, x0 = layout.origins[1]
    out = stitch_maps(maps, layout)
    assert out[y0 + 10, x0 + 20] == 7.0 and out.max() == 7.0 and (out > 0).sum() == 1


def test_image_score_is_max_of_tile_scores() -> None:
    assert image_score(np.array([0.1, 0.9, 0.3], np.float32)) == pytest.approx(0.9)
    assert isinstance(image_score(np.array([1.0])), float)
    scores = np.random.default_rng(0).random(21).astype(np.float32)
    assert image_score(scores) == float(scores.max())


def test_plan_tiles_matches_make_tiles_and_spec_roundtrip() -> None:
    spec = PreprocessSpec(size=96, tile_overlap=0.3, mean=(0.5, 0.5, 0.5))
    assert plan_tiles(300, 1200, spec) == make_tiles(_ramp(300, 1200), spec)[1]
    d = spec.to_dict()
    assert d["mean"] == [0.5, 0.5, 0.5]
    assert PreprocessSpec.from_dict(d) == spec
