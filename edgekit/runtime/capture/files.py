"""Replay sources: a folder of images and a video file (OpenCV), paced at a configurable rate.

Both stand for a camera on the line: one frame per part, decoded to (H, W, 3) uint8 RGB. A file
that cannot be decoded does not stop the stream: it becomes a frame with ``error`` set, which
the daemon turns into a fail-safe decision (a real camera can also deliver garbage)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import ConfigError, DataError, DeviceError
from edgekit.runtime.capture.base import CAMERAS, Camera, RateLimiter
from edgekit.runtime.types import Frame

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class FolderCameraConfig(StrictModel):
    type: Literal["folder"] = "folder"
    name: str = "cam0"
    path: str
    rate_hz: float | None = Field(None, gt=0, le=10000)  # None: as fast as the pipeline takes
    loop: bool = False
    recursive: bool = True


class VideoCameraConfig(StrictModel):
    type: Literal["video"] = "video"
    name: str = "cam0"
    path: str
    rate_hz: float | None = Field(None, gt=0, le=10000)  # None: the file's own fps
    loop: bool = False


@CAMERAS.register("folder")
class FolderCamera(Camera):
    """Replays every image file under a folder in sorted order (one frame per part)."""

    config_model = FolderCameraConfig

    def __init__(self, cfg: FolderCameraConfig) -> None:
        super().__init__(cfg)
        self._files: list[Path] = []
        self._pos = 0
        self._rate = RateLimiter(cfg.rate_hz)
        self.nominal_fps = cfg.rate_hz

    def open(self) -> None:
        root = Path(self.cfg.path)
        if not root.is_dir():
            raise ConfigError(f"{root}: image folder not found; fix source.path in the run config")
        it = root.rglob("*") if self.cfg.recursive else root.glob("*")
        self._files = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not self._files:
            raise ConfigError(f"{root}: no image files ({', '.join(IMAGE_EXTS)}); point source.path at images")
        self._pos = 0

    def __len__(self) -> int:
        return len(self._files)

    def read(self) -> Frame | None:
        from edgekit.data.images import decode_image_bytes

        if self._pos >= len(self._files):
            if not self.cfg.loop:
                return None
            self._pos = 0
        path = self._files[self._pos]
        self._pos += 1
        self._rate.wait()
        t_ns = time.monotonic_ns()
        rel = str(path.relative_to(self.cfg.path))
        image, error = None, None
        try:
            data = path.read_bytes()
            image = decode_image_bytes(data, name=rel)
        except (OSError, DataError, ValueError) as exc:
            error = f"decode_error: {exc}"
        return Frame(self.next_part_id(), self.name, t_ns, image, error=error, meta={"file": rel})


@CAMERAS.register("video")
class VideoCamera(Camera):
    """Replays a video file with OpenCV at its own fps (or ``rate_hz``)."""

    config_model = VideoCameraConfig

    def __init__(self, cfg: VideoCameraConfig) -> None:
        super().__init__(cfg)
        self._cap = None
        self._rate = RateLimiter(cfg.rate_hz)
        self._index = 0

    def open(self) -> None:
        import cv2

        p = Path(self.cfg.path)
        if not p.is_file():
            raise ConfigError(f"{p}: video file not found; fix source.path in the run config")
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise DeviceError(f"{p}: OpenCV cannot open this video; re-encode it (e.g. H.264 .mp4 or MJPG .avi)")
        if self.cfg.rate_hz is None:
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            self._rate = RateLimiter(fps if 0 < fps < 1000 else None)
            self.nominal_fps = fps if 0 < fps < 1000 else None
        else:
            self.nominal_fps = self.cfg.rate_hz
        self._cap = cap
        self._index = 0

    def read(self) -> Frame | None:
        from edgekit.data.images import to_rgb_u8

        if self._cap is None:
            raise DeviceError(f"{self.cfg.path}: video not open")
        ok, bgr = self._cap.read()
        if not ok:
            if not self.cfg.loop:
                return None
            import cv2

            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, bgr = self._cap.read()
            if not ok:
                return None
        self._rate.wait()
        t_ns = time.monotonic_ns()
        index = self._index
        self._index += 1
        image, error = None, None
        try:
            image = to_rgb_u8(bgr, bgr=True)
        except (DataError, ValueError) as exc:
            error = f"decode_error: frame {index}: {exc}"
        return Frame(self.next_part_id(), self.name, t_ns, image, error=error, meta={"frame_index": index})

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
