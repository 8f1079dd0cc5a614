"""Anomaly synthesis of CSE: masks are exactly the changed pixels, results are seeded."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.methods.cse.synthesis import (
    KINDS,
    MAX_AREA,
    MIN_AREA,
    perlin_mask,
    perlin_noise,
    preview_grid,
    synthesize,
    synthesize_batch,
    write_preview,
)


def _image(seed: int, size: int = 64) -> np.ndarray:
    """A textured float image in [0, 1] (gradient + noise), so blur/shuffle visibly change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1)
    return np.clip(0.7 * base + 0.3 * rng.uniform(0, 1, (size, size, 3)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_matches_pasted_region(kind: str, seed: int) -> None:
    img, other = _image(seed), _image(seed + 100)
    r = synthesize(img, np.random.default_rng(seed), other=other, kind=kind)
    assert r.kind == kind
    assert r.image.shape == img.shape and r.image.dtype == np.float32
    assert r.mask.shape == img.shape[:2] and r.mask.dtype == bool
    # outside the mask the image is bit-identical, inside it has been altered
    np.testing.assert_array_equal(r.image[~r.mask], img[~r.mask])
    assert r.mask.any()
    changed = np.any(r.image != img, axis=-1)
    assert not changed[~r.mask].any()
    assert changed[r.mask].mean() > 0.5, f"{kind}: only {changed[r.mask].mean():.2f} of the mask changed"


def test_region_area_bounds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = perlin_mask(64, 64, rng)
        # the ellipse fallback may slightly exceed the bounds; the Perlin path stays inside them
        assert 0.5 * MIN_AREA <= m.mean() <= 1.5 * MAX_AREA


def test_perlin_noise_range_and_seed() -> None:
    a = perlin_noise((48, 40), (4, 2), np.random.default_rng(5))
    b = perlin_noise((48, 40), (4, 2), np.random.default_rng(5))
    assert a.shape == (48, 40) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05


def test_batch_is_deterministic_and_draws_every_kind() -> None:
    imgs = np.stack([_image(i) for i in range(6)])
    o1, m1, k1 = synthesize_batch(imgs, np.random.default_rng(7))
    o2, m2, k2 = synthesize_batch(imgs, np.random.default_rng(7))
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(m1, m2)
    assert k1 == k2
    for i in range(len(imgs)):
        np.testing.assert_array_equal(o1[i][~m1[i]], imgs[i][~m1[i]])
    kinds = [synthesize(imgs[0], np.random.default_rng(s)).kind for s in range(60)]
    counts = {k: kinds.count(k) for k in KINDS}
    assert all(c >= 10 for c in counts.values()), counts  # roughly equal probability


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown synthesis kind"):
        synthesize(_image(0), np.random.default_rng(0), kind="scratch")


def test_preview_grid_and_file(tmp_path: Path) -> None:
    u8 = [(_image(i, 48) * 255).astype(np.uint8) for i in range(3)]
    grid = preview_grid(u8, seed=1)
    assert grid.shape == (3 * 48, 4 * 48, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:48, :48], u8[0])  # first column is the original

    folder = tmp_path / "good"
    folder.mkdir()
    for i, im in enumerate(u8):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = tmp_path / "grid.png"
    msg = write_preview(str(folder), str(out), seed=0, n_images=2, size=32)
    assert out.is_file() and "2 images" in msg
    assert cv2.imread(str(out)).shape == (2 * 32, 4 * 32, 3)


def test_texture_on_monochrome_image_stays_grey() -> None:
    gray = np.repeat(_image(3)[..., :1], 3, axis=2)
    for seed in range(6):
        r = synthesize(gray, np.random.default_rng(seed), other=_image(4), kind="texture")
        assert np.abs(r.image[..., 0] - r.image[..., 1]).max() < 1e-5
        assert np.abs(r.image[..., 1] - r.image[..., 2]).max() < 1e-5
        assert np.any(r.image[r.mask] != gray[r.mask])
