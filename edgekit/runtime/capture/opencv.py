"""Live cameras through OpenCV: V4L2/USB, CSI on Jetson (GStreamer ``nvarguscamerasrc``) and
RTSP / any GStreamer pipeline, free-running or in hardware-trigger mode.

Free-running: ``read()`` returns the next frame the camera delivers (paced by the camera).
Hardware trigger: the camera is wired to the part sensor; the daemon's line process watches the
same trigger line, latches the encoder count at the kernel timestamp of each edge and forwards
it; ``read()`` waits for the next trigger and pairs it with the first frame captured after it
(within ``frame_timeout_ms``), else returns an empty frame marked ``missing_frame`` so the part
is failed safe. A reader thread inside the camera keeps draining the driver's buffer so frames
are never stale.

CSI and GStreamer URLs need an OpenCV built with GStreamer (JetPack's). pip wheels
(opencv-python[-headless]) are built without it: this is detected from
``cv2.getBuildInformation()`` and explained instead of failing with an empty frame."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edgekit.config.base import StrictModel
from edgekit.errors import ConfigError, DataError, DeviceError
from edgekit.runtime.capture.base import CAMERAS, IDLE, Camera, RateLimiter
from edgekit.runtime.types import Frame


class TriggerConfig(StrictModel):
    """Hardware trigger input, watched by the line process.

    ``gpiod``: a GPIO line with edge events (the part sensor also wired to the camera trigger).
    ``sim``: a trigger every ``period_ms`` (bench tests with a video file standing in for the camera).
    """

    type: Literal["gpiod", "sim"] = "gpiod"
    chip: str = "/dev/gpiochip0"  # path, gpiochipN or label (edgekit.runtime.gpiochip)
    line: int = Field(0, ge=0)
    edge: Literal["rising", "falling"] = "rising"
    event_buffer_size: int | None = Field(None, ge=1, le=65536)  # kernel edge FIFO (None: 16)
    debounce_us: int = Field(0, ge=0, le=100000)
    active_low: bool = False
    period_ms: float = Field(100.0, gt=0)  # sim only
    frame_timeout_ms: float = Field(100.0, gt=0)  # trigger → frame; later = missing_frame


class _OpenCvConfig(StrictModel):
    name: str = "cam0"
    width: int | None = Field(None, ge=16)
    height: int | None = Field(None, ge=16)
    fps: float | None = Field(None, gt=0, le=1000)
    trigger: TriggerConfig | None = None
    read_timeout_ms: float = Field(2000.0, gt=0)  # no frame for this long (free-run) = disconnected


class UsbCameraConfig(_OpenCvConfig):
    type: Literal["usb"] = "usb"
    device: int | str = 0  # index, /dev/videoN, or (bench tests) a video file standing in for a camera
    fourcc: str | None = Field("MJPG", min_length=4, max_length=4)
    exposure: float | None = None  # driver units (V4L2: 100 µs); sets manual exposure
    backend: Literal["v4l2", "any"] = "v4l2"


class CsiCameraConfig(_OpenCvConfig):
    type: Literal["csi"] = "csi"
    sensor_id: int = Field(0, ge=0, le=7)
    width: int | None = Field(1920, ge=16)
    height: int | None = Field(1080, ge=16)
    fps: float | None = Field(30.0, gt=0, le=1000)
    flip_method: int = Field(0, ge=0, le=7)
    exposure_ns: tuple[int, int] | None = None  # nvarguscamerasrc exposuretimerange


class GstreamerCameraConfig(_OpenCvConfig):
    type: Literal["gstreamer"] = "gstreamer"
    url: str | None = None  # rtsp://... (or http/GigE URL handled by a GStreamer source)
    pipeline: str | None = None  # full pipeline ending in "appsink" (GigE Vision via aravissrc, ...)
    latency_ms: int = Field(100, ge=0)
    protocol: Literal["tcp", "udp"] = "tcp"  # RTSP transport, on the GStreamer and the FFmpeg path
    backend: Literal["auto", "gstreamer", "ffmpeg"] = "auto"
    # RTSP stream codec: auto = decodebin (picks nvv4l2decoder on a Jetson); h264/h265 = an explicit
    # depay ! parse ! decoder chain (the Jetson hardware decoder there, avdec/libav elsewhere)
    codec: Literal["auto", "h264", "h265"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> GstreamerCameraConfig:
        if (self.url is None) == (self.pipeline is None):
            raise ValueError("give exactly one of url or pipeline")
        return self


def gstreamer_available() -> bool:
    """True if this OpenCV was built with GStreamer (``cv2.getBuildInformation()``)."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def _need_gstreamer(what: str) -> None:
    if not gstreamer_available():
        raise DeviceError(
            f"{what} needs OpenCV built with GStreamer, but this cv2 reports 'GStreamer: NO' in "
            "cv2.getBuildInformation() (pip's opencv-python wheels are built without it). On a Jetson use "
            "JetPack's OpenCV: pip uninstall opencv-python opencv-python-headless, and create the venv with "
            "--system-site-packages"
        )


def on_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def _size_caps(width: int | None, height: int | None, fps: float | None) -> str:
    caps = [f"width={width}" if width else "", f"height={height}" if height else "",
            f"framerate={int(round(fps))}/1" if fps else ""]
    return "".join(f", {c}" for c in caps if c)


def csi_pipeline(cfg: CsiCameraConfig) -> str:
    """GStreamer pipeline for a Jetson CSI sensor (Argus) converted to BGR for OpenCV."""
    exp = f' exposuretimerange="{cfg.exposure_ns[0]} {cfg.exposure_ns[1]}"' if cfg.exposure_ns else ""
    fps = int(round(cfg.fps or 30))
    return (
        f"nvarguscamerasrc sensor-id={cfg.sensor_id}{exp} ! "
        f"video/x-raw(memory:NVMM), width={cfg.width}, height={cfg.height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={cfg.flip_method} ! video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=2 sync=false"
    )


def rtsp_pipeline(cfg: GstreamerCameraConfig, jetson: bool | None = None) -> str:
    """GStreamer pipeline for an RTSP URL. Size and rate go into the caps (``cap.set`` on a
    GStreamer capture restarts the pipeline). On a Jetson the decoder (nvv4l2decoder, what decodebin
    picks there) outputs NVMM buffers that ``videoconvert`` cannot read: ``nvvidconv`` copies them
    to system memory (and scales) first. Elsewhere software decode, ``videoscale``/``videorate``."""
    jetson = on_jetson() if jetson is None else jetson
    proto = "tcp" if cfg.protocol == "tcp" else "udp"
    src = f'rtspsrc location="{cfg.url}" latency={cfg.latency_ms} protocols={proto} ! '
    if cfg.codec == "auto":
        dec = "decodebin ! "
    elif jetson:
        dec = f"rtp{cfg.codec}depay ! {cfg.codec}parse ! nvv4l2decoder ! "
    else:
        dec = f"rtp{cfg.codec}depay ! {cfg.codec}parse ! avdec_{cfg.codec} ! "
    size = _size_caps(cfg.width, cfg.height, None)
    rate = f"videorate ! video/x-raw, framerate={int(round(cfg.fps))}/1 ! " if cfg.fps else ""
    if jetson:
        conv = f"nvvidconv ! video/x-raw, format=BGRx{size} ! {rate}videoconvert ! "
    else:
        conv = f"videoconvert ! videoscale ! video/x-raw{size} ! {rate}videoconvert ! " if size else f"videoconvert ! {rate}"
    return src + dec + conv + "video/x-raw, format=BGR ! appsink drop=true max-buffers=2 sync=false"


class _OpenCvCamera(Camera):
    """Shared capture logic; subclasses build the ``cv2.VideoCapture``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.triggered = cfg.trigger is not None
        self.nominal_fps = None if self.triggered else cfg.fps
        self._cap: Any = None
        self._frames: queue.Queue[tuple[int, np.ndarray]] = queue.Queue(maxsize=4)
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._reader_error: str | None = None
        self.trigger_queue: queue.Queue[tuple[int, int, int | None]] = queue.Queue()
        self._last_frame_ns = 0
        self._pace: RateLimiter | None = None
        self._gstreamer = False  # set by _open_capture when the capture is a GStreamer pipeline

    def _open_capture(self) -> Any:
        raise NotImplementedError

    def open(self) -> None:
        import cv2

        cap = self._open_capture()
        if cap is None or not cap.isOpened():
            raise DeviceError(f"camera {self.name}: cannot open {self._describe()}; check the cable/URL and that "
                              "no other process uses it (fuser /dev/video*)")
        c = self.cfg
        # a GStreamer capture takes size/rate from its pipeline caps: each cap.set there stops and
        # replays the pipeline (and CAP_PROP_BUFFERSIZE is ignored; appsink max-buffers bounds it)
        if not self._gstreamer:
            if c.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, c.width)
            if c.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, c.height)
            if c.fps:
                cap.set(cv2.CAP_PROP_FPS, c.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self._cap = cap
        self._stop.clear()
        self._reader_error = None
        self._last_frame_ns = time.monotonic_ns()
        self._reader = threading.Thread(target=self._read_loop, name=f"camera-{self.name}", daemon=True)
        self._reader.start()

    def _describe(self) -> str:
        return self.cfg.type

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            if self._pace is not None:
                self._pace.wait()
            ok, bgr = self._cap.read()
            t_ns = time.monotonic_ns()
            if not ok or bgr is None:
                self._reader_error = "camera stopped delivering frames"
                return
            self._last_frame_ns = t_ns
            try:
                self._frames.put_nowait((t_ns, bgr))
            except queue.Full:  # keep the newest frames: drop the oldest
                try:
                    self._frames.get_nowait()
                except queue.Empty:
                    pass
                self._frames.put_nowait((t_ns, bgr))

    def _next_frame(self, timeout_s: float) -> tuple[int, np.ndarray] | None:
        try:
            return self._frames.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _to_frame(self, pid: int, t_ns: int, bgr: np.ndarray | None, count: int | None, error: str | None) -> Frame:
        from edgekit.data.images import to_rgb_u8

        img = None
        if bgr is not None:
            try:
                img = to_rgb_u8(bgr, bgr=True)
            except DataError as exc:
                error = f"decode_error: {exc}"
        return Frame(pid, self.name, t_ns, img, count, error)

    def read(self) -> Frame | None | object:
        if self._cap is None:
            raise DeviceError(f"camera {self.name} is not open")
        if not self.triggered:
            got = self._next_frame(self.cfg.read_timeout_ms / 1e3)
            if got is None:
                raise DeviceError(f"camera {self.name}: {self._reader_error or 'no frame'} within "
                                  f"{self.cfg.read_timeout_ms:.0f} ms")
            return self._to_frame(self.next_part_id(), got[0], got[1], None, None)
        try:
            seq, t_trig, count = self.trigger_queue.get(timeout=0.2)
        except queue.Empty:
            if self._reader_error is not None:
                raise DeviceError(f"camera {self.name}: {self._reader_error}") from None
            return IDLE
        # the frame exposed by this trigger is the first one captured after it
        deadline = t_trig + int(self.cfg.trigger.frame_timeout_ms * 1e6)
        while True:
            left = (deadline - time.monotonic_ns()) / 1e9
            got = self._next_frame(max(0.0, left)) if left > 0 else None
            if got is None:
                return self._to_frame(seq, t_trig, None, count, "missing_frame: no frame within "
                                      f"{self.cfg.trigger.frame_timeout_ms:.0f} ms of the trigger")
            if got[0] >= t_trig:
                return self._to_frame(seq, t_trig, got[1], count, None)
            # an older frame (free-run leftovers or the previous part): skip it

    def missed_frames(self, down_since_ns: int, now_ns: int) -> list[Frame]:
        """Free-run: the frames the camera would have delivered while down (nominal fps), as empty
        frames so each is logged and failed safe. Triggered: missed parts come as triggers."""
        if self.triggered or not self.nominal_fps:
            return []
        n = int((now_ns - down_since_ns) * self.nominal_fps / 1e9)
        period = 1e9 / self.nominal_fps
        return [Frame(self.next_part_id(), self.name, int(down_since_ns + i * period), None, None,
                      "camera_down: frame missed while the camera was disconnected") for i in range(n)]

    def close(self) -> None:
        self._stop.set()
        if self._cap is not None:
            self._cap.release()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader = None
        self._cap = None


@CAMERAS.register("usb")
class UsbCamera(_OpenCvCamera):
    """V4L2 / USB camera (UVC) with OpenCV: resolution, fps, fourcc and exposure where supported."""

    config_model = UsbCameraConfig

    def _describe(self) -> str:
        return f"device {self.cfg.device!r}"

    def _open_capture(self) -> Any:
        import cv2

        dev = self.cfg.device
        if isinstance(dev, str) and not dev.isdigit() and not Path(dev).exists():
            raise ConfigError(f"source.device: {dev} does not exist; list cameras with `v4l2-ctl --list-devices`")
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        api = cv2.CAP_V4L2 if self.cfg.backend == "v4l2" else cv2.CAP_ANY
        cap = cv2.VideoCapture(dev, api)
        if isinstance(dev, str) and Path(dev).is_file():
            # a video file standing in for a camera (bench tests): deliver it at the camera's fps
            self._pace = RateLimiter(self.cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0)
        if cap.isOpened():
            if self.cfg.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.cfg.fourcc))
            if self.cfg.exposure is not None:
                cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)  # V4L2: 1 = manual
                cap.set(cv2.CAP_PROP_EXPOSURE, self.cfg.exposure)
        return cap


@CAMERAS.register("csi")
class CsiCamera(_OpenCvCamera):
    """Jetson CSI sensor through GStreamer ``nvarguscamerasrc`` (needs JetPack's OpenCV)."""

    config_model = CsiCameraConfig

    def _describe(self) -> str:
        return f"CSI sensor {self.cfg.sensor_id} ({csi_pipeline(self.cfg)})"

    def _open_capture(self) -> Any:
        import cv2

        _need_gstreamer("source.type: csi")
        self._gstreamer = True
        return cv2.VideoCapture(csi_pipeline(self.cfg), cv2.CAP_GSTREAMER)


@CAMERAS.register("gstreamer")
class GstreamerCamera(_OpenCvCamera):
    """RTSP / GigE / any GStreamer pipeline; RTSP falls back to FFmpeg only when asked
    (``backend: ffmpeg``) or when GStreamer is absent with ``backend: auto`` (logged)."""

    config_model = GstreamerCameraConfig

    def _describe(self) -> str:
        return self.cfg.url or self.cfg.pipeline

    def _open_capture(self) -> Any:
        import cv2

        c = self.cfg
        if c.pipeline is not None:
            _need_gstreamer("source.pipeline")
            self._gstreamer = True
            return cv2.VideoCapture(c.pipeline, cv2.CAP_GSTREAMER)
        use_gst = c.backend == "gstreamer" or (c.backend == "auto" and gstreamer_available())
        if c.backend == "gstreamer":
            _need_gstreamer("source.backend: gstreamer")
        if use_gst:
            self._gstreamer = True
            return cv2.VideoCapture(rtsp_pipeline(c), cv2.CAP_GSTREAMER)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(c.read_timeout_ms),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(c.read_timeout_ms)]
        # OpenCV's FFmpeg backend reads its options from this variable at each open
        # ("key;value|key;value"): the RTSP transport applies here too
        opts = [o for o in os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "").split("|")
                if o and not o.startswith("rtsp_transport;")]
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join([f"rtsp_transport;{c.protocol}", *opts])
        return cv2.VideoCapture(c.url, cv2.CAP_FFMPEG, params)
