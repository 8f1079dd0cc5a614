"""Decode any image OpenCV reads into one canonical array: (H, W, 3) uint8 RGB (numpy + OpenCV,
no torch; used by training, evaluation and the device runtime alike).

Normalisation rules (the same for files, in-memory frames and camera arrays):

- greyscale → replicated to 3 channels; 1-bit and palette PNGs are expanded by the decoder.
- an alpha channel (grey+alpha, RGBA/BGRA) is dropped by compositing on **black**
  (``colour * alpha``): fully transparent pixels become 0, which is what a backlit part on a dark
  stage looks like; a product image with transparency is rare and this keeps the rule simple.
- integer data deeper than 8 bit (16-bit PNG/TIFF, 32-bit TIFF) is scaled by a **power of two**:
  by the dtype's range when the image uses it, otherwise by the smallest power of two ≥ max+1
  among 2^8, 2^10, 2^12, 2^14, 2^16 (typical sensor bit depths), so 12-bit camera data stored in
  16-bit containers is not nearly black. Never a per-image min/max stretch: that would change the
  contrast of a defect between images. A very dark 12-bit image (max < 1024) would be read as
  10-bit; pass ``bit_depth=12`` to pin the scale for a whole dataset.
- float data (float TIFF): values in [0, 1] are scaled by 255; larger ranges use the same
  power-of-two rule as integers; NaN/inf → 0; negatives clip to 0.
- JPEG EXIF orientation is applied (the decoder's ``IMREAD_COLOR`` path honours it), so an
  image looks the same as in a photo viewer, whichever way the camera stored it. Other formats
  are returned as stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edgekit.errors import DataError

#: File name extensions (lower case) that edgekit treats as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".sr", ".ras",
)

_SENSOR_BIT_DEPTHS = (8, 10, 12, 14, 16, 20, 24, 32)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a visible file whose extension is in ``IMAGE_EXTENSIONS`` (case-insensitive).

    Hidden files (``.DS_Store``, macOS ``._name.png`` resource forks) are not images."""
    p = Path(path)
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _jpeg_problem(buf: np.ndarray) -> str | None:
    """Why a JPEG byte stream is truncated, or None.

    libjpeg fills a truncated scan with grey and only warns, so a cut-off file would decode
    "successfully". Walk the marker segments to the first start-of-scan (skipping APP segments,
    which may hold an EXIF thumbnail with its own end marker) and require an end-of-image marker
    after it. Inside entropy-coded data 0xFF is byte-stuffed, so FFD9 there is the real end."""
    data = buf.tobytes()
    n = len(data)
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them with a warning
            nxt = data.find(b"\xff", i)
            if nxt < 0:
                return "corrupt JPEG marker structure"
            i = nxt
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return "JPEG ends before any image data"
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            if data.find(b"\xff\xd9", i + 2 + seg_len) < 0:
                return "truncated JPEG: no end-of-image marker"
            return None
        i += 2 + seg_len
    return "truncated JPEG: no image data"


def _power_of_two_scale(max_value: float, dtype_bits: int, bit_depth: int | None) -> float:
    """Full-scale value (2^k − 1) to divide by for data of ``dtype_bits``-bit containers."""
    if bit_depth is not None:
        return float(2**bit_depth - 1)
    for bits in _SENSOR_BIT_DEPTHS:
        if bits >= dtype_bits or max_value < 2**bits:
            return float(2**bits - 1)
    return float(2**dtype_bits - 1)


def _to_u8_channels(arr: np.ndarray, bit_depth: int | None) -> np.ndarray:
    """Scale colour channels of any dtype to uint8 (rules in the module docstring)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        a = np.clip(a, 0.0, None)
        peak = float(a.max()) if a.size else 0.0
        if bit_depth is not None:
            full = float(2**bit_depth - 1)
        elif peak <= 1.0:
            full = 1.0
        else:
            full = _power_of_two_scale(peak, 32, None)
        return np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        a = arr.astype(np.int64)
        a = np.clip(a, 0, None)  # signed containers: negative values carry no light
        peak = int(a.max()) if a.size else 0
        full = _power_of_two_scale(peak, arr.dtype.itemsize * 8, bit_depth)
        return np.clip(np.rint(a * (255.0 / full)), 0, 255).astype(np.uint8)
    raise DataError(f"image array has unsupported dtype {arr.dtype}; convert it to uint8")


def _alpha_unit(alpha: np.ndarray) -> np.ndarray:
    """Alpha channel as float32 in [0, 1]; alpha always uses its dtype's full range."""
    if alpha.dtype == np.uint8:
        return alpha.astype(np.float32) / 255.0
    if np.issubdtype(alpha.dtype, np.integer):
        return alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    return np.clip(np.nan_to_num(alpha.astype(np.float32)), 0.0, 1.0)


def to_rgb_u8(array: np.ndarray, *, bgr: bool = True, bit_depth: int | None = None) -> np.ndarray:
    """Normalise a decoded image or camera frame to (H, W, 3) uint8 RGB.

    Args:
        array: (H, W), (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) or (H, W, 4) with alpha; any
            integer, float or bool dtype (scaling rules in the module docstring).
        bgr: True when colour channels are in OpenCV's B, G, R order (anything from
            ``cv2.imdecode``/``cv2.VideoCapture``); False when already R, G, B.
        bit_depth: pin the scale of >8-bit data (e.g. 12) instead of inferring it per image.
    Returns:
        (H, W, 3) uint8 RGB, C-contiguous.
    Raises:
        DataError: the array is not an image (wrong rank or channel count, empty).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise DataError(f"image array has shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    alpha = None
    if a.ndim == 3 and a.shape[2] in (2, 4):
        alpha = _alpha_unit(a[:, :, -1])
        a = a[:, :, :-1]
        if a.shape[2] == 1:
            a = a[:, :, 0]
    u8 = _to_u8_channels(a, bit_depth)
    if u8.ndim == 2:
        rgb = np.repeat(u8[:, :, None], 3, axis=2)
    else:
        rgb = u8[:, :, ::-1] if bgr else u8
    if alpha is not None:
        rgb = np.rint(rgb.astype(np.float32) * alpha[:, :, None]).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def decode_image_bytes(
    buf: bytes | bytearray | memoryview | np.ndarray, name: str = "<bytes>", bit_depth: int | None = None
) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, TIFF, ... bytes) to (H, W, 3) uint8 RGB.

    Args:
        buf: the encoded file content.
        name: what to call the source in error messages (a path, a camera id).
        bit_depth: see ``to_rgb_u8``.
    Raises:
        DataError: ``"<name>: cannot decode image (...); replace or remove the file"``.
    """
    data = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1)
    data = data.astype(np.uint8, copy=False)

    def fail(reason: str) -> DataError:
        return DataError(f"{name}: cannot decode image ({reason}); replace or remove the file")

    if data.size == 0:
        raise fail("empty file")
    is_jpeg = data.size >= 3 and data[0] == 0xFF and data[1] == 0xD8 and data[2] == 0xFF
    if is_jpeg:
        problem = _jpeg_problem(data)
        if problem:
            raise fail(problem)
    # JPEG: IMREAD_COLOR applies the EXIF orientation (IMREAD_UNCHANGED ignores it); JPEG has no
    # alpha or >8-bit data worth keeping, so nothing is lost. Everything else: decode as stored.
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "OpenCV error"
        raise fail(msg) from None
    if img is None or img.size == 0:
        raise fail("not an image format OpenCV reads, or a corrupt file")
    try:
        return to_rgb_u8(img, bgr=True, bit_depth=bit_depth)
    except DataError as exc:
        raise fail(str(exc)) from None


def read_image(path: str | os.PathLike[str], bit_depth: int | None = None) -> np.ndarray:
    """Read an image file of any format OpenCV decodes as (H, W, 3) uint8 RGB.

    Reads bytes with numpy (works with non-ASCII paths on every OS) and decodes in memory.

    Args:
        path: the image file.
        bit_depth: see ``to_rgb_u8``.
    Raises:
        DataError: missing, unreadable, empty, truncated or non-image file; the message names the
            file and says to replace or remove it.
    """
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{p}: image file not found; check the path") from None
    except (IsADirectoryError, PermissionError, OSError) as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"{p}: cannot read image file ({reason}); check the path and permissions") from None
    return decode_image_bytes(data, name=str(p), bit_depth=bit_depth)
