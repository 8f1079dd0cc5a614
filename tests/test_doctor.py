"""edgekit doctor: every check against faked probes, plus the real probes where they run here
(OpenCV on a video file, a loopback Modbus TCP server, a real bundle, the CLI on this machine)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import doctor as d
from edgekit.bundle.io import write_manifest
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION
from edgekit.cli import main


# ----------------------------------------------------------------------------- fakes
class FakeProbes(d.Probes):
    """Canned system: every answer is an attribute a test can change."""

    def __init__(self, **kw: Any) -> None:
        self.version = (3, 10, 12)
        self.modules: dict[str, Any] = {"onnxruntime": _Mod("1.20.0"), "cv2": _Mod("4.8.0"),
                                        "gpiod": _Mod("2.2.0"), "pymodbus": _Mod("3.8.0"),
                                        "tensorrt": _Mod("10.3.0")}
        self.providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        self.build_info = "Video I/O:\n    GStreamer:                   YES (1.20.3)\n"
        self.paths: set[str] = {"/dev/nvhost-ctrl-gpu", "/dev/nvmap", "/dev/video0", "/dev/gpiochip0",
                                "/dev/gpiochip1", "/var/lib/edgekit/archive"}
        self.files: dict[str, str] = {"/proc/device-tree/model": "NVIDIA Jetson Orin Nano Developer Kit\x00",
                                      "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.0\n"}
        self.commands: dict[str, tuple[int, str]] = {"timedatectl": (0, "yes\n")}
        self.free_bytes = 50 * 10**9
        self.is_writable = True
        self.camera = (30, 1.0, (720, 1280, 3))
        self.camera_error: Exception | None = None
        self.chips = {"/dev/gpiochip0": ("gpiochip0", "tegra234-gpio", 164),
                      "/dev/gpiochip1": ("gpiochip1", "tegra234-gpio-aon", 32)}
        self.lines: dict[tuple[str, int | str], tuple[int, str, bool, str]] = {
            ("/dev/gpiochip0", 144): (144, "PAC.06", False, ""),
            ("/dev/gpiochip0", "PAC.06"): (144, "PAC.06", False, ""),
            ("/dev/gpiochip0", 43): (43, "PH.00", True, "other-daemon"),
        }
        self.user_info: tuple[str, int, list[str]] = ("edgekit", 998, ["edgekit", "gpio", "video"])
        self.connect_error: OSError | None = None
        self.modbus_value: int | Exception = 7
        self.cuda = {"cuda_python": "12.6.0", "driver": 12060}  # JetPack 6.1/6.2: CUDA 12.6
        self.jitter = {"p50_s": 10e-6, "p99_s": 80e-6, "max_s": 300e-6, "n": 250, "sched_fifo": True,
                       "late_over_100us_by_cause": {"runqueue": 0, "hypervisor": 0, "timer": 2}}
        self.__dict__.update(kw)

    def timer_jitter(self, duration_ms: float, rt_priority: int | None, busy_wait_us: float,
                     timeout_s: float) -> dict[str, Any]:
        return dict(self.jitter)

    def cuda_versions(self) -> dict[str, Any]:
        if isinstance(self.cuda, Exception):
            raise self.cuda
        return dict(self.cuda)

    def python_version(self) -> tuple[int, int, int]:
        return self.version

    def import_module(self, name: str) -> Any:
        m = self.modules.get(name)
        if m is None:
            raise ModuleNotFoundError(f"No module named {name!r}")
        if isinstance(m, Exception):
            raise m
        return m

    def ort_providers(self) -> list[str]:
        return list(self.providers)

    def cv2_build_info(self) -> str:
        return self.build_info

    def exists(self, path: str) -> bool:
        return path in self.paths or any(p.startswith(path.rstrip("/") + "/") for p in self.paths)

    def glob(self, pattern: str) -> list[str]:
        import fnmatch

        return sorted(p for p in self.paths if fnmatch.fnmatch(p, pattern))

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def which(self, cmd: str) -> str | None:
        return f"/usr/bin/{cmd}" if cmd in self.commands else None

    def run(self, argv: Any, timeout_s: float) -> tuple[int, str]:
        return self.commands[argv[0]]

    def user(self) -> tuple[str, int, list[str]]:
        return self.user_info

    def disk_free_bytes(self, path: str) -> int:
        return self.free_bytes

    def writable(self, path: str) -> bool:
        return self.is_writable

    def tcp_connect(self, host: str, port: int, timeout_s: float) -> float:
        if self.connect_error:
            raise self.connect_error
        return 0.002

    def modbus_read(self, host: str, port: int, unit: int, address: int, timeout_s: float) -> int:
        if isinstance(self.modbus_value, Exception):
            raise self.modbus_value
        return self.modbus_value

    def camera_measure(self, kind: str, source: Any, seconds: float, timeout_s: float) -> Any:
        if self.camera_error:
            raise self.camera_error
        return self.camera

    def gpio_chips(self) -> list[str]:
        return sorted(self.chips)

    def gpio_chip_info(self, path: str) -> tuple[str, str, int]:
        if path not in self.chips:
            raise OSError(f"{path}: no such chip")
        return self.chips[path]

    def gpio_line_info(self, path: str, line: int | str) -> tuple[int, str, bool, str]:
        if (path, line) not in self.lines:
            raise OSError("no such line")
        return self.lines[(path, line)]


class _Mod:
    def __init__(self, version: str) -> None:
        self.__version__ = version


def _station(**kw: Any) -> d.DoctorParams:
    """A fully configured Jetson station (TensorRT, camera at 30 fps, GPIO reject line, PLC)."""
    base = d.DoctorParams(config_path="station.yaml", bundle_dir=None, backend="tensorrt", need_cuda=True,
                          camera_kind="v4l2", camera_source="/dev/video0", camera_fps=30.0,
                          gpio_chip="tegra234-gpio", gpio_lines=("PAC.06",), plc_host="192.168.0.10",
                          plc_read_address=16, archive_dir=Path("/var/lib/edgekit/archive"))
    return replace(base, **kw)


def _make_bundle(path: Path, trt_version: str | None = None) -> Path:
    """A real (tiny) bundle written by edgekit.bundle.io, so load_bundle verifies real hashes."""
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(b"not a real model, only hashed here")
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "edgekit_version": "0.1.0",
        "bundle_id": "b-test-0001", "method": "rd", "backbone": {"name": "resnet18"},
        "preprocess": {}, "inputs": {}, "outputs": {}, "models": {"fp32": {"file": "model.onnx", "kind": "onnx"}},
        "files": {"model.onnx": ""}, "thresholds": {"threshold": 0.5, "accept_edge": 0.5, "reject_edge": 0.5},
        "created": "2026-11-23T08:00:00Z",
    }
    if trt_version:
        manifest["build"] = {"tensorrt_version": trt_version}
    write_manifest(path, manifest)
    return path


def _by_name(results: list[d.CheckResult]) -> dict[str, d.CheckResult]:
    return {r.name: r for r in results}


# ----------------------------------------------------------------------------- results and report
def test_status_of_results() -> None:
    assert d.CheckResult("a", True, "").status == "ok"
    assert d.CheckResult("a", False, "", "fix").status == "fail"
    assert d.CheckResult("a", False, "", "fix", optional=True).status == "warn"
    assert d.CheckResult("a", True, "", skipped=True).status == "skip"


def test_healthy_station_passes_every_check() -> None:
    results = d.run_checks(_station(), FakeProbes())
    bad = [r for r in results if r.status in ("fail", "warn")]
    assert bad == [], bad
    report = d.Report(results, _station())
    assert report.exit_code == 0
    assert "0 failure(s)" in report.to_text()


def test_warnings_do_not_fail_but_failures_do() -> None:
    warn = d.Report([d.CheckResult("clock sync", False, "x", "y", optional=True)], _station())
    assert warn.exit_code == 0 and warn.warnings == 1
    fail = d.Report([d.CheckResult("gpio", False, "x", "y")], _station())
    assert fail.exit_code == 1 and fail.failures == 1


def test_text_report_shows_marks_and_fixes_and_ascii_fallback() -> None:
    results = [d.CheckResult("python", True, "Python 3.10.12"),
               d.CheckResult("gpio", False, "no /dev/gpiochip*", "run provision.sh")]
    text = d.Report(results, _station()).to_text()
    assert "✔ python" in text and "✘ gpio" in text and "fix: run provision.sh" in text
    ascii_text = d.Report(results, _station()).to_text(unicode=False)
    assert "FAIL gpio" in ascii_text and "✘" not in ascii_text
    ascii_text.encode("ascii")


def test_json_report_round_trips() -> None:
    report = d.Report([d.CheckResult("gpio", False, "x", "y")], _station())
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["failures"] == 1
    assert data["checks"][0] == {"name": "gpio", "ok": False, "detail": "x", "fix": "y",
                                 "optional": False, "skipped": False, "status": "fail"}


def test_a_crashing_check_becomes_a_failed_line() -> None:
    def check_boom(params: d.DoctorParams, probes: d.Probes) -> d.CheckResult:
        raise ZeroDivisionError("oops")

    (r,) = d.run_checks(_station(), FakeProbes(), checks=(check_boom,))
    assert r.name == "boom" and r.status == "fail" and "ZeroDivisionError" in r.detail


# ----------------------------------------------------------------------------- individual checks
def test_user_and_groups() -> None:
    assert d.check_user(_station(), FakeProbes()).ok
    r = d.check_user(_station(), FakeProbes(user_info=("edgekit", 998, ["edgekit", "video"])))
    assert r.status == "fail" and "gpio" in r.detail and "usermod -aG gpio edgekit" in r.fix
    r = d.check_user(_station(), FakeProbes(user_info=("root", 0, ["root"])))
    assert r.status == "warn" and "sudo -u edgekit" in r.fix
    # a replay station needs neither group
    assert d.check_user(_station(gpio_chip=None, camera_kind="file"), FakeProbes(user_info=("ci", 1000, ["ci"]))).ok
    name, uid, groups = d.Probes().user()  # real probe on this machine
    assert isinstance(name, str) and uid >= 0 and groups


def test_python_version() -> None:
    assert d.check_python(_station(), FakeProbes()).ok
    r = d.check_python(_station(), FakeProbes(version=(3, 8, 10)))
    assert r.status == "fail" and "3.8.10" in r.detail and "venv" in r.fix


def test_extras_required_only_when_used() -> None:
    probes = FakeProbes()
    del probes.modules["gpiod"], probes.modules["pymodbus"]
    res = _by_name(d.check_extras(_station(), probes))
    assert res["import gpiod"].status == "fail" and "edgekit[jetson]" in res["import gpiod"].fix
    assert res["import pymodbus"].status == "fail" and "edgekit[plc]" in res["import pymodbus"].fix
    res = _by_name(d.check_extras(_station(gpio_chip=None, plc_host=None), probes))
    assert res["import gpiod"].status == "warn" and res["import pymodbus"].status == "warn"
    assert res["import onnxruntime"].status == "ok" and "1.20.0" in res["import onnxruntime"].detail


def test_ort_providers_need_cuda_for_a_gpu_onnxruntime_station() -> None:
    cpu_only = FakeProbes(providers=["CPUExecutionProvider"])
    r = d.check_ort_providers(_station(backend="onnxruntime", need_cuda=True), cpu_only)
    assert r.status == "fail" and "onnxruntime-gpu" in r.fix
    # the TensorRT backend does not go through onnxruntime: only a warning
    assert d.check_ort_providers(_station(), cpu_only).status == "warn"
    assert d.check_ort_providers(_station(backend="onnxruntime", need_cuda=False), cpu_only).ok


def test_tensorrt_version_against_bundle_engine(tmp_path: Path) -> None:
    bundle = _make_bundle(tmp_path / "b", trt_version="10.3.0")
    real_files = {str(bundle / "manifest.json"): (bundle / "manifest.json").read_text()}
    probes = FakeProbes(files=real_files)
    assert d.check_tensorrt(_station(bundle_dir=bundle), probes).ok
    probes.modules["tensorrt"] = _Mod("8.6.2")
    r = d.check_tensorrt(_station(bundle_dir=bundle), probes)
    assert r.status == "fail" and "8.6.2" in r.detail and "10.3.0" in r.detail and "rebuild" in r.fix
    probes.modules["tensorrt"] = OSError("libnvinfer.so.10: cannot open shared object file")
    r = d.check_tensorrt(_station(bundle_dir=bundle), probes)
    assert r.status == "fail" and "OSError" in r.detail
    assert d.check_tensorrt(_station(backend="onnxruntime", bundle_dir=bundle), probes).status == "warn"


def test_cuda_device_evidence() -> None:
    r = d.check_cuda(_station(), FakeProbes())
    assert r.ok and "/dev/nvhost-ctrl-gpu" in r.detail
    none = FakeProbes(paths=set(), providers=["CPUExecutionProvider"])
    r = d.check_cuda(_station(), none)
    assert r.status == "fail" and "JetPack" in r.fix
    assert d.check_cuda(_station(need_cuda=False), none).status == "warn"
    smi = FakeProbes(paths=set(), providers=["CPUExecutionProvider"],
                     commands={"nvidia-smi": (0, "GPU 0: NVIDIA H100 (UUID: GPU-1)\n")})
    assert "H100" in d.check_cuda(_station(), smi).detail


def test_opencv_gstreamer() -> None:
    assert d.check_gstreamer(_station(camera_kind="gstreamer"), FakeProbes()).ok
    no = FakeProbes(build_info="    GStreamer:                   NO\n")
    assert d.check_gstreamer(_station(camera_kind="gstreamer"), no).status == "fail"
    r = d.check_gstreamer(_station(camera_kind="v4l2"), no)
    assert r.status == "warn" and "opencv-python-headless" in r.fix


def test_camera_rate_against_config() -> None:
    assert d.check_camera(_station(), FakeProbes()).ok
    slow = FakeProbes(camera=(12, 1.0, (720, 1280, 3)))
    r = d.check_camera(_station(), slow)
    assert r.status == "fail" and "12.0 fps measured < 30 fps" in r.detail
    r = d.check_camera(_station(camera_source="/dev/video4"), FakeProbes())
    assert r.status == "fail" and "/dev/video0" in r.detail  # lists the cameras that do exist
    r = d.check_camera(_station(), FakeProbes(camera_error=RuntimeError("'/dev/video0' did not deliver frames")))
    assert r.status == "fail" and "video group" in r.fix
    assert d.check_camera(_station(camera_kind="none", camera_source=None), FakeProbes()).status == "skip"


def test_camera_measures_a_real_video_file(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "line.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert w.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(200):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.release()
    params = _station(camera_kind="file", camera_source=str(path), camera_fps=30.0, camera_measure_s=0.2)
    r = d.check_camera(params, d.Probes())
    assert r.ok, r.detail
    assert "64x48" in r.detail
    r = d.check_camera(replace(params, camera_source=str(tmp_path / "missing.avi")), d.Probes())
    assert r.status == "fail" and "not found" in r.detail


def test_gpio_chip_by_label_and_free_line() -> None:
    r = d.check_gpio(_station(), FakeProbes())
    assert r.ok and "/dev/gpiochip0" in r.detail and "PAC.06@144" in r.detail


def test_gpio_busy_line_names_its_consumer() -> None:
    r = d.check_gpio(_station(gpio_chip="/dev/gpiochip0", gpio_lines=(144, 43)), FakeProbes())
    assert r.status == "fail" and "PH.00@43 used by other-daemon" in r.detail and "gpioinfo" in r.fix


def test_gpio_missing_chip_line_and_permissions() -> None:
    r = d.check_gpio(_station(), FakeProbes(chips={}, paths=set()))
    assert r.status == "fail" and "no /dev/gpiochip*" in r.detail
    r = d.check_gpio(_station(gpio_chip="tegra194-gpio"), FakeProbes())
    assert r.status == "fail" and "tegra194-gpio" in r.detail and "gpiodetect" in r.fix
    r = d.check_gpio(_station(gpio_lines=("PZZ.09",)), FakeProbes())
    assert r.status == "fail" and "PZZ.09" in r.detail

    class Denied(FakeProbes):
        def gpio_chip_info(self, path: str) -> tuple[str, str, int]:
            raise PermissionError(13, "Permission denied")

    r = d.check_gpio(_station(gpio_chip="/dev/gpiochip0"), Denied())
    assert r.status == "fail" and "gpio group" in r.fix
    assert d.check_gpio(_station(gpio_chip=None), FakeProbes()).status == "skip"


def test_plc_reachability_and_modbus_read() -> None:
    r = d.check_plc(_station(), FakeProbes())
    assert r.ok and "holding register 16 = 7" in r.detail
    r = d.check_plc(_station(), FakeProbes(connect_error=ConnectionRefusedError(111, "Connection refused")))
    assert r.status == "fail" and "unreachable" in r.detail
    r = d.check_plc(_station(), FakeProbes(modbus_value=ConnectionError("Modbus exception response")))
    assert r.status == "warn" and "docs/plc.md" in r.fix
    assert d.check_plc(_station(plc_host=None), FakeProbes()).status == "skip"


def test_disk_space_and_writability(tmp_path: Path) -> None:
    assert d.check_disk(_station(), FakeProbes()).ok
    r = d.check_disk(_station(), FakeProbes(free_bytes=10**9))
    assert r.status == "fail" and "1.0 GB free < 2 GB" in r.detail
    r = d.check_disk(_station(), FakeProbes(is_writable=False))
    assert r.status == "fail" and "chown" in r.fix
    # real probes on a real directory (and a not-yet-created child)
    assert d.check_disk(_station(archive_dir=tmp_path, min_free_gb=0.0), d.Probes()).ok
    r = d.check_disk(_station(archive_dir=tmp_path / "a" / "b", min_free_gb=0.0), d.Probes())
    assert r.ok and "does not exist yet" in r.detail
    r = d.check_disk(_station(archive_dir=tmp_path, min_free_gb=1e9), d.Probes())
    assert r.status == "fail"


def test_clock_sync() -> None:
    assert d.check_clock(_station(), FakeProbes()).ok
    r = d.check_clock(_station(), FakeProbes(commands={"timedatectl": (0, "no\n")}))
    assert r.status == "warn" and "set-ntp" in r.fix
    r = d.check_clock(_station(), FakeProbes(commands={"timedatectl": (1, "System has not been booted with systemd")}))
    assert r.status == "warn" and "booted" in r.detail
    assert d.check_clock(_station(), FakeProbes(commands={})).status == "warn"


def test_bundle_hashes(tmp_path: Path) -> None:
    bundle = _make_bundle(tmp_path / "b")
    r = d.check_bundle(_station(bundle_dir=bundle), FakeProbes())
    assert r.ok and "b-test-0001" in r.detail
    (bundle / "model.onnx").write_bytes(b"tampered")
    r = d.check_bundle(_station(bundle_dir=bundle), FakeProbes())
    assert r.status == "fail" and "sha256" in r.detail and "install-bundle.sh" in r.fix
    r = d.check_bundle(_station(bundle_dir=tmp_path / "nope"), FakeProbes())
    assert r.status == "fail"


def test_real_gpio_probe_on_a_non_chip() -> None:
    """The real libgpiod probe refuses a device that is not a gpiochip (no GPIO hardware needed)."""
    pytest.importorskip("gpiod")
    with pytest.raises(OSError, match="not a GPIO character device"):
        d.Probes().gpio_chip_info("/dev/null")
    assert all(p.startswith("/dev/gpiochip") for p in d.Probes().gpio_chips())


def test_platform() -> None:
    assert "Orin Nano" in d.check_platform(_station(), FakeProbes()).detail
    assert d.check_platform(_station(), FakeProbes(files={})).status == "warn"


# ----------------------------------------------------------------------------- config → params
def test_params_from_run_config_mapping(tmp_path: Path) -> None:
    data = {
        "bundle": "bundles/current",
        "backend": {"type": "tensorrt"},
        "camera": {"type": "v4l2", "device": "/dev/video2", "fps": 60},
        "outputs": [{"type": "gpio", "chip": "tegra234-gpio", "line": "PAC.06", "pulse_ms": 40}],
        "encoder": {"type": "gpio", "chip": "tegra234-gpio", "line_a": "PH.00", "line_b": "PN.01"},
        "plc": {"host": "10.0.0.5", "port": 5020, "unit": 2},
        "archive": {"dir": "/data/archive", "min_free_gb": 5},
    }
    p = d.params_from_mapping(data, str(tmp_path / "station.yaml"))
    assert p.bundle_dir == tmp_path / "bundles" / "current"
    assert p.need_tensorrt and p.need_cuda
    assert (p.camera_kind, p.camera_source, p.camera_fps) == ("v4l2", "/dev/video2", 60.0)
    assert p.gpio_chip == "tegra234-gpio" and p.gpio_lines == ("PAC.06", "PH.00", "PN.01")
    assert (p.plc_host, p.plc_port, p.plc_unit, p.plc_read_address) == ("10.0.0.5", 5020, 2, 0)
    assert p.archive_dir == Path("/data/archive") and p.min_free_gb == 5.0
    cpu = d.params_from_mapping({"backend": {"type": "onnxruntime", "device": "cpu"},
                                 "camera": {"type": "file", "path": "clip.avi"}}, str(tmp_path / "s.yaml"))
    assert not cpu.need_cuda and not cpu.need_tensorrt and not cpu.need_gpio and not cpu.need_plc
    assert cpu.camera_source == str(tmp_path / "clip.avi")


def test_params_from_a_real_run_config_file(tmp_path: Path) -> None:
    """The config the daemon reads (edgekit/config/run.py), validated and resolved by its loader."""
    pytest.importorskip("edgekit.config.run")
    cfg = tmp_path / "station.yaml"
    cfg.write_text(
        "bundle: bundles/current\n"
        "source: {type: video, path: clip.avi, rate_hz: 30}\n"
        "backend: {type: onnxruntime, device: cuda}\n"
        "encoder: {type: gpiod, chip: /dev/gpiochip0, line: 105, direction_line: 106}\n"
        "scheduler: {mode: encoder, distance_counts: 1200}\n"
        "outputs:\n"
        "  - {type: gpiod, name: gpio, chip: /dev/gpiochip0, lines: {reject: 144, ready: 85}, active_low: true}\n"
        "archive: {enabled: true, dir: /data/archive, quota_mb: 4096}\n"
    )
    p = d.params_from_config(str(cfg))
    assert p.config_error is None
    assert p.bundle_dir == (tmp_path / "bundles" / "current").resolve()
    assert p.need_cuda and not p.need_tensorrt
    assert (p.camera_kind, p.camera_source, p.camera_fps) == ("file", str((tmp_path / "clip.avi").resolve()), 30.0)
    assert p.gpio_chip == "/dev/gpiochip0" and p.gpio_lines == (144, 85, 105, 106)
    assert p.archive_dir == Path("/data/archive") and p.min_free_gb == pytest.approx(4.5)
    assert not p.need_plc
    # defaults of the model: fake GPIO output, no archive -> disk check on the event log's dir
    cfg.write_text("bundle: b\nsource: {type: folder, path: imgs}\n")
    p = d.params_from_config(str(cfg))
    assert p.config_error is None and not p.need_gpio and p.camera_kind == "folder"
    assert p.archive_dir == tmp_path.resolve() and p.min_free_gb == d.EVENT_LOG_MIN_FREE_GB
    cfg.write_text("bundle: b\nsource: {type: video, path: x.avi}\nbackend: {type: onnxruntime, devcie: cuda}\n")
    p = d.params_from_config(str(cfg))
    assert p.config_error and "backend.devcie" in p.config_error


def test_camera_folder_source(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    params = _station(camera_kind="folder", camera_source=str(tmp_path / "imgs"))
    assert d.check_camera(params, d.Probes()).status == "fail"
    (tmp_path / "imgs" / "a" / "p1.png").write_bytes(b"x")
    r = d.check_camera(params, d.Probes())
    assert r.ok and "1 images" in r.detail


def test_broken_config_is_a_failed_line_not_a_crash(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("camera: [unclosed\n")
    report = d.doctor(str(cfg), probes=FakeProbes())
    res = _by_name(report.results)
    assert res["config"].status == "fail" and "invalid YAML" in res["config"].detail
    assert "python" in res  # the other checks still ran
    assert report.exit_code == 1


# ----------------------------------------------------------------------------- real loopback PLC
@pytest.fixture
def modbus_server() -> Any:
    """A real pymodbus TCP server on 127.0.0.1 with holding registers 0.. = 100, 101, ..."""
    pytest.importorskip("pymodbus")
    from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
    from pymodbus.server import ModbusTcpServer

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    block = ModbusSequentialDataBlock(1, [100 + i for i in range(64)])  # pymodbus 3.1x: block 1 = address 0
    ctx = ModbusServerContext(devices=ModbusDeviceContext(hr=block), single=True)
    loop = asyncio.new_event_loop()
    holder: dict[str, Any] = {}
    ready = threading.Event()

    async def start() -> None:  # the server binds to the running loop, so create it inside
        holder["server"] = ModbusTcpServer(ctx, address=("127.0.0.1", port))
        await holder["server"].listen()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(5)
    yield port
    asyncio.run_coroutine_threadsafe(holder["server"].shutdown(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plc_against_loopback_modbus_server(modbus_server: int) -> None:
    params = _station(plc_host="127.0.0.1", plc_port=modbus_server, plc_read_address=16, timeout_s=2.0)
    t0 = time.monotonic()
    r = d.check_plc(params, d.Probes())
    assert r.ok, r.detail
    assert "holding register 16 = 116" in r.detail
    assert time.monotonic() - t0 < 5


def test_plc_closed_port_fails_fast() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = d.check_plc(_station(plc_host="127.0.0.1", plc_port=port, timeout_s=1.0), d.Probes())
    assert r.status == "fail" and "unreachable" in r.detail


# ----------------------------------------------------------------------------- CLI on this machine
def test_cli_doctor_here_reports_missing_jetson_parts_without_crashing() -> None:
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert "python" in result.output and "fix:" in result.output
    if not Path("/dev/gpiochip0").exists():  # this container: no GPIO, no Jetson
        assert result.exit_code == 1
        assert "gpio" in result.output and "provision.sh" in result.output


def test_cli_doctor_json_and_bundle_only(tmp_path: Path) -> None:
    bundle = _make_bundle(tmp_path / "b")
    result = CliRunner().invoke(main, ["doctor", "--json", "--bundle-only", "--bundle", str(bundle)])
    data = json.loads(result.output)
    assert [c["name"] for c in data["checks"]] == ["config", "bundle"]
    assert data["ok"] is True and result.exit_code == 0
    (bundle / "model.onnx").write_bytes(b"x")
    result = CliRunner().invoke(main, ["doctor", "--json", "--bundle-only", "--bundle", str(bundle)])
    assert result.exit_code == 1 and json.loads(result.output)["failures"] == 1


def test_cli_verify_bundle(tmp_path: Path) -> None:
    bundle = _make_bundle(tmp_path / "b")
    result = CliRunner().invoke(main, ["verify-bundle", str(bundle)])
    assert result.exit_code == 0 and "b-test-0001" in result.output
    (bundle / "model.onnx").write_bytes(b"x")
    result = CliRunner().invoke(main, ["verify-bundle", str(bundle)])
    assert result.exit_code == 2 and "sha256" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- real hardware (skipped here)
@pytest.mark.jetson
def test_on_a_jetson_platform_and_cuda_pass() -> None:
    probes = d.Probes()
    assert d.check_platform(_station(), probes).ok
    assert d.check_cuda(_station(), probes).ok


@pytest.mark.gpu
def test_on_a_gpu_machine_cuda_device_is_found() -> None:
    r = d.check_cuda(_station(), d.Probes())
    assert r.ok, r.detail


@pytest.mark.gpio
def test_on_a_gpio_machine_the_first_chip_is_readable() -> None:
    chip = d.Probes().gpio_chips()[0]
    r = d.check_gpio(_station(gpio_chip=chip, gpio_lines=()), d.Probes())
    assert r.ok, r.detail


@pytest.mark.camera
def test_on_a_camera_machine_video0_delivers_frames() -> None:
    r = d.check_camera(_station(camera_fps=None, camera_measure_s=0.5), d.Probes())
    assert r.ok and " frames in " in r.detail, r.detail


# ----------------------------------------------------------------------------- pulse timing
def test_pulse_timing_within_tolerance_is_ok() -> None:
    r = d.check_pulse_timing(d.DoctorParams(), FakeProbes())
    assert r.status == "ok" and "p50/p99/max 0.010/0.080/0.300 ms" in r.detail and "SCHED_FIFO granted" in r.detail


def test_pulse_timing_late_on_a_vm_names_the_cause_and_the_fix() -> None:
    slow = {"p50_s": 0.2e-3, "p99_s": 4.5e-3, "max_s": 17e-3, "n": 250, "sched_fifo": True,
            "late_over_100us_by_cause": {"runqueue": 0, "hypervisor": 9, "timer": 3}}
    r = d.check_pulse_timing(d.DoctorParams(), FakeProbes(jitter=slow))
    assert r.status == "warn" and "> scheduler.tolerance_ms 1 ms" in r.detail and "'hypervisor': 9" in r.detail
    assert "hypervisor" in r.fix and "scheduler.mode: plc" in r.fix
    slow["late_over_100us_by_cause"] = {"runqueue": 12, "hypervisor": 0, "timer": 0}
    slow["sched_fifo"] = False
    r = d.check_pulse_timing(d.DoctorParams(), FakeProbes(jitter=slow))
    assert "SCHED_FIFO refused" in r.detail and "LimitRTPRIO" in r.fix
    # PLC-timed rejection does not depend on this machine's timers
    r = d.check_pulse_timing(d.DoctorParams(scheduler_mode="plc"), FakeProbes(jitter=slow))
    assert r.status == "ok" and "the PLC times the reject" in r.detail


def test_pulse_timing_real_probe_runs_a_child() -> None:
    j = d.Probes().timer_jitter(30.0, None, 200.0, timeout_s=60.0)
    assert j["n"] >= 10 and j["sched_fifo"] is False and 0 <= j["p50_s"] <= j["max_s"]


def test_cuda_python_checked_against_the_driver() -> None:
    r = d.check_cuda_python(_station(), FakeProbes())
    assert r.ok and r.detail == "cuda-python 12.6.0, CUDA driver 12.6"
    # what `pip install cuda-python` resolves to on JetPack 6: bindings 13 on a CUDA 12.6 driver
    r = d.check_cuda_python(_station(), FakeProbes(cuda={"cuda_python": "13.0.1", "driver": 12060}))
    assert r.status == "fail" and "needs a CUDA 13 driver, this one is CUDA 12.6" in r.detail
    assert "'cuda-python>=12,<13'" in r.fix
    from edgekit.errors import DeviceError

    r = d.check_cuda_python(_station(), FakeProbes(cuda=DeviceError("TensorRT needs cuda-python here")))
    assert r.status == "fail" and r.fix.endswith("install 'cuda-python>=12,<13'")


def test_tensorrt_version_verdict_per_jetpack() -> None:
    r = d.check_tensorrt(_station(), FakeProbes())
    assert r.ok and r.detail.startswith("TensorRT 10.3.0: supported")
    p = FakeProbes()
    p.modules["tensorrt"] = _Mod("8.6.2")
    r = d.check_tensorrt(_station(), p)
    assert r.ok and "JetPack 6.0" in r.detail and "EXPLICIT_BATCH" in r.detail
    p.modules["tensorrt"] = _Mod("8.5.2")
    r = d.check_tensorrt(_station(), p)
    assert r.status == "fail" and "too old" in r.detail and "JetPack 6.1 or 6.2" in r.fix


def test_doctor_resolves_chip_labels_like_the_runtime() -> None:
    """A label that doctor accepts is one the outputs/encoder resolve (one resolver)."""
    r = d.check_gpio(_station(gpio_chip="tegra234-gpio-aon", gpio_lines=()), FakeProbes())
    assert r.ok and r.detail.startswith("/dev/gpiochip1 gpiochip1 (tegra234-gpio-aon")
