"""Anomaly synthesis for CSE training (numpy + OpenCV, no torch).

Three defect families, drawn with equal probability (as in the CSE paper, Thomine & Snoussi):

* ``texture``: a Perlin-noise-shaped region filled from a foreign texture. The paper fills from
  DTD; edgekit works offline, so the texture comes either from a procedurally generated texture
  (coloured Perlin noise, stripes, checkers, blobs; 2/3 of the time) or from a colour-jittered,
  rotated crop of another training image of the batch (1/3; needs a second image). On
  monochrome images (equal RGB channels) the texture is made grey as well.
* ``structural``: the image cut into a grid of cells that are shuffled and rotated/flipped, shown
  through a Perlin region (breaks the product's own structure with its own pixels).
* ``blur``: a Gaussian-blurred copy of the image shown through a Perlin region (or an ellipse when
  the noise threshold leaves too little area).

Every function takes a ``numpy.random.Generator``; the same seed gives the same defects. The
mask returned is exactly the set of pixels that may differ from the input: outside the mask the
output equals the input bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("texture", "structural", "blur")
# a region must cover at least this fraction of the image, at most MAX_AREA, or it is redrawn
MIN_AREA = 0.005
MAX_AREA = 0.35


@dataclass(frozen=True)
class SynthesisResult:
    """One synthetic defect: ``image`` (H, W, 3) float32 in [0, 1], ``mask`` (H, W) bool,
    ``kind`` one of KINDS."""

    image: np.ndarray
    mask: np.ndarray
    kind: str


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise.

    Args:
        shape: (H, W) of the output.
        res: number of noise periods along (H, W), each >= 1.
    Returns:
        (H, W) float32 roughly in [-1, 1].
    """
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0.0, ry, h, endpoint=False)
    xs = np.linspace(0.0, rx, w, endpoint=False)
    yi, xi = ys.astype(int), xs.astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grads[(yi + oy)[:, None], (xi + ox)[None, :]]
        return g[..., 0] * (yf - oy) + g[..., 1] * (xf - ox)

    u, v = _fade(xf), _fade(yf)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return (math.sqrt(2.0) * (top * (1 - v) + bottom * v)).astype(np.float32)


def _ellipse_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    center = (int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8)))
    axes = (int(rng.integers(max(2, w // 16), max(3, w // 5))), int(rng.integers(max(2, h // 16), max(3, h // 5))))
    cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return m.astype(bool)


def perlin_mask(h: int, w: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """Random blob-shaped region from thresholded, rotated Perlin noise.

    Returns:
        (H, W) bool with an area between MIN_AREA and MAX_AREA of the image (an ellipse is used
        if the noise keeps missing that range).
    """
    for _ in range(tries):
        res = (2 ** int(rng.integers(0, 4)), 2 ** int(rng.integers(0, 4)))
        noise = perlin_noise((h, w), res, rng)
        # rotating the noise field removes the axis-aligned look of the lattice
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-90, 90)), 1.0)
        noise = cv2.warpAffine(noise, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
        mask = noise > float(rng.uniform(0.35, 0.6))
        area = float(mask.mean())
        if MIN_AREA <= area <= MAX_AREA:
            return mask
    return _ellipse_mask(h, w, rng)


def procedural_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A foreign texture standing in for DTD: coloured Perlin noise, stripes, checkers or blobs.

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    kind = int(rng.integers(0, 4))
    c1, c2 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    if kind == 0:  # coloured multi-octave noise
        t = sum(perlin_noise((h, w), (2**o, 2**o), rng) / 2**o for o in range(1, 5))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == 1:  # stripes of random angle and period
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(3, max(4.0, min(h, w) / 6))
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period)
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(3, max(4, min(h, w) // 8)))
        yy, xx = np.mgrid[0:h, 0:w]
        t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
    else:  # random blobs (speckle) blurred
        t = (rng.uniform(0, 1, (h, w)) > 0.8).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), float(rng.uniform(1.0, 3.0)))
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    tex = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    return np.clip(tex, 0, 1).astype(np.float32)


def _foreign_crop(other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another training image made foreign: rotated, flipped and colour-jittered."""
    h, w = other.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 360)), float(rng.uniform(0.7, 1.5)))
    out = cv2.warpAffine(other, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    gain = rng.uniform(0.6, 1.4, 3).astype(np.float32)
    bias = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
    return np.clip(out * gain + bias, 0, 1).astype(np.float32)


def structural_source(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image cut into a grid (2..8 cells a side), cells shuffled and each rotated by a
    multiple of 90° or flipped. Cells are square so rotations keep their shape."""
    h, w = image.shape[:2]
    n = int(rng.integers(2, 9))
    cell = max(1, min(h, w) // n)
    ny, nx = h // cell, w // cell
    out = image.copy()
    cells = [image[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] for y in range(ny) for x in range(nx)]
    order = rng.permutation(len(cells))
    for i, j in enumerate(order):
        y, x = divmod(i, nx)
        c = np.rot90(cells[j], int(rng.integers(0, 4)))
        if rng.uniform() < 0.5:
            c = c[:, ::-1]
        out[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = c
    return out


def _is_gray(img: np.ndarray, tol: float = 2.0 / 255.0) -> bool:
    """True when the three channels are equal (monochrome camera stored as RGB)."""
    return bool(np.abs(img[..., 0] - img[..., 1]).max() <= tol and np.abs(img[..., 1] - img[..., 2]).max() <= tol)


def synthesize(
    image: np.ndarray, rng: np.random.Generator, other: np.ndarray | None = None, kind: str | None = None
) -> SynthesisResult:
    """Paint one synthetic defect into ``image``.

    Args:
        image: (H, W, 3) float32 RGB in [0, 1].
        rng: seeded generator (all randomness comes from it).
        other: optional (H, W, 3) float32 second good image used as a texture source.
        kind: force one of KINDS; None draws uniformly.
    Returns:
        SynthesisResult with the defective image (equal to ``image`` outside ``mask``).
    """
    img = np.ascontiguousarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    if kind is None:
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown synthesis kind {kind!r} (valid: {', '.join(KINDS)})")
    mask = perlin_mask(h, w, rng)
    if kind == "texture":
        use_other = other is not None and rng.uniform() < 1.0 / 3.0
        src = _foreign_crop(np.asarray(other, np.float32), rng) if use_other else procedural_texture(h, w, rng)
        if _is_gray(img):
            # a monochrome camera never sees colour: a coloured patch would teach the embedder
            # "colour = defect", which no real defect on that line satisfies
            src = np.repeat(src.mean(axis=2, keepdims=True), 3, axis=2)
        # opacity below 1 keeps some of the product visible through the defect (as DRAEM/CSE do)
        beta = float(rng.uniform(0.5, 1.0))
        src = beta * src + (1.0 - beta) * img
    elif kind == "structural":
        src = structural_source(img, rng)
    else:
        src = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(2.0, 6.0)), borderType=cv2.BORDER_REFLECT)
    out = img.copy()
    out[mask] = src[mask]
    return SynthesisResult(out, mask, kind)


def synthesize_batch(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Synthesise one defect per image; another image of the batch is the foreign texture source.

    Args:
        images: (N, H, W, 3) float32 RGB in [0, 1].
    Returns:
        defective images (N, H, W, 3) float32, masks (N, H, W) bool, kinds (list of N str).
    """
    n = images.shape[0]
    outs, masks, kinds = [], [], []
    for i in range(n):
        other = images[(i + 1 + int(rng.integers(0, n - 1))) % n] if n > 1 else None
        r = synthesize(images[i], rng, other=other)
        outs.append(r.image)
        masks.append(r.mask)
        kinds.append(r.kind)
    return np.stack(outs), np.stack(masks), kinds


def preview_grid(images: list[np.ndarray], seed: int = 0, per_image: int = 3) -> np.ndarray:
    """Grid for eyeballing the synthesis: one row per image — original, then ``per_image``
    defects, each followed by its mask outlined in red.

    Args:
        images: list of (S, S, 3) uint8 RGB images of equal size.
    Returns:
        (rows·S, (1 + per_image)·S, 3) uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    rows = []
    floats = [im.astype(np.float32) / 255.0 for im in images]
    for i, im in enumerate(floats):
        tiles = [images[i]]
        for j in range(per_image):
            other = floats[(i + 1) % len(floats)] if len(floats) > 1 else None
            r = synthesize(im, rng, other=other, kind=KINDS[j % len(KINDS)])
            vis = (np.clip(r.image, 0, 1) * 255).astype(np.uint8)
            contours, _ = cv2.findContours(r.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            vis = np.ascontiguousarray(vis)
            cv2.drawContours(vis, contours, -1, (255, 0, 0), 1)
            tiles.append(vis)
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(data_dir: str, out_path: str, seed: int = 0, n_images: int = 4, size: int = 256) -> str:
    """``edgekit data preview-synthesis``: grid PNG of synthetic defects on the first good images
    of a dataset (``DIR/train/good``) or a plain image folder. Returns a one-line summary."""
    from pathlib import Path

    from edgekit.data.dataset import list_images, scan_dataset
    from edgekit.data.images import read_image
    from edgekit.errors import ConfigError, DataError

    if n_images < 1 or size < 16:
        raise ConfigError(f"preview-synthesis: --n {n_images} must be >= 1 and --size {size} >= 16")
    root = Path(data_dir)
    paths = scan_dataset(root).train_good if (root / "train" / "good").is_dir() else list_images(root)
    if not paths:
        raise DataError(f"{root}: no good images found; pass a dataset with train/good/ or a folder of images")
    # spread the rows over the whole set rather than the first few (often near-identical) files
    pick = np.linspace(0, len(paths) - 1, min(n_images, len(paths))).round().astype(int)
    images = [cv2.resize(read_image(paths[i]), (size, size), interpolation=cv2.INTER_AREA) for i in pick]
    grid = preview_grid(images, seed=seed)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise DataError(f"{out}: cannot write the PNG; check the folder and the .png extension")
    return f"{out}: {len(images)} images x {len(KINDS)} synthetic defects ({', '.join(KINDS)}), seed {seed}"
