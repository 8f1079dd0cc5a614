"""edgekit.data.images: every format case decodes to (H, W, 3) uint8 RGB, bad files raise DataError."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.data.images import IMAGE_EXTENSIONS, decode_image_bytes, is_image_file, read_image, to_rgb_u8
from edgekit.errors import DataError


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, ::-1])


@pytest.fixture()
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    img[:, :8] = (250, 10, 10)  # a red stripe on the left tells R from B
    return img


def test_png_colour_roundtrip_is_rgb(tmp_path: Path, rgb: np.ndarray) -> None:
    p = tmp_path / "c.png"
    assert cv2.imwrite(str(p), _bgr(rgb))
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_bmp_tiff_webp_lossless(tmp_path: Path, rgb: np.ndarray) -> None:
    for name, params in (("a.bmp", []), ("a.tif", []), ("a.webp", [cv2.IMWRITE_WEBP_QUALITY, 101])):
        p = tmp_path / name
        assert cv2.imwrite(str(p), _bgr(rgb), params)
        np.testing.assert_array_equal(read_image(p), rgb, err_msg=name)


def test_greyscale_jpeg_replicated(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (16, 1))
    p = tmp_path / "g.jpg"
    assert cv2.imwrite(str(p), grey, [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = read_image(p)
    assert out.shape == (16, 32, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - grey).max() <= 3


def test_grey_png_and_bilevel_png(tmp_path: Path) -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[..., 1], grey)
    bits = (grey > 100).astype(np.uint8) * 255
    assert cv2.imwrite(str(tmp_path / "b.png"), bits, [cv2.IMWRITE_PNG_BILEVEL, 1])
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[..., 2], bits)


def test_grey_alpha_png_composited_on_black(tmp_path: Path) -> None:
    # cv2 cannot write 2-channel PNGs; PIL's "LA" mode can
    pil = pytest.importorskip("PIL.Image")
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 200
    la[:, :4, 1] = 255  # left opaque
    la[:, 4:, 1] = 0  # right transparent
    pil.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert out.shape == (8, 8, 3)
    assert (out[:, :4] == 200).all() and (out[:, 4:] == 0).all()


def test_rgba_png_alpha_dropped_on_black(tmp_path: Path, rgb: np.ndarray) -> None:
    bgra = np.dstack([_bgr(rgb), np.full(rgb.shape[:2], 255, np.uint8)])
    bgra[:, 20:, 3] = 0
    bgra[:, 10:20, 3] = 128
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[:, :10], rgb[:, :10])
    assert (out[:, 20:] == 0).all()
    half = np.rint(rgb[:, 10:20].astype(np.float32) * (128 / 255)).astype(np.uint8)
    assert np.abs(out[:, 10:20].astype(int) - half).max() <= 1


def test_16bit_png_full_range_scaled_by_dtype(tmp_path: Path) -> None:
    img16 = np.zeros((4, 4, 3), np.uint16)
    img16[0, 0] = (65535, 32768, 0)  # BGR order on disk
    img16[1, 1] = (257, 514, 771)
    cv2.imwrite(str(tmp_path / "d.png"), img16)
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8
    assert tuple(out[0, 0]) == (0, 128, 255)  # RGB
    assert tuple(out[1, 1]) == (3, 2, 1)


def test_12bit_data_in_16bit_png_not_black_and_no_stretch(tmp_path: Path) -> None:
    img = np.zeros((4, 8), np.uint16)
    img[0, :4] = [4095, 2048, 1024, 0]
    cv2.imwrite(str(tmp_path / "d12.png"), img)
    out = read_image(tmp_path / "d12.png")[..., 0]
    # scaled by 4095 (12-bit), not 65535 (nearly black) and not a min/max stretch
    assert list(out[0, :4]) == [255, 128, 64, 0]
    # a dimmer image of the same 12-bit sensor keeps its contrast when the depth is pinned
    dim = img // 2
    cv2.imwrite(str(tmp_path / "dim.png"), dim)
    expected = np.rint(dim[0, :4] * (255 / 4095)).astype(int).tolist()  # [127, 64, 32, 0]
    assert read_image(tmp_path / "dim.png", bit_depth=12)[0, :4, 0].tolist() == expected
    # inferred per image: max 2047 still snaps to the 12-bit sensor depth
    assert read_image(tmp_path / "dim.png")[0, :4, 0].tolist() == expected
    # a very dark image (max < 1024) is read as 10-bit data (documented); pinning avoids that
    dark = img // 8
    cv2.imwrite(str(tmp_path / "dark.png"), dark)
    assert read_image(tmp_path / "dark.png")[0, 0, 0] == round(511 * 255 / 1023)
    assert read_image(tmp_path / "dark.png", bit_depth=12)[0, 0, 0] == round(511 * 255 / 4095)


def test_16bit_tiff_and_float_tiff(tmp_path: Path) -> None:
    img16 = np.full((6, 6), 65535, np.uint16)
    img16[0, 0] = 0
    cv2.imwrite(str(tmp_path / "t16.tif"), img16)
    out = read_image(tmp_path / "t16.tif")
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 0
    f = np.zeros((6, 6, 3), np.float32)
    f[..., 2] = 1.0  # red (BGR on disk)
    f[0, 0] = (0.5, 0.5, 0.5)
    f[1, 1] = np.nan
    assert cv2.imwrite(str(tmp_path / "f.tif"), f)
    assert cv2.imread(str(tmp_path / "f.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    out = read_image(tmp_path / "f.tif")
    assert tuple(out[2, 2]) == (255, 0, 0)
    assert tuple(out[0, 0]) == (128, 128, 128)
    assert tuple(out[1, 1]) == (0, 0, 0)


def test_palette_png(tmp_path: Path, rgb: np.ndarray) -> None:
    pil = pytest.importorskip("PIL.Image")
    small = np.zeros((6, 6, 3), np.uint8)
    small[:3] = (255, 0, 0)
    small[3:] = (0, 0, 255)
    pil.fromarray(small).convert("P").save(tmp_path / "p.png")
    assert pil.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, small)


def test_jpeg_exif_orientation_honoured(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # red left half, landscape as stored
    im = pil.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape == (40, 20, 3)  # displayed portrait
    assert out[2, 10, 0] > 200 and out[-3, 10, 0] < 50  # red half now on top
    # same bytes from memory decode the same way
    np.testing.assert_array_equal(decode_image_bytes((tmp_path / "o.jpg").read_bytes()), out)


def test_non_ascii_path(tmp_path: Path, rgb: np.ndarray) -> None:
    d = tmp_path / "Prüfteil_画像"
    d.mkdir()
    ok, enc = cv2.imencode(".png", _bgr(rgb))
    assert ok
    (d / "bild.png").write_bytes(enc.tobytes())
    np.testing.assert_array_equal(read_image(d / "bild.png"), rgb)


@pytest.mark.parametrize("case", ["zero", "truncated_jpeg", "truncated_png", "text_as_png"])
def test_bad_files_raise_one_line_data_error(tmp_path: Path, rgb: np.ndarray, case: str) -> None:
    if case == "zero":
        p = tmp_path / "zero.png"
        p.write_bytes(b"")
    elif case == "truncated_jpeg":
        ok, enc = cv2.imencode(".jpg", _bgr(rgb))
        p = tmp_path / "cut.jpg"
        p.write_bytes(enc.tobytes()[: len(enc) * 2 // 3])
    elif case == "truncated_png":
        ok, enc = cv2.imencode(".png", _bgr(rgb))
        p = tmp_path / "cut.png"
        p.write_bytes(enc.tobytes()[: len(enc) // 2])
    else:
        p = tmp_path / "notes.png"
        p.write_text("this is not an image\n")
    with pytest.raises(DataError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: cannot decode image (") and msg.endswith("; replace or remove the file")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="cannot read"):
        read_image(tmp_path)


def test_jpeg_with_exif_thumbnail_is_not_flagged_truncated(tmp_path: Path) -> None:
    # an EXIF thumbnail carries its own end marker before the main scan; a complete file must pass
    pil = pytest.importorskip("PIL.Image")
    big = pil.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    big.save(tmp_path / "full.jpg", quality=90)
    assert read_image(tmp_path / "full.jpg").shape == (64, 64, 3)


def test_to_rgb_u8_camera_frames() -> None:
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    assert tuple(to_rgb_u8(bgr)[0, 0]) == (0, 0, 255)
    assert tuple(to_rgb_u8(bgr, bgr=False)[0, 0]) == (255, 0, 0)
    assert to_rgb_u8(np.ones((3, 5, 1), np.uint8)).shape == (3, 5, 3)
    assert to_rgb_u8(np.ones((3, 5), bool))[0, 0, 0] == 255
    with pytest.raises(DataError, match="shape"):
        to_rgb_u8(np.zeros((3, 5, 7), np.uint8))
    with pytest.raises(DataError, match="shape"):
        to_rgb_u8(np.zeros((0, 5, 3), np.uint8))


def test_decode_bytes_error_names_source() -> None:
    with pytest.raises(DataError, match=r"^cam0: cannot decode image"):
        decode_image_bytes(b"\x00\x01garbage", name="cam0")


def test_extensions_and_hidden_files() -> None:
    assert ".png" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS
    assert is_image_file("a/B.PNG") and is_image_file("x.JpEg")
    assert not is_image_file("a/._b.png") and not is_image_file("notes.txt")


def test_jpeg_with_stray_bytes_between_segments_still_reads(rgb: np.ndarray) -> None:
    # some encoders pad between segments; libjpeg skips such bytes, so must the truncation check
    ok, enc = cv2.imencode(".jpg", _bgr(rgb))
    b = enc.tobytes()
    pos = 4 + int.from_bytes(b[4:6], "big")  # end of the APP0 segment
    assert decode_image_bytes(b[:pos] + b"\x00\x00\x00" + b[pos:]).shape == rgb.shape
