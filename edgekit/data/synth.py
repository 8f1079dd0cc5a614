"""Procedural textures with pixel-masked defects, written in the MVTec AD layout (numpy + OpenCV,
no torch). Used by the demo, the tests and domain-generalisation experiments (several kinds =
several "categories").

Kinds:

- ``fabric``: woven cloth rendered analytically per pixel: warp (vertical) and weft (horizontal)
  yarns on a pitch of ~8–12 px at 256² (scaled with the image, at least 5 px), interlaced in a plain or twill weave chosen by the
  dataset seed, each yarn with its own thickness (slowly varying along its length), brightness
  and waviness, cylindrical cross-section shading, darker where it dives under a crossing yarn,
  twist striations and fibre noise stretched along the yarn; per image a slight rotation
  (±3°), shift, lighting gradient, gain and sensor noise. Defects: hole, stain (oil or dye),
  broken_yarn (a gap with a loose curled end), missing_yarn (a line across the image where one
  yarn is absent), knot (a thick slub); about a quarter are rendered subtle.
- ``tiles``: glazed ceramic: mottled multi-scale colour noise, mineral speckles, a soft glaze
  highlight. Defects: crack, stain, chip.
- ``parts``: greyscale crops of a machined part (a development set with the failure modes of real
  product data, e.g. magnetic tiles): unaligned crops of mixed size and aspect ratio (long side
  ~0.6–1.5× ``size``, aspect 1–2.8, portrait or landscape; written as grey PNG or JPEG), a ground
  face with grinding marks and a bright chamfered edge that sits at a random offset and tilt, so
  in most good images an edge or a rounded corner runs into the image border. Defects: crack
  (1–2 px hairline, low contrast, long and tortuous), uneven (a large, smooth, low-contrast
  brightness undulation), blowhole (small dark pits), break (a chip out of the part's edge).

Every defect is composited only inside its mask, so the mask is exactly the set of pixels a
defect may change. Output is deterministic per seed (same bytes on the same platform).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgekit.errors import ConfigError, DataError
from edgekit.registry import Registry

FABRIC_DEFECTS: tuple[str, ...] = ("hole", "stain", "broken_yarn", "missing_yarn", "knot")
TILE_DEFECTS: tuple[str, ...] = ("crack", "stain", "chip")
#: the defects ``add_defect`` paints on any RGB texture (fabric and tiles)
DEFECT_KINDS: tuple[str, ...] = tuple(dict.fromkeys(FABRIC_DEFECTS + TILE_DEFECTS))
#: the defects ``add_part_defect`` paints on a grey part image (they need its outline)
PART_DEFECTS: tuple[str, ...] = ("crack", "uneven", "blowhole", "break")
_SUBTLE_FRACTION = 0.25
_MARKER = "synth.json"


# ----------------------------------------------------------------------------- helpers
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise, roughly N(0, 1) per cell, bicubically upsampled: (h, w) float32."""
    grid = rng.standard_normal((max(2, cells_y), max(2, cells_x))).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return y, x


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h * 179.0, s * 255.0, v * 255.0]]], dtype=np.float32).astype(np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


# ----------------------------------------------------------------------------- fabric
_WEAVES = {
    # name: (warp-up count, warp-down count); warp is on top at (i, j) when (i ± j) % period < up
    "plain": (1, 1),
    "twill_2_1": (2, 1),
    "twill_2_2": (2, 2),
    "twill_3_1": (3, 1),
}


@dataclass(frozen=True)
class FabricStyle:
    """The cloth of one dataset (the seed picks it); images vary around it."""

    weave: str
    diagonal: int  # +1 or -1: direction of the twill line
    pitch_px: float  # yarn spacing at 256 px image size
    fill: float  # yarn width / pitch
    thickness_jitter: float
    warp_rgb: tuple[float, float, float]
    weft_rgb: tuple[float, float, float]
    backing_rgb: tuple[float, float, float]
    twist_deg: float
    fibre: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> FabricStyle:
        """Draw a cloth style (weave, pitch, colours, yarn character)."""
        weave = str(rng.choice(list(_WEAVES)))
        hue = float(rng.random())
        sat = float(rng.uniform(0.1, 0.7))
        val = float(rng.uniform(0.5, 0.85))
        warp = _hsv_to_rgb(hue, sat, val)
        if rng.random() < 0.5:  # same yarn both ways, slightly different lot
            weft = np.clip(warp * rng.uniform(0.9, 1.1), 0, 1)
        else:  # e.g. denim: dyed warp, light weft
            weft = _hsv_to_rgb(float((hue + rng.uniform(-0.1, 0.1)) % 1.0), sat * 0.3, min(0.95, val + 0.15))
        backing = warp * 0.15
        return cls(
            weave=weave,
            diagonal=int(rng.choice([-1, 1])),
            pitch_px=float(rng.uniform(8.0, 12.0)),
            fill=float(rng.uniform(0.72, 0.9)),
            thickness_jitter=float(rng.uniform(0.03, 0.08)),
            warp_rgb=tuple(float(c) for c in warp),
            weft_rgb=tuple(float(c) for c in weft),
            backing_rgb=tuple(float(c) for c in backing),
            twist_deg=float(rng.uniform(20.0, 40.0)),
            fibre=float(rng.uniform(0.04, 0.08)),
        )


@dataclass(frozen=True)
class Geometry:
    """What ``add_defect`` needs to align line defects with the yarns of a rendered image."""

    angle_deg: float
    pitch_px: float


def _edge_shade(d: np.ndarray) -> np.ndarray:
    """Brightness of a yarn at distance ``d`` (cell units, 0..1) from where it dives under."""
    return 0.6 + 0.4 * np.sin(0.5 * np.pi * np.clip(d / 0.45, 0.0, 1.0))


def _render_fabric(rng: np.random.Generator, size: int, style: FabricStyle,
                   defect: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Render one fabric image: (size, size, 3) float32 RGB in [0, 1] and its geometry
    (``defect``, the one to be painted, needs no particular framing on a texture)."""
    h = w = size
    scale = size / 256.0
    # the cloth scales with the image (same field of view), but a yarn never gets thinner than
    # 5 px: below that small test images would alias into noise
    p = max(5.0, style.pitch_px * scale) * float(rng.uniform(0.97, 1.03))
    angle_deg = float(rng.uniform(-3.0, 3.0))
    a = math.radians(angle_deg)
    y, x = _grid(h, w)
    x -= w / 2.0
    y -= h / 2.0
    u = math.cos(a) * x + math.sin(a) * y + float(rng.uniform(0, 100 * p))
    v = -math.sin(a) * x + math.cos(a) * y + float(rng.uniform(0, 100 * p))
    # gentle waviness: yarns are never perfectly straight
    u = u + 0.35 * scale * np.sin(2 * np.pi * v / (rng.uniform(40, 90) * scale) + rng.uniform(0, 6.3))
    v = v + 0.35 * scale * np.sin(2 * np.pi * u / (rng.uniform(40, 90) * scale) + rng.uniform(0, 6.3))

    i_f = np.floor(u / p)
    j_f = np.floor(v / p)
    fu = u / p - i_f
    fv = v / p - j_f
    i0, j0 = int(i_f.min()), int(j_f.min())
    ii = (i_f - i0).astype(np.int32)
    jj = (j_f - j0).astype(np.int32)
    n_i, n_j = int(ii.max()) + 2, int(jj.max()) + 2

    # per-yarn character: thickness, brightness, along-length thickness wobble
    tw = style.fill * (1 + style.thickness_jitter * rng.standard_normal(n_i)).astype(np.float32)
    tf = style.fill * (1 + style.thickness_jitter * rng.standard_normal(n_j)).astype(np.float32)
    bw = (1 + 0.05 * rng.standard_normal(n_i)).astype(np.float32)
    bf = (1 + 0.05 * rng.standard_normal(n_j)).astype(np.float32)
    lam_w = (rng.uniform(3, 9, n_i) * p).astype(np.float32)
    ph_w = rng.uniform(0, 6.3, n_i).astype(np.float32)
    lam_f = (rng.uniform(3, 9, n_j) * p).astype(np.float32)
    ph_f = rng.uniform(0, 6.3, n_j).astype(np.float32)
    wob = 0.06
    tw_px = tw[ii] * (1 + wob * np.sin(2 * np.pi * v / lam_w[ii] + ph_w[ii]))
    tf_px = tf[jj] * (1 + wob * np.sin(2 * np.pi * u / lam_f[jj] + ph_f[jj]))

    up, down = _WEAVES[style.weave]
    period = up + down

    # weave phase of each pixel's cell, then a lookup for the cell and its 4 neighbours
    phase = np.mod((i_f + style.diagonal * j_f).astype(np.int32), period)
    lut = (np.arange(3 * period) % period) < up

    def warp_on_top(di: int, dj: int) -> np.ndarray:
        return lut[phase + (di + style.diagonal * dj + period)]

    top = warp_on_top(0, 0)
    top_prev, top_next = warp_on_top(0, -1), warp_on_top(0, 1)
    left_weft, right_weft = ~warp_on_top(-1, 0), ~warp_on_top(1, 0)

    dx = np.abs(fu - 0.5) * 2 / tw_px  # <1 inside the warp yarn
    dy = np.abs(fv - 0.5) * 2 / tf_px
    in_warp = dx < 1
    in_weft = dy < 1
    cyl_w = np.sqrt(np.clip(1 - dx * dx, 0, 1))
    cyl_f = np.sqrt(np.clip(1 - dy * dy, 0, 1))
    # along-length shading: a yarn on top darkens toward the cell edge where it goes under
    along_w = np.where(top_prev, 1.0, _edge_shade(fv)) * np.where(top_next, 1.0, _edge_shade(1 - fv))
    along_f = np.where(left_weft, 1.0, _edge_shade(fu)) * np.where(right_weft, 1.0, _edge_shade(1 - fu))

    tw_rad = math.tan(math.radians(style.twist_deg))
    period_tw = max(2.0, 2.6 * scale)
    twist_w = np.sin(2 * np.pi * (u - v * tw_rad) / period_tw)
    twist_f = np.sin(2 * np.pi * (v - u * tw_rad) / period_tw)
    # fibre noise: stretched along each yarn direction (rotation is small, so axis-aligned)
    fib_w = _smooth_noise(rng, h, w, h // 8, w // 1)
    fib_f = _smooth_noise(rng, h, w, h // 1, w // 8)

    light_w = (0.5 + 0.5 * cyl_w) * along_w * bw[ii] * (1 + 0.05 * twist_w + style.fibre * fib_w)
    light_f = (0.5 + 0.5 * cyl_f) * along_f * bf[jj] * (1 + 0.05 * twist_f + style.fibre * fib_f)

    warp_c = np.array(style.warp_rgb, np.float32)
    weft_c = np.array(style.weft_rgb, np.float32)
    back_c = np.array(style.backing_rgb, np.float32)
    under = 0.55  # a yarn seen through a gap lies in the shadow of the one on top
    show_warp = np.where(top, in_warp, in_warp & ~in_weft)
    show_weft = np.where(top, ~in_warp & in_weft, in_weft)
    # show_warp and show_weft never overlap: one colour index and one brightness per pixel
    sel = show_warp.astype(np.uint8) + 2 * show_weft.astype(np.uint8)
    light = np.where(show_warp, np.where(top, light_w, light_w * under),
                     np.where(show_weft, np.where(top, light_f * under, light_f), 1.0))

    # dye unevenness, lighting gradient + vignette, gain, colour cast, sensor noise
    dye = 1 + 0.03 * _smooth_noise(rng, h, w, 4, 4)
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    r2 = (x * x + y * y) / (0.5 * size) ** 2
    lighting = (1 + gx * x / (w / 2) + gy * y / (h / 2)) * (1 - 0.08 * r2) * rng.uniform(0.92, 1.08)
    cast = (1 + rng.uniform(-0.03, 0.03, 3)).astype(np.float32)
    palette = np.stack([back_c, warp_c, weft_c]) * cast
    img = palette[sel] * (light * dye * lighting).astype(np.float32)[..., None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(1.2 / 255)
    return np.clip(img, 0, 1).astype(np.float32), Geometry(angle_deg, p)


# ----------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class TileStyle:
    """The glaze of one tile dataset."""

    base_rgb: tuple[float, float, float]
    speckle_rgb: tuple[tuple[float, float, float], ...]
    mottle: float
    speckles_per_256: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> TileStyle:
        """Draw a tile style (base colour, speckle colours, mottling)."""
        base = _hsv_to_rgb(float(rng.uniform(0.02, 0.15)), float(rng.uniform(0.05, 0.45)), float(rng.uniform(0.55, 0.85)))
        speck = tuple(
            # mineral grains: darker or lighter than the glaze, only slightly off its hue
            tuple(float(c) for c in np.clip(base * rng.uniform(0.35, 1.3) * (1 + rng.uniform(-0.08, 0.08, 3)), 0, 1))
            for _ in range(4)
        )
        return cls(tuple(float(c) for c in base), speck, float(rng.uniform(0.04, 0.09)), int(rng.integers(250, 600)))


def _render_tiles(rng: np.random.Generator, size: int, style: TileStyle,
                  defect: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Render one glazed tile surface: (size, size, 3) float32 RGB in [0, 1] (``defect`` ignored)."""
    h = w = size
    mottle = np.zeros((h, w), np.float32)
    for cells, amp in ((3, 1.0), (8, 0.6), (24, 0.35), (64, 0.2)):
        mottle += amp * _smooth_noise(rng, h, w, cells, cells)
    base = np.array(style.base_rgb, np.float32) * (1 + style.mottle * mottle)[..., None]
    tint = _smooth_noise(rng, h, w, 5, 5)[..., None] * np.array([0.02, -0.01, -0.02], np.float32)
    img = np.clip(base + tint, 0, 1)
    n = int(style.speckles_per_256 * (size / 256.0) ** 2)
    layer = np.zeros((h, w, 3), np.float32)
    cover = np.zeros((h, w), np.float32)
    for _ in range(n):
        c = style.speckle_rgb[int(rng.integers(len(style.speckle_rgb)))]
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        r = int(rng.integers(0, 4))
        cv2.circle(layer, (cx, cy), r, c, -1, lineType=cv2.LINE_8)
        cv2.circle(cover, (cx, cy), r, 1.0, -1, lineType=cv2.LINE_8)
    # soften grain edges (fired glaze, not stamped dots); layer colours are kept where covered
    soft = cv2.GaussianBlur(cover, (0, 0), 0.8)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.8) / np.maximum(soft, 1e-3)[..., None]
    img = img * (1 - soft[..., None]) + layer * soft[..., None]
    y, x = _grid(h, w)
    hx, hy = rng.uniform(0.2, 0.8, 2) * size
    glaze = 0.06 * np.exp(-((x - hx) ** 2 + (y - hy) ** 2) / (2 * (0.35 * size) ** 2))
    img = img * rng.uniform(0.93, 1.07) + glaze[..., None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(1.2 / 255)
    return np.clip(img, 0, 1).astype(np.float32), Geometry(0.0, 10.0 * size / 256.0)


# ----------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class _Kind:
    """One synthetic kind. ``render(rng, size, style, defect)`` returns a float image in [0, 1]
    ((H, W, 3) RGB or (H, W) grey) and its geometry; ``defect`` is the defect about to be painted
    (None for a good image), so a renderer can frame the image for it. ``paint(img_u8, defect,
    rng, subtle, geometry)`` returns the defect image and its bool mask (default: ``add_defect``).
    A share ``jpeg_fraction`` of the images (drawn per image, independent of the label) is
    written as JPEG at ``jpeg_quality``, the rest as PNG."""

    sample_style: Callable[[np.random.Generator], object]
    render: Callable[..., tuple[np.ndarray, Geometry]]
    defects: tuple[str, ...]
    describe: Callable[[object], str]
    paint: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None
    jpeg_fraction: float = 0.0
    jpeg_quality: int = 92


SYNTH_KINDS: Registry[_Kind] = Registry("synthetic kind")
SYNTH_KINDS.register("fabric")(
    _Kind(FabricStyle.sample, _render_fabric, FABRIC_DEFECTS, lambda s: f"{s.weave} weave, pitch {s.pitch_px:.1f} px")
)
SYNTH_KINDS.register("tiles")(_Kind(TileStyle.sample, _render_tiles, TILE_DEFECTS, lambda s: "glazed ceramic"))


def generate_fabric(rng: np.random.Generator, size: int = 256, style: FabricStyle | None = None) -> np.ndarray:
    """A defect-free woven fabric image.

    Args:
        rng: randomness (style, when not given, and per-image variation).
        size: image side in pixels.
        style: the cloth; drawn from ``rng`` when None.
    Returns:
        (size, size, 3) uint8 RGB.
    """
    style = style if style is not None else FabricStyle.sample(rng)
    img, _ = _render_fabric(rng, size, style)
    return _to_u8(img)


def generate_tiles(rng: np.random.Generator, size: int = 256, style: TileStyle | None = None) -> np.ndarray:
    """A defect-free glazed ceramic tile image: (size, size, 3) uint8 RGB."""
    style = style if style is not None else TileStyle.sample(rng)
    img, _ = _render_tiles(rng, size, style)
    return _to_u8(img)


# ----------------------------------------------------------------------------- defects
def _soft_blob(rng: np.random.Generator, h: int, w: int, center: tuple[float, float], radius: float,
               irregular: float = 0.25) -> np.ndarray:
    """Irregular elliptic blob as a normalised radius field (<1 inside): (h, w) float32."""
    y, x = _grid(h, w)
    cx, cy = center
    th = rng.uniform(0, np.pi)
    ry = radius * rng.uniform(0.6, 1.4)
    dx, dy = x - cx, y - cy
    xr = math.cos(th) * dx + math.sin(th) * dy
    yr = -math.sin(th) * dx + math.cos(th) * dy
    r = np.sqrt((xr / radius) ** 2 + (yr / ry) ** 2)
    return r + irregular * _smooth_noise(rng, h, w, 6, 6) * np.clip(r, 0, 1.5)


def _line_coords(h: int, w: int, center: tuple[float, float], angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) signed distances in px of each pixel from a line through ``center``."""
    y, x = _grid(h, w)
    dx, dy = x - center[0], y - center[1]
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return dx * c + dy * s, -dx * s + dy * c


def _directional_blur(img: np.ndarray, length_px: float, angle_rad: float) -> np.ndarray:
    k = max(3, int(round(length_px)) | 1)
    kernel = np.zeros((k, k), np.float32)
    c = k // 2
    dx, dy = math.cos(angle_rad) * c, math.sin(angle_rad) * c
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    kernel /= kernel.sum()
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _center(rng: np.random.Generator, h: int, w: int, margin: float = 0.15) -> tuple[float, float]:
    return float(rng.uniform(margin, 1 - margin) * w), float(rng.uniform(margin, 1 - margin) * h)


def add_defect(
    rgb: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    *,
    subtle: bool | None = None,
    angle_deg: float = 0.0,
    pitch_px: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect into an image; only pixels inside the returned mask change.

    Args:
        rgb: (H, W, 3) uint8 RGB (any texture).
        kind: one of ``DEFECT_KINDS`` (hole, stain, broken_yarn, missing_yarn, knot, crack, chip).
        rng: randomness for placement, size and strength.
        subtle: weaker, smaller variant; None draws it (25 %).
        angle_deg: yarn direction of the image (weft along ``angle_deg``, warp perpendicular), so
            line defects follow the weave.
        pitch_px: yarn spacing in px (default: image side / 24).
    Returns:
        (rgb (H, W, 3) uint8, mask (H, W) bool).
    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind not in DEFECT_KINDS:
        raise ConfigError(f"unknown defect kind {kind!r} (valid: {', '.join(DEFECT_KINDS)})")
    h, w = rgb.shape[:2]
    size = float(min(h, w))
    pitch = float(pitch_px) if pitch_px else size / 24.0
    if subtle is None:
        subtle = bool(rng.random() < _SUBTLE_FRACTION)
    img = rgb.astype(np.float32) / 255.0
    mean_c = img.reshape(-1, 3).mean(axis=0)
    weft_dir = math.radians(angle_deg)
    # alpha: how much of ``target`` replaces the image at each pixel (0 outside the defect)
    alpha = np.zeros((h, w), np.float32)
    target = img.copy()

    if kind in ("hole", "chip"):
        radius = size * (rng.uniform(0.025, 0.045) if subtle else rng.uniform(0.045, 0.09))
        r = _soft_blob(rng, h, w, _center(rng, h, w), radius, 0.5)
        rim = 1.25
        alpha = np.where(r < rim, 1.0, 0.0).astype(np.float32)
        yy = _smooth_noise(rng, h, w, int(size / 4), int(size / 4))
        if kind == "hole":  # dark backing through the hole, frayed darker rim
            inside = np.clip(np.array([0.06, 0.06, 0.07]) * rng.uniform(0.5, 2.0) + 0.02 * yy[..., None], 0, 1)
            rim_img = img * (0.55 + 0.15 * yy[..., None])
        else:  # chipped glaze: light, rough ceramic body, shaded edge
            body = np.clip(np.array([0.86, 0.82, 0.74]) * rng.uniform(0.9, 1.05), 0, 1)
            inside = body * (1 + 0.06 * yy[..., None])
            rim_img = img * 0.7
        target = np.where((r < 1)[..., None], inside, rim_img).astype(np.float32)

    elif kind == "stain":
        radius = size * (rng.uniform(0.04, 0.07) if subtle else rng.uniform(0.06, 0.13))
        r = _soft_blob(rng, h, w, _center(rng, h, w), radius, 0.35)
        a = np.clip((1.0 - r) / 0.5, 0, 1)
        a = np.where(a < 0.03, 0.0, a).astype(np.float32)
        strength = rng.uniform(0.2, 0.3) if subtle else rng.uniform(0.5, 0.8)
        alpha = a * strength
        if rng.random() < 0.5:  # oil: darker, a little more saturated
            target = img * np.array([0.4, 0.36, 0.3], np.float32)
        else:  # dye / colour stain keeps the texture, shifts the colour
            tint = _hsv_to_rgb(float(rng.random()), float(rng.uniform(0.5, 0.9)), 0.9)
            target = img * (tint / np.maximum(tint.mean(), 1e-3))

    elif kind in ("broken_yarn", "missing_yarn"):
        direction = weft_dir + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        center = _center(rng, h, w, 0.2)
        along, across = _line_coords(h, w, center, direction)
        width = pitch * (rng.uniform(0.45, 0.6) if subtle else rng.uniform(0.6, 0.85))
        band = np.abs(across) < width / 2
        # the crossing yarns show through continuously: smear across the gap, and it is darker
        smear = _directional_blur(img, pitch * 1.5, direction + math.pi / 2)
        dark = rng.uniform(0.65, 0.75) if subtle else rng.uniform(0.35, 0.55)
        if kind == "missing_yarn":
            alpha = band.astype(np.float32)
            target = smear * dark
        else:
            length = size * (rng.uniform(0.1, 0.18) if subtle else rng.uniform(0.15, 0.35))
            seg = band & (np.abs(along) < length / 2)
            target = smear * dark
            # the loose end curls out of the fabric at one end of the gap
            layer = np.zeros((h, w), np.float32)
            sign = 1 if rng.random() < 0.5 else -1
            end = np.array(center) + sign * (length / 2) * np.array([math.cos(direction), math.sin(direction)])
            t = np.linspace(0, 1, 24)
            bend = rng.uniform(0.6, 1.6) * rng.choice([-1, 1])
            ang = direction + (0 if sign > 0 else math.pi) + bend * t
            step = length * rng.uniform(0.3, 0.6) / len(t)
            pts = end + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, axis=0)
            thick = max(2, int(round(pitch * 0.45)))
            cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, 1.0, thick, lineType=cv2.LINE_8)
            fibre_c = np.clip(mean_c * rng.uniform(1.05, 1.25), 0, 1)
            stripes = 1 + 0.08 * np.sin(np.arange(w, dtype=np.float32)[None, :] * 2.1 + np.arange(h)[:, None] * 1.3)
            loose = (layer > 0) & ~seg
            target = np.where(loose[..., None], fibre_c * stripes[..., None], target).astype(np.float32)
            alpha = (seg | loose).astype(np.float32)

    elif kind == "knot":
        direction = weft_dir + (math.pi / 2 if rng.random() < 0.5 else 0.0)
        along, across = _line_coords(h, w, _center(rng, h, w), direction)
        length = pitch * (rng.uniform(1.8, 2.5) if subtle else rng.uniform(3.0, 5.0))
        width = pitch * (rng.uniform(1.0, 1.3) if subtle else rng.uniform(1.3, 2.0))
        r = np.sqrt((along / (length / 2)) ** 2 + (across / (width / 2)) ** 2)
        alpha = np.clip((1 - r) / 0.25, 0, 1).astype(np.float32)
        bright = rng.uniform(1.15, 1.3) if subtle else rng.uniform(1.35, 1.7)
        shade = 0.7 + 0.45 * np.sqrt(np.clip(1 - r * r, 0, 1))
        twist = 1 + 0.1 * np.sin(2 * np.pi * (along * 0.6 + across) / max(2.0, pitch * 0.3))
        target = (mean_c * bright * (shade * twist)[..., None]).astype(np.float32)

    elif kind == "crack":
        layer = np.zeros((h, w), np.float32)
        n = int(rng.integers(20, 40))
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, n))
        step = size * (rng.uniform(0.006, 0.01) if subtle else rng.uniform(0.01, 0.018))
        pts = np.array(_center(rng, h, w, 0.25)) + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, 0)
        thick = 1 if subtle else int(rng.integers(1, 3))
        cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, 1.0, thick, lineType=cv2.LINE_8)
        alpha = layer
        target = img * (rng.uniform(0.6, 0.75) if subtle else rng.uniform(0.25, 0.45))

    out = img * (1 - alpha[..., None]) + target * alpha[..., None]
    out_u8 = _to_u8(out)
    out_u8 = np.where((alpha > 0)[..., None], out_u8, rgb)  # bit-exact outside the mask
    return out_u8, alpha > 0


# ----------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class PartStyle:
    """The part of one ``parts`` dataset (grey levels in [0, 1], lengths in px at size 256)."""

    surface: float  # ground face
    edge: float  # bright chamfer along the outline
    background: float  # fixture / stage behind the part
    edge_px: float  # chamfer width
    corner_px: float  # corner radius
    grind_deg: float  # direction of the grinding marks relative to the part's axis
    grind: float  # their strength
    max_tilt_deg: float  # crops are not aligned with the part

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PartStyle:
        """Draw a part style (grey levels, chamfer, grinding marks, tilt range)."""
        return cls(
            surface=float(rng.uniform(0.36, 0.5)),
            edge=float(rng.uniform(0.8, 0.93)),
            background=float(rng.uniform(0.04, 0.14)),
            edge_px=float(rng.uniform(3.0, 6.0)),
            corner_px=float(rng.uniform(3.0, 16.0)),
            grind_deg=float(rng.choice([0.0, 90.0]) + rng.uniform(-4.0, 4.0)),
            grind=float(rng.uniform(0.015, 0.03)),
            max_tilt_deg=float(rng.uniform(6.0, 15.0)),
        )


@dataclass(frozen=True, eq=False)
class PartGeometry(Geometry):
    """Where the part lies in one image: ``sd`` is the signed distance (px) of each pixel to
    the part's outline, negative inside; the bright chamfer is ``-edge_px < sd < 0``."""

    sd: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    edge_px: float = 4.0
    scale: float = 1.0  # size / 256: lengths of the style and of the defects scale with it

    @property
    def part(self) -> np.ndarray:
        return self.sd < 0

    @property
    def edge(self) -> np.ndarray:
        return (self.sd < 0) & (self.sd > -self.edge_px)

    @property
    def face(self) -> np.ndarray:
        """The ground face: inside the part, off the chamfer."""
        return self.sd < -(self.edge_px + 1.0)


def _part_hw(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """A crop's (h, w): long side 0.6–1.5× ``size``; aspect near-square, moderate or elongated."""
    long = max(32, int(round(size * rng.uniform(0.6, 1.5))))
    u = rng.random()
    aspect = rng.uniform(1.0, 1.3) if u < 0.3 else rng.uniform(1.3, 2.2) if u < 0.75 else rng.uniform(2.2, 2.8)
    short = min(long, max(24, int(round(long / aspect))))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _render_parts(rng: np.random.Generator, size: int, style: PartStyle,
                  defect: str | None = None) -> tuple[np.ndarray, PartGeometry]:
    """Render one crop of the part: (h, w) float32 grey in [0, 1] and where the part lies.

    The part is a rounded rectangle at a random tilt. Per crop: the face fills it (20 %), one
    side of the part runs through it (50 %) or a corner does (30 %), the outline at a random
    offset from the image border, so the bright chamfer reaches the border. A break needs a
    visible outline, so its images always show a side or a corner.
    """
    h, w = _part_hw(rng, size)
    scale = size / 256.0
    ew = max(2.0, style.edge_px * scale * float(rng.uniform(0.85, 1.15)))
    corner = max(1.0, style.corner_px * scale * float(rng.uniform(0.7, 1.3)))
    tilt = math.radians(float(rng.uniform(-style.max_tilt_deg, style.max_tilt_deg)))
    y, x = _grid(h, w)
    c, s = math.cos(tilt), math.sin(tilt)
    t1 = c * x + s * y  # along the part's first axis
    t2 = -s * x + c * y
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float32)
    c1 = corners[:, 0] * c + corners[:, 1] * s
    c2 = -corners[:, 0] * s + corners[:, 1] * c
    far = ew + corner + 4.0
    lo1, hi1, lo2, hi2 = c1.min() - far, c1.max() + far, c2.min() - far, c2.max() + far
    u = rng.random()
    mode = ("face" if u < 0.2 else "side" if u < 0.7 else "corner") if defect != "break" else (
        "side" if u < 0.6 else "corner")
    near: list[int] = []
    if mode == "side":
        near = [int(rng.integers(4))]
    elif mode == "corner":
        near = [int(rng.integers(2)), 2 + int(rng.integers(2))]
    for side in near:
        # the outline at offset ``off`` inside the image border (up to half the chamfer outside it)
        extent = (w if side < 2 else h)
        off = float(rng.uniform(-0.4 * ew, 0.28 * extent))
        mid = (c1 if side < 2 else c2)
        if side == 0:
            lo1 = float(np.sort(mid)[:2].mean()) + off
        elif side == 1:
            hi1 = float(np.sort(mid)[-2:].mean()) - off
        elif side == 2:
            lo2 = float(np.sort(mid)[:2].mean()) + off
        else:
            hi2 = float(np.sort(mid)[-2:].mean()) - off
    # rounded-rectangle signed distance (negative inside)
    a, b = (hi1 - lo1) / 2.0, (hi2 - lo2) / 2.0
    r = min(corner, 0.9 * a, 0.9 * b)
    q1 = np.abs(t1 - (lo1 + hi1) / 2.0) - (a - r)
    q2 = np.abs(t2 - (lo2 + hi2) / 2.0) - (b - r)
    sd = (np.sqrt(np.maximum(q1, 0) ** 2 + np.maximum(q2, 0) ** 2) + np.minimum(np.maximum(q1, q2), 0) - r)
    sd = sd.astype(np.float32)

    gain = float(rng.uniform(0.94, 1.06))
    # ground face: grinding marks (noise smeared along one direction), grain, soft lighting
    marks = _directional_blur(rng.standard_normal((h, w), dtype=np.float32), 24 * scale + 3,
                              tilt + math.radians(style.grind_deg))
    marks *= style.grind / max(float(marks.std()), 1e-6)
    grain = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), 0.7) * np.float32(0.012)
    gx, gy = rng.uniform(-0.04, 0.04, 2)
    light = 1 + 0.025 * _smooth_noise(rng, h, w, 2, 2) + gx * (x / w - 0.5) * 2 + gy * (y / h - 0.5) * 2
    face = style.surface * gain * light + marks + grain
    # chamfer: bright band inside the outline, a little brighter toward the outer rim
    d = -sd
    band = np.clip(d + 0.5, 0, 1) * np.clip((ew - d) / 1.5 + 0.5, 0, 1)
    along = 1 + 0.03 * _smooth_noise(rng, h, w, max(2, h // 24), max(2, w // 24))
    chamfer = style.edge * gain * (0.92 + 0.08 * np.clip(1 - d / ew, 0, 1)) * along
    shadow = 1 - 0.06 * np.exp(-((d - ew - 0.8) ** 2) / 0.8)  # where the chamfer meets the face
    part = face * shadow * (1 - band) + chamfer * band
    back = style.background * (1 + 0.25 * _smooth_noise(rng, h, w, 3, 3))
    inside = np.clip(0.5 - sd, 0, 1)
    img = back * (1 - inside) + part * inside
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.5)  # optics
    img = img + rng.standard_normal((h, w), dtype=np.float32) * np.float32(1.5 / 255)
    return np.clip(img, 0, 1).astype(np.float32), PartGeometry(math.degrees(tilt), 10.0 * scale, sd, ew, scale)


def generate_parts(rng: np.random.Generator, size: int = 256, style: PartStyle | None = None) -> np.ndarray:
    """A defect-free crop of a grey part: (h, w) uint8, long side around ``size`` (it varies)."""
    style = style if style is not None else PartStyle.sample(rng)
    img, _ = _render_parts(rng, size, style)
    return _to_u8(img)


def _pick(rng: np.random.Generator, where: np.ndarray) -> tuple[float, float] | None:
    """A random (x, y) among the True pixels of ``where``, or None."""
    ys, xs = np.nonzero(where)
    if len(xs) == 0:
        return None
    k = int(rng.integers(len(xs)))
    return float(xs[k]), float(ys[k])


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool mask (an irregular blob can leave specks)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _walk(rng: np.random.Generator, start: tuple[float, float], length: float, step: float) -> np.ndarray:
    """A tortuous path that still gets somewhere: the heading jitters around a slowly drifting
    course (mean-reverting, so it zigzags instead of curling up), with a few sharp kinks.
    Returns (N, 2) float (x, y)."""
    n = max(3, int(length / step))
    course = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.04, n))
    dev = np.zeros(n)
    kick = rng.normal(0.0, 0.3, n)
    kinks = rng.random(n) < 0.03
    kick[kinks] = rng.normal(0.0, 1.0, int(kinks.sum()))
    for k in range(1, n):
        dev[k] = 0.8 * dev[k - 1] + kick[k]
    ang = course + dev
    return np.array(start) + np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * step, 0)


def add_part_defect(
    grey: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    geometry: PartGeometry,
    *,
    subtle: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect into a grey part image; only pixels inside the returned mask change.

    Args:
        grey: (h, w) uint8, as rendered by the ``parts`` kind.
        kind: one of ``PART_DEFECTS``: crack (1–2 px hairline, low contrast, long and
            tortuous), uneven (large smooth low-contrast brightness undulation), blowhole (1–3
            small dark pits), break (a chip out of the part's outline).
        rng: randomness for placement, size and strength.
        geometry: where the part lies in ``grey`` (from the renderer).
        subtle: weaker, smaller variant; None draws it (25 %).
    Returns:
        (grey (h, w) uint8, mask (h, w) bool).
    Raises:
        ConfigError: unknown ``kind``, or a break on an image that shows no part outline.
    """
    if kind not in PART_DEFECTS:
        raise ConfigError(f"unknown part defect kind {kind!r} (valid: {', '.join(PART_DEFECTS)})")
    h, w = grey.shape[:2]
    if subtle is None:
        subtle = bool(rng.random() < _SUBTLE_FRACTION)
    g, sd, ew, scale = geometry, geometry.sd, geometry.edge_px, geometry.scale
    img = grey.astype(np.float32) / 255.0
    alpha = np.zeros((h, w), np.float32)
    target = img.copy()

    if kind == "crack":
        layer = np.zeros((h, w), np.uint8)
        for _ in range(8):  # a start whose crack, clipped to the part, is long enough
            layer[:] = 0
            start = _pick(rng, g.face)
            if start is None:
                break
            length = max(h, w) * (rng.uniform(0.2, 0.45) if subtle else rng.uniform(0.35, 0.9))
            pts = _walk(rng, start, length, rng.uniform(1.5, 2.5))
            cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, 1, 1, lineType=cv2.LINE_8)
            if not subtle and rng.random() < 0.35:  # a branch
                root = pts[int(rng.integers(len(pts)))]
                branch = _walk(rng, (float(root[0]), float(root[1])), length * rng.uniform(0.25, 0.5), 2.0)
                cv2.polylines(layer, [np.round(branch).astype(np.int32)], False, 1, 1, lineType=cv2.LINE_8)
            if not subtle and rng.random() < 0.5:  # 2 px wide
                layer = cv2.dilate(layer, np.ones((2, 2), np.uint8))
            layer &= (sd < -0.5).astype(np.uint8)
            if int(layer.sum()) >= 0.1 * length:
                break
        dark = rng.uniform(0.8, 0.88) if subtle else rng.uniform(0.66, 0.8)
        alpha = layer.astype(np.float32)
        target = img * np.clip(dark * (1 + 0.08 * _smooth_noise(rng, h, w, h // 8 + 2, w // 8 + 2)), 0, 0.95)

    elif kind == "uneven":
        radius = min(h, w) * (rng.uniform(0.15, 0.25) if subtle else rng.uniform(0.22, 0.4))
        y, x = _grid(h, w)
        central = (np.abs(x / w - 0.5) < 0.3) & (np.abs(y / h - 0.5) < 0.3)
        center = _pick(rng, central & (sd < -(ew + 0.3 * radius))) or _pick(rng, g.face) or _center(rng, h, w)
        r = _soft_blob(rng, h, w, center, radius, 0.3)
        a = np.clip((1.0 - r) / 0.4, 0, 1) * np.clip((-sd - ew - 1.0) / 4.0, 0, 1)  # on the face only
        alpha = np.where(_largest(a >= 0.08), a, 0.0).astype(np.float32)
        amp = rng.uniform(0.02, 0.03) if subtle else rng.uniform(0.035, 0.065)
        period = rng.uniform(14, 30) * scale + 4
        _, across = _line_coords(h, w, center, rng.uniform(0, np.pi))
        wave = 0.6 * _smooth_noise(rng, h, w, int(h / period) + 2, int(w / period) + 2)
        wave += 0.5 * np.sin(2 * np.pi * across / (period * rng.uniform(1.0, 2.0)) + rng.uniform(0, 6.3))
        offset = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)
        target = img + amp * (wave + offset)

    elif kind == "blowhole":
        n = 1 if subtle else int(rng.integers(1, 4))
        for _ in range(n):
            radius = max(1.5, scale * (rng.uniform(1.5, 3.0) if subtle else rng.uniform(2.5, 6.0)))
            center = _pick(rng, sd < -(ew + 2 * radius + 2))
            if center is None:
                center = _pick(rng, g.part) or _center(rng, h, w)
            r = _soft_blob(rng, h, w, center, radius, 0.15)
            pit = r < 1.0
            rim = (r >= 1.0) & (r < 1.3)
            depth = np.sqrt(np.clip(1 - r * r, 0, 1))
            strength = rng.uniform(0.35, 0.55) if subtle else rng.uniform(0.55, 0.8)
            lx, ly = math.cos(rng.uniform(0, 2 * np.pi)), math.sin(rng.uniform(0, 2 * np.pi))
            y, x = _grid(h, w)
            side = np.clip(((x - center[0]) * lx + (y - center[1]) * ly) / radius, -1, 1)
            pit_img = img * (1 - strength * np.sqrt(depth)) * (1 + 0.25 * strength * side)
            target = np.where(pit, pit_img, np.where(rim, img * 1.08, target))
            alpha = np.maximum(alpha, (pit | rim).astype(np.float32))

    elif kind == "break":
        radius = max(3.0, scale * (rng.uniform(4.0, 9.0) if subtle else rng.uniform(9.0, 22.0)))
        center = _pick(rng, (sd < 0) & (sd > -0.35 * radius))
        if center is None:
            raise ConfigError("break: the image shows no part outline; render it with defect='break'")
        r = _soft_blob(rng, h, w, center, radius, 0.45)
        chip = _largest((r < 1.0) & (sd < 0.5))
        near = cv2.dilate(chip.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        rim = near & ~chip & (sd < -0.5)  # the fresh fracture edge
        rough = _smooth_noise(rng, h, w, h // 3 + 2, w // 3 + 2)
        fracture = rng.uniform(0.12, 0.28) + 0.04 * rough
        bright = rng.uniform(0.55, 0.75) if not subtle else rng.uniform(0.5, 0.6)
        target = np.where(chip, fracture, np.where(rim, np.maximum(img, bright), img)).astype(np.float32)
        alpha = (chip | rim).astype(np.float32)

    out = img * (1 - alpha) + target * alpha
    out_u8 = np.where(alpha > 0, _to_u8(out), grey)  # bit-exact outside the mask
    return out_u8, alpha > 0


def _paint_part(img: np.ndarray, defect: str, rng: np.random.Generator, subtle: bool,
                geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    assert isinstance(geom, PartGeometry)
    return add_part_defect(img, defect, rng, geom, subtle=subtle)


SYNTH_KINDS.register("parts")(
    _Kind(PartStyle.sample, _render_parts, PART_DEFECTS, lambda s: "grey machined part",
          paint=_paint_part, jpeg_fraction=0.5)
)


def _paint_texture(img: np.ndarray, defect: str, rng: np.random.Generator, subtle: bool,
                   geom: Geometry) -> tuple[np.ndarray, np.ndarray]:
    return add_defect(img, defect, rng, subtle=subtle, angle_deg=geom.angle_deg, pitch_px=geom.pitch_px)


# ----------------------------------------------------------------------------- dataset
def _write_png(path: Path, rgb_or_mask: np.ndarray, jpeg_quality: int = 92) -> None:
    """Write an RGB or grey image (PNG, or JPEG when ``path`` ends in .jpg)."""
    img = rgb_or_mask if rgb_or_mask.ndim == 2 else cv2.cvtColor(rgb_or_mask, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), img, params):
        raise DataError(f"{path}: cannot write image; check the folder is writable")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is a file; choose a folder path for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not (out / _MARKER).is_file():
            raise DataError(f"{out}: folder is not empty; choose a new output folder or empty it")
        # our own earlier output: regenerate from scratch so no stale files remain
        for sub in ("train", "test", "ground_truth"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / _MARKER).unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_synthetic_dataset(
    out: str | Path,
    kind: str = "fabric",
    seed: int = 0,
    n_train: int = 120,
    n_test_good: int = 40,
    n_test_defect: int = 40,
    size: int = 256,
) -> str:
    """Write a synthetic dataset in the MVTec AD layout and return a one-line summary.

    ``train/good``, ``test/good``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png`` (uint8 0/255). Defect types are assigned round-robin,
    about a quarter subtle. ``synth.json`` records the parameters; a folder holding one is
    regenerated in place, any other non-empty folder is refused.

    ``size`` is the image side (fabric, tiles); for ``parts`` it is the typical long side: crops
    vary around it (long side 0.6–1.5×, aspect 1–2.8) and about half are written as grey JPEG
    (``NNN.jpg``; its mask is still ``NNN_mask.png``).

    Raises:
        ConfigError: unknown ``kind`` (lists the valid kinds) or invalid counts/size.
        DataError: OUT is a file or a non-empty folder not written by this function.
    """
    spec = SYNTH_KINDS.get(kind)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ConfigError(f"n_train={n_train}, n_test_good={n_test_good}, n_test_defect={n_test_defect}: "
                          "need n_train ≥ 1 and non-negative test counts")
    if size < 32:
        raise ConfigError(f"size: {size} must be ≥ 32 pixels")
    out_p = Path(out)
    _prepare_out(out_p)
    style = spec.sample_style(np.random.default_rng([seed, 7919]))
    width = max(3, len(str(max(n_train, n_test_good, n_test_defect) - 1)))

    shapes: set[tuple[int, int]] = set()
    formats: dict[str, int] = {}

    def render(split: int, idx: int, defect: str | None = None) -> tuple[np.ndarray, Geometry, np.random.Generator]:
        rng = np.random.default_rng([seed, split, idx])
        img, geom = spec.render(rng, size, style, defect)
        shapes.add((int(img.shape[0]), int(img.shape[1])))
        return _to_u8(img), geom, rng

    def write(folder: Path, stem: str, split: int, idx: int, img: np.ndarray) -> None:
        # the format is drawn from its own stream, so it is independent of the image and the label
        jpeg = spec.jpeg_fraction > 0 and np.random.default_rng([seed, split, idx, 1]).random() < spec.jpeg_fraction
        ext = ".jpg" if jpeg else ".png"
        formats[ext] = formats.get(ext, 0) + 1
        _write_png(folder / f"{stem}{ext}", img, spec.jpeg_quality)

    paint = spec.paint or _paint_texture
    (out_p / "train" / "good").mkdir(parents=True)
    for i in range(n_train):
        write(out_p / "train" / "good", f"{i:0{width}d}", 0, i, render(0, i)[0])
    (out_p / "test" / "good").mkdir(parents=True)
    for i in range(n_test_good):
        write(out_p / "test" / "good", f"{i:0{width}d}", 1, i, render(1, i)[0])
    counts: dict[str, int] = {}
    n_subtle = 0
    for i in range(n_test_defect):
        defect = spec.defects[i % len(spec.defects)]
        img, geom, rng = render(2, i, defect)
        subtle = bool(rng.random() < _SUBTLE_FRACTION)
        n_subtle += subtle
        img, mask = paint(img, defect, rng, subtle, geom)
        k = counts.get(defect, 0)
        counts[defect] = k + 1
        for sub in ("test", "ground_truth"):
            (out_p / sub / defect).mkdir(parents=True, exist_ok=True)
        write(out_p / "test" / defect, f"{k:0{width}d}", 2, i, img)
        _write_png(out_p / "ground_truth" / defect / f"{k:0{width}d}_mask.png", mask.astype(np.uint8) * 255)
    meta: dict[str, object] = {"kind": kind, "seed": seed, "size": size, "n_train": n_train,
                               "n_test_good": n_test_good, "defects": counts, "n_subtle": n_subtle,
                               "style": asdict(style)}
    square = shapes <= {(size, size)}
    if not square:  # crops of mixed size (parts): the range of (h, w) and the formats written
        meta["image_hw"] = {"n_shapes": len(shapes), "min": [min(s[0] for s in shapes), min(s[1] for s in shapes)],
                            "max": [max(s[0] for s in shapes), max(s[1] for s in shapes)]}
    if spec.jpeg_fraction > 0:
        meta["formats"] = formats
    (out_p / _MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    per = ", ".join(f"{d} {c}" for d, c in counts.items()) or "none"
    if square:
        dims = f"{size}x{size} px"
    else:
        hs, ws = [s[0] for s in shapes], [s[1] for s in shapes]
        dims = f"{len(shapes)} crop sizes, h {min(hs)}–{max(hs)} x w {min(ws)}–{max(ws)} px around long side {size}"
    fmt = "" if spec.jpeg_fraction <= 0 else " as " + " + ".join(f"{n} {e[1:].upper()}" for e, n in sorted(formats.items()))
    return (f"wrote synthetic {kind} dataset ({spec.describe(style)}, seed {seed}, {dims}) to {out_p}: "
            f"{n_train} train/good, {n_test_good} test/good, {n_test_defect} defect ({per}; {n_subtle} subtle){fmt} "
            f"with masks in ground_truth/")
