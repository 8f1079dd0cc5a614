"""Registry contract tests (one assertion set per registered plug-in, no per-plug-in cases in the
assertions): every camera delivers typed frames, every output drives lines and closes safe
twice, every backend matches onnxruntime on the same tiles. Plug-ins whose hardware is absent
are checked up to the one-line DeviceError/ConfigError that names the fix."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from rt_helpers import PlcServer, write_levels

from edgekit.bundle.io import load_bundle
from edgekit.errors import ConfigError, DeviceError
from edgekit.runtime.backends import BACKENDS
from edgekit.runtime.capture import CAMERAS
from edgekit.runtime.capture.base import IDLE
from edgekit.runtime.encoder import SimEncoder, SimEncoderConfig
from edgekit.runtime.outputs import OUTPUTS
from edgekit.runtime.outputs.gpio import FakeGpioChip
from edgekit.runtime.preprocess import Preprocessor
from edgekit.runtime.types import Frame
from edgekit.sim.bundles import write_intensity_dataset


def _camera_config(name: str, tmp_path):
    cls = CAMERAS.get(name)
    if name == "folder":
        write_levels(tmp_path / "f", [10, 200, 90])
        return cls.config_model(path=str(tmp_path / "f")), {}
    if name == "video":
        p = tmp_path / "v.avi"
        vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 100.0, (32, 24))
        for v in (10, 200, 90):
            vw.write(np.full((24, 32, 3), v, np.uint8))
        vw.release()
        return cls.config_model(path=str(p)), {}
    if name == "sim":
        enc = SimEncoder(SimEncoderConfig(speed_mm_s=1000.0))
        return cls.config_model(dataset=str(write_intensity_dataset(tmp_path / "d", 2, 2)), parts=3), {"encoder": enc}
    if name == "usb":
        return cls.config_model(device=str(tmp_path / "video99")), {}
    if name == "csi":
        return cls.config_model(), {}
    if name == "gstreamer":
        return cls.config_model(url="rtsp://127.0.0.1:1/none", backend="ffmpeg", read_timeout_ms=500), {}
    raise AssertionError(f"no contract config for camera {name!r}: add one here")


@pytest.mark.parametrize("name", CAMERAS.names())
def test_camera_contract(name, tmp_path) -> None:
    cfg, kw = _camera_config(name, tmp_path)
    cam = CAMERAS.get(name)(cfg, **kw)
    try:
        cam.open()
    except (DeviceError, ConfigError) as exc:  # hardware absent here: one line naming the fix
        assert "\n" not in str(exc) and len(str(exc)) < 400
        cam.close()
        return
    if "encoder" in kw:
        kw["encoder"].open()
    frames = []
    for _ in range(10):
        f = cam.read()
        if f is None:
            break
        if f is IDLE:
            continue
        frames.append(f)
    cam.close()
    cam.close()  # safe twice
    assert len(frames) == 3
    for i, f in enumerate(frames):
        assert isinstance(f, Frame) and f.part_id == i and f.source_id == cam.name
        assert f.image is not None and f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
        assert f.t_capture_ns <= time.monotonic_ns()


def _output(name: str, plc: PlcServer):
    cls = OUTPUTS.get(name)
    m = cls.config_model
    if name == "fake_gpio":
        FakeGpioChip.reset("contract")
        return cls(m(chip="contract"))
    if name == "gpiod":
        return cls(m(chip="/dev/gpiochip-absent", lines={"reject": 1}))
    if name == "jetson_gpio":
        return cls(m(pins={"reject": 7}))
    if name == "modbus":
        return cls(m(host="127.0.0.1", port=plc.port, reject_coil=1))
    if name in ("modbus_server", "opcua", "mqtt"):  # servers on a free loopback port; MQTT with no broker there
        import socket
        import tempfile

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if name == "modbus_server":
            return cls(m(port=port, shutdown_drain_s=0))
        if name == "opcua":
            return cls(m(endpoint=f"opc.tcp://127.0.0.1:{port}", process="line", shutdown_linger_s=0))
        return cls(m(host="127.0.0.1", port=port, station="contract", shutdown_drain_s=0,
                     outbox_path=tempfile.mkdtemp() + "/outbox.db"))
    raise AssertionError(f"no contract config for output {name!r}: add one here")


@pytest.mark.parametrize("name", OUTPUTS.names())
def test_output_contract(name) -> None:
    plc = PlcServer().start()
    try:
        out = _output(name, plc)
        info = OUTPUTS.info(name)
        assert info["can_pulse"] == type(out).can_pulse
        try:
            out.open()
        except DeviceError as exc:
            assert "\n" not in str(exc)
            return
        assert "reject" in out.roles() or not type(out).can_pulse
        for role in ("reject", "review", "heartbeat", "ready", "no-such-role"):
            out.set_line(role, True)
            out.set_line(role, False)
        out.publish_dict({"part_id": 1, "kind": "reject", "score": 0.9, "failsafe": None, "encoder_count": 5,
                          "t_capture_ns": time.monotonic_ns(), "t_decided_ns": time.monotonic_ns()})
        out.set_band(0.4, 0.5)
        out.close()
        out.close()
        # outputs without their peer here report what they could not deliver (no PLC / broker / poll)
        assert out.pop_errors() == [] or name in ("modbus", "modbus_server", "mqtt")
    finally:
        plc.stop()


@pytest.mark.parametrize("name", BACKENDS.names())
def test_backend_matches_onnxruntime(name, intensity_bundle) -> None:
    bundle = load_bundle(intensity_bundle)
    cls = BACKENDS.get(name)
    be = cls(cls.config_model())
    try:
        be.load(bundle)
    except (DeviceError, ConfigError) as exc:  # e.g. TensorRT on a machine without it
        assert "\n" not in str(exc)
        return
    ref = BACKENDS.get("onnxruntime")(BACKENDS.get("onnxruntime").config_model())
    ref.load(bundle)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    batch = Preprocessor(bundle.preprocess).run(Frame(0, "c", time.monotonic_ns(), img))
    a, b = be.infer(batch), ref.infer(batch)
    assert a.tile_scores.dtype == np.float32 and a.tile_scores.shape == b.tile_scores.shape
    assert np.allclose(a.tile_scores, b.tile_scores, rtol=1e-3, atol=1e-5)
    assert a.model_id.startswith(bundle.bundle_id)
    be.close()
    ref.close()
