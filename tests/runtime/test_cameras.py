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
