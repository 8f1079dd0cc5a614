"""Bad-input corpus through the folder source: every file becomes exactly one logged decision;
unusable ones are fail-safe rejects with their reason; the daemon never stops."""

from __future__ import annotations

import cv2
import numpy as np

from edgekit.runtime.daemon import replay
from edgekit.runtime.events import read_events


def _corpus(folder) -> dict[str, str | None]:
    """file name → expected failsafe reason (None = a normal decision)."""
    folder.mkdir()
    good = np.full((40, 56, 3), 200, np.uint8)
    cv2.imwrite(str(folder / "a_good.png"), good)
    ok, jpg = cv2.imencode(".jpg", good)
    (folder / "b_truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (folder / "c_zero_bytes.png").write_bytes(b"")
    (folder / "d_not_an_image.png").write_bytes(b"this is a text file, not a PNG\n" * 10)
    cv2.imwrite(str(folder / "e_gray.png"), np.full((40, 56), 200, np.uint8))  # 1 channel → RGB
    cv2.imwrite(str(folder / "f_rgba.png"), np.dstack([good, np.full((40, 56), 255, np.uint8)]))
    cv2.imwrite(str(folder / "g_16bit.png"), np.full((40, 56, 3), 200 * 257, np.uint16))
    cv2.imwrite(str(folder / "h_huge.png"), np.zeros((2100, 2100, 3), np.uint8))  # > max_pixels below
    cv2.imwrite(str(folder / "i_wrong_size.png"), np.full((64, 64, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "j_tiny.png"), np.full((3, 3, 3), 200, np.uint8))
    # a PNG whose header claims 100000 x 100000 pixels (decoders must refuse, not allocate 30 GB)
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (folder / "k_bomb.png").write_bytes(png)
    cv2.imwrite(str(folder / "l_good_again.png"), good)
    return {"a_good.png": None, "b_truncated.jpg": "decode_error", "c_zero_bytes.png": "decode_error",
            "d_not_an_image.png": "decode_error", "e_gray.png": None, "f_rgba.png": None, "g_16bit.png": None,
            "h_huge.png": "bad_frame", "i_wrong_size.png": "bad_frame", "j_tiny.png": "bad_frame",
            "k_bomb.png": "decode_error", "l_good_again.png": None}


def test_bad_input_corpus(intensity_bundle, tmp_path) -> None:
    want = _corpus(tmp_path / "corpus")
    s = replay(intensity_bundle, tmp_path / "corpus", out_dir=tmp_path / "out", rate_hz=50,
               overrides={"preprocess.max_pixels": 4_000_000, "preprocess.expect_width": 56,
                          "preprocess.expect_height": 40, "decision.deadline_ms": 1000, "scheduler.delay_ms": 1050})
    rows = read_events(s["log_path"])
    got = {r["meta_json"] and __import__("json").loads(r["meta_json"])["file"]: r for r in rows}
    assert sorted(got) == sorted(want)
    for name, reason in want.items():
        r = got[name]
        assert r["failsafe"] == reason, (name, r["failsafe"])
        if reason is None:
            assert r["decision"] == "reject" and abs(r["score"] - 200 / 255) < 0.01  # all 200-grey → reject
        else:
            assert r["decision"] == "reject" and r["score"] is None
    assert s["frames"] == len(want) and s["events_committed"] == len(want)
    assert s["rejects_fired"] == len(want)
