"""Camera plug-ins that run without camera hardware: GStreamer detection and its one-line
explanation, pipelines, and the hardware-trigger path with a video file standing in for the
camera and a simulated trigger line (the line process latches the encoder count)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgekit.config.run import parse_run_config
from edgekit.errors import DeviceError
from edgekit.runtime.capture.opencv import (
    CsiCamera,
    CsiCameraConfig,
    GstreamerCameraConfig,
    csi_pipeline,
    gstreamer_available,
    rtsp_pipeline,
)
from edgekit.runtime.daemon import Daemon
from edgekit.runtime.events import read_events


def test_csi_pipeline_and_gstreamer_detection() -> None:
    p = csi_pipeline(CsiCameraConfig(sensor_id=1, width=1280, height=720, fps=60, exposure_ns=(13000, 683709000)))
    assert p.startswith("nvarguscamerasrc sensor-id=1 exposuretimerange=\"13000 683709000\"")
    assert "width=1280, height=720, framerate=60/1" in p and p.endswith("appsink drop=true max-buffers=2 sync=false")
    r = rtsp_pipeline(GstreamerCameraConfig(url="rtsp://10.0.0.5/stream1", latency_ms=50))
    assert 'rtspsrc location="rtsp://10.0.0.5/stream1" latency=50 protocols=tcp' in r
    if not gstreamer_available():
        with pytest.raises(DeviceError, match=r"GStreamer: NO.*system-site-packages"):
            CsiCamera(CsiCameraConfig()).open()


def test_gstreamer_config_needs_one_source() -> None:
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one of url or pipeline"):
        parse_run_config({"bundle": "b", "source": {"type": "gstreamer"}})


@pytest.mark.camera
def test_usb_camera_delivers_frames() -> None:
    from edgekit.runtime.capture.opencv import UsbCamera, UsbCameraConfig

    cam = UsbCamera(UsbCameraConfig(device=0))
    cam.open()
    try:
        f = cam.read()
        assert f.image is not None and f.image.dtype == np.uint8 and f.image.shape[2] == 3
    finally:
        cam.close()


def test_hardware_trigger_mode_latches_encoder_count(intensity_bundle, tmp_path) -> None:
    video = tmp_path / "cam.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 40.0, (64, 48))
    for i in range(200):
        vw.write(np.full((48, 64, 3), 240 if i % 2 else 20, np.uint8))
    vw.release()
    cfg = parse_run_config({
        "bundle": str(intensity_bundle),
        "source": {"type": "usb", "device": str(video), "backend": "any", "fps": 40, "fourcc": None,
                   "trigger": {"type": "sim", "period_ms": 50, "frame_timeout_ms": 60}},
        "encoder": {"type": "sim", "speed_mm_s": 200.0, "ticks_per_mm": 2.0},
        "scheduler": {"mode": "encoder", "distance_counts": 200, "pulse_ms": 5},
        "decision": {"deadline_ms": 300},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str(tmp_path / "ev.db")},
        "metrics": {"enabled": False},
    })
    d = Daemon(cfg)
    d.start()
    time.sleep(2.0)
    d.request_stop()
    d.wait()
    rows = read_events(tmp_path / "ev.db", d.run_id)
    assert len(rows) >= 25  # ~20 triggers/s
    seqs = [r["part_id"] for r in rows]
    assert seqs == sorted(seqs)
    normal = [r for r in rows if r["failsafe"] is None]
    assert len(normal) >= 0.8 * len(rows)
    # the latched count is the belt position at the trigger: 400 ticks/s → 20 ticks per 50 ms
    counts = [r["encoder_count"] for r in rows]
    steps = {b - a for a, b in zip(counts, counts[1:])}
    assert steps <= {20, 21, 19}, steps
    assert all(r["failsafe"] in (None, "missing_frame") for r in rows)


class RecordingCapture:
    """cv2.VideoCapture's surface (isOpened/set/get/read/release/getBackendName), recording set()."""

    instances: list[RecordingCapture] = []

    def __init__(self, src, api=None, params=None) -> None:
        self.src, self.api, self.params, self.sets = src, api, params, []
        RecordingCapture.instances.append(self)

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return True

    def set(self, prop, value) -> bool:
        self.sets.append((prop, value))
        return True

    def get(self, prop) -> float:
        return 0.0

    def read(self):
        import time

        time.sleep(0.01)
        return False, None

    def release(self) -> None:
        pass


@pytest.mark.parametrize("kind", ["csi", "rtsp", "pipeline", "usb"])
def test_gstreamer_captures_get_no_cap_set(kind, monkeypatch) -> None:
    """Each cap.set on a GStreamer capture restarts its pipeline: size/fps live in the caps;
    V4L2 captures still get their properties set."""
    import cv2

    from edgekit.runtime.capture import opencv as ocv

    monkeypatch.setattr(cv2, "VideoCapture", RecordingCapture)
    monkeypatch.setattr(ocv, "gstreamer_available", lambda: True)
    RecordingCapture.instances.clear()
    cfg = {"csi": lambda: CsiCamera(CsiCameraConfig(width=1280, height=720, fps=60)),
           "rtsp": lambda: ocv.GstreamerCamera(GstreamerCameraConfig(url="rtsp://h/s", width=640, height=480, fps=15)),
           "pipeline": lambda: ocv.GstreamerCamera(GstreamerCameraConfig(pipeline="videotestsrc ! appsink", fps=10)),
           "usb": lambda: ocv.UsbCamera(ocv.UsbCameraConfig(device=0, width=640, height=480, fps=30))}[kind]
    cam = cfg()
    cam.open()
    cam.close()
    cap = RecordingCapture.instances[-1]
    if kind == "usb":
        props = {p for p, _ in cap.sets}
        assert {cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FPS} <= props
    else:
        assert cap.api == cv2.CAP_GSTREAMER and cap.sets == []
    if kind == "rtsp":
        assert "width=640, height=480" in cap.src and "framerate=15/1" in cap.src


def test_rtsp_pipeline_on_jetson_never_hands_nvmm_to_videoconvert() -> None:
    for codec in ("auto", "h264", "h265"):
        p = rtsp_pipeline(GstreamerCameraConfig(url="rtsp://h/s", codec=codec, width=1280, height=720), jetson=True)
        dec, rest = p.split(" ! nvvidconv ! ", 1)
        assert "videoconvert" not in dec and rest.startswith("video/x-raw, format=BGRx, width=1280, height=720")
    assert "rtph265depay ! h265parse ! nvv4l2decoder" in rtsp_pipeline(
        GstreamerCameraConfig(url="rtsp://h/s", codec="h265"), jetson=True)
    soft = rtsp_pipeline(GstreamerCameraConfig(url="rtsp://h/s", codec="h264", protocol="udp"), jetson=False)
    assert "avdec_h264" in soft and "nv" not in soft.replace("videoconvert", "") and "protocols=udp" in soft


def test_rtsp_protocol_applies_to_the_ffmpeg_path(monkeypatch) -> None:
    import cv2

    from edgekit.runtime.capture import opencv as ocv

    monkeypatch.setattr(cv2, "VideoCapture", RecordingCapture)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|stimeout;5000000")
    cam = ocv.GstreamerCamera(GstreamerCameraConfig(url="rtsp://h/s", backend="ffmpeg", protocol="udp"))
    cam._open_capture()
    import os

    assert os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "rtsp_transport;udp|stimeout;5000000"
    assert RecordingCapture.instances[-1].api == cv2.CAP_FFMPEG
