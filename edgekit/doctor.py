"""``edgekit doctor``: a station checklist with one ✔/✘ line and a fix per item.

Every check is a function ``check_x(params, probes) -> CheckResult``. All contact with the
system (imports, files, subprocesses, sockets, camera, GPIO) goes through a ``Probes`` object,
so tests inject a fake and each check is a pure function of what the probes report. A check
never raises: an unexpected exception becomes a failed line naming the exception.

Without a CONFIG the doctor checks the default Jetson station (CUDA, TensorRT, a gpiochip,
a camera at /dev/video0, the bundle at /var/lib/edgekit/bundles/current); with a CONFIG it
checks exactly what that station uses and skips what it does not."""

from __future__ import annotations

import glob
import importlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.compile.trt_build import TRT_INSTALL
from edgekit.errors import DeviceError, EdgekitError

DEFAULT_CONFIG = Path("/etc/edgekit/config.yaml")  # what edgekit.service runs
DEFAULT_STATE_DIR = Path("/var/lib/edgekit")
DEFAULT_BUNDLE_DIR = DEFAULT_STATE_DIR / "bundles" / "current"
DEFAULT_ARCHIVE_DIR = DEFAULT_STATE_DIR / "archive"
DEFAULT_CAMERA = "/dev/video0"
MIN_PYTHON = (3, 10)
# Below this the archive fills within a shift at typical reject rates (a few hundred JPEGs/hour).
DEFAULT_MIN_FREE_GB = 2.0
# The SQLite event log (a few hundred bytes per part, capped by events.max_rows) needs far less.
EVENT_LOG_MIN_FREE_GB = 0.5
# Camera may run slightly under nominal fps (exposure, USB scheduling); below 90 % the line
# timing (encoder delay → reject) assumptions of the config no longer hold.
FPS_TOLERANCE = 0.9

# How each install hint reads; one place so every check gives the same fix.
PIP = "/opt/edgekit/venv/bin/pip install"
FIX_PROVISION = "run firmware_scripts/provision.sh on the Jetson (see docs/deploy-jetson.md)"
FIX_FOR_MODULE = {
    "onnxruntime": f"{PIP} onnxruntime (Jetson: the onnxruntime-gpu wheel for your JetPack, Jetson AI Lab index)",
    "cv2": "use JetPack's python3-opencv through a venv created with --system-site-packages (provision.sh)",
    "gpiod": f"{PIP} 'edgekit[jetson]' (gpiod>=2.1: the libgpiod v2 Python bindings)",
    "pymodbus": f"{PIP} 'edgekit[plc]' (pymodbus>=3.10)",
}


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check.

    ``ok`` False with ``optional`` True is a warning (does not fail the doctor); ``skipped``
    means the station does not use this item (e.g. no PLC configured)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False
    skipped: bool = False

    @property
    def status(self) -> str:
        """One of ``ok``, ``warn``, ``fail``, ``skip``."""
        if self.skipped:
            return "skip"
        if self.ok:
            return "ok"
        return "warn" if self.optional else "fail"


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def _fail(name: str, detail: str, fix: str, optional: bool = False) -> CheckResult:
    return CheckResult(name, False, detail, fix, optional=optional)


def _skip(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail, skipped=True)


# ----------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class DoctorParams:
    """What to check, as plain values (from a run config or the Jetson-station defaults)."""

    config_path: str | None = None
    config_error: str | None = None
    bundle_dir: Path | None = DEFAULT_BUNDLE_DIR
    backend: str = "tensorrt"  # "onnxruntime" | "tensorrt"
    need_cuda: bool = True
    camera_kind: str = "v4l2"  # "v4l2" | "gstreamer" | "file" (video) | "folder" (images) | "none"
    camera_source: str | int | None = DEFAULT_CAMERA
    camera_fps: float | None = None
    gpio_chip: str | None = "/dev/gpiochip0"  # path, name (gpiochip0) or label (tegra234-gpio)
    gpio_lines: tuple[int | str, ...] = ()  # offsets or line names (PAC.06)
    plc_host: str | None = None
    plc_port: int = 502
    plc_unit: int = 1
    plc_read_address: int | None = None  # holding register to read once (see docs/plc.md)
    archive_dir: Path | None = DEFAULT_ARCHIVE_DIR
    min_free_gb: float = DEFAULT_MIN_FREE_GB
    timeout_s: float = 2.0
    camera_measure_s: float = 1.0
    scheduler_mode: str = "encoder"  # time | encoder | plc (plc: the PLC times the reject)
    tolerance_ms: float = 1.0  # scheduler.tolerance_ms
    rt_priority: int | None = 50  # line.rt_priority
    busy_wait_us: float = 1000.0  # line.busy_wait_us
    jitter_probe_ms: float = 500.0

    @property
    def need_tensorrt(self) -> bool:
        return self.backend in ("tensorrt", "trt")

    @property
    def need_gpio(self) -> bool:
        return self.gpio_chip is not None

    @property
    def need_plc(self) -> bool:
        return self.plc_host is not None

    @property
    def need_gstreamer(self) -> bool:
        return self.camera_kind == "gstreamer"


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    """First present key of a mapping (tolerates the few spellings a run config may use)."""
    if not isinstance(d, dict):
        return default
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return default


def params_from_mapping(data: dict[str, Any], config_path: str | None = None) -> DoctorParams:
    """Map a run-config mapping (``edgekit/config/run.py`` layout) to DoctorParams.

    This is the one place that knows the run-config layout; everything else takes plain values."""
    base = DoctorParams(config_path=config_path)
    root = Path(config_path).parent if config_path else Path(".")

    def resolve(p: Any) -> Path:
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else root / q

    bundle = _get(data, "bundle", "bundle_dir")
    backend_cfg = _get(data, "backend", default={})
    if bundle is None:
        bundle = _get(backend_cfg, "bundle", "bundle_dir")
    backend_type = str(_get(backend_cfg, "type", "name", default="onnxruntime")).lower()
    backend = "tensorrt" if backend_type in ("tensorrt", "trt") else "onnxruntime"
    device = str(_get(backend_cfg, "device", default="cpu")).lower()
    providers = [str(p).lower() for p in (_get(backend_cfg, "providers", default=[]) or [])]
    need_cuda = backend == "tensorrt" or device.startswith(("cuda", "gpu")) or any(
        "cuda" in p or "tensorrt" in p for p in providers)

    cam = _get(data, "source", "camera", default=None)
    if not isinstance(cam, dict):
        camera_kind, camera_source, camera_fps = "none", None, None
    else:
        ctype = str(_get(cam, "type", default="v4l2")).lower()
        src = _get(cam, "device", "path", "pipeline", "uri", "index")
        camera_fps = _get(cam, "fps", "rate_hz", "frame_rate")
        if ctype in ("gstreamer", "gst", "csi", "argus"):
            camera_kind = "gstreamer"
        elif ctype in ("file", "video", "video_file", "replay"):
            camera_kind = "file"
            src = str(resolve(src)) if src is not None else None
        elif ctype in ("folder", "images"):
            camera_kind = "folder"
            src = str(resolve(src)) if src is not None else None
        elif ctype in ("fake", "synthetic", "sim", "none"):
            camera_kind = "none"
        else:
            camera_kind = "v4l2"
            if src is None:
                src = DEFAULT_CAMERA
        camera_source = src

    gpio_chip: str | None = None
    lines: list[int | str] = []
    plc_host: str | None = None
    plc_port, plc_unit, plc_addr = 502, 1, None
    outputs = _get(data, "outputs", default=[]) or []
    if isinstance(outputs, dict):
        outputs = [dict(v, name=k) if isinstance(v, dict) else v for k, v in outputs.items()]
    plc_cfgs = [o for o in outputs if isinstance(o, dict) and str(o.get("type", "")).lower() in ("modbus", "plc", "modbus_tcp")]
    for o in outputs:
        if not isinstance(o, dict) or str(o.get("type", "")).lower() not in ("gpio", "gpiod"):
            continue
        gpio_chip = str(_get(o, "chip", "gpiochip", default="/dev/gpiochip0"))
        for key in ("line", "offset", "reject_line", "line_name"):
            if o.get(key) is not None:
                lines.append(o[key])
        for key in ("lines", "offsets"):
            v = o.get(key)
            if isinstance(v, dict):  # role -> offset (reject, review, heartbeat, ready); None = unused
                lines.extend(x for x in v.values() if x is not None)
            elif isinstance(v, (list, tuple)):
                lines.extend(v)
    enc = _get(data, "encoder", default=None)
    if isinstance(enc, dict) and str(enc.get("type", "gpio")).lower() in ("gpio", "gpiod", "quadrature"):
        gpio_chip = gpio_chip or str(_get(enc, "chip", default="/dev/gpiochip0"))
        for key in ("line", "direction_line", "line_a", "line_b"):
            if enc.get(key) is not None:
                lines.append(enc[key])
    plc = _get(data, "plc", default=None)
    if plc is None and plc_cfgs:
        plc = plc_cfgs[0]
    if isinstance(plc, dict) and plc.get("enabled", True):
        plc_host = _get(plc, "host", "address", "ip")
        plc_port = int(_get(plc, "port", default=502))
        plc_unit = int(_get(plc, "unit", "unit_id", "device_id", "slave", default=1))
        base_addr = _get(plc, "base_address", "base", default=None)
        plc_addr = int(base_addr) if base_addr is not None else 0

    archive = _get(data, "archive", default=None)
    archive_dir: Path | None
    min_free_gb = base.min_free_gb
    events = _get(data, "events", default={})
    events_path = _get(events, "path")
    events_dir = resolve(events_path).parent if events_path is not None else None
    if isinstance(archive, dict) and archive.get("enabled", True):
        d = _get(archive, "dir", "path", "directory")
        archive_dir = resolve(d) if d is not None else DEFAULT_ARCHIVE_DIR
        quota_mb = _get(archive, "quota_mb")
        # room for a full archive (it is pruned at its quota) plus the event log
        if quota_mb is not None:
            min_free_gb = float(quota_mb) / 1024 + EVENT_LOG_MIN_FREE_GB
        min_free_gb = float(_get(archive, "min_free_gb", default=min_free_gb))
    elif isinstance(archive, str):
        archive_dir = resolve(archive)
    else:  # archive off: the event log still needs room
        archive_dir = events_dir
        min_free_gb = EVENT_LOG_MIN_FREE_GB

    return replace(
        base,
        bundle_dir=resolve(bundle) if bundle is not None else None,
        backend=backend,
        need_cuda=need_cuda,
        camera_kind=camera_kind,
        camera_source=camera_source,
        camera_fps=float(camera_fps) if camera_fps is not None else None,
        gpio_chip=gpio_chip,
        gpio_lines=tuple(lines),
        plc_host=str(plc_host) if plc_host else None,
        plc_port=plc_port,
        plc_unit=plc_unit,
        plc_read_address=plc_addr,
        archive_dir=archive_dir,
        min_free_gb=min_free_gb,
        scheduler_mode=str(_get(data, "scheduler", default={}).get("mode", "time")),
        tolerance_ms=float(_get(data, "scheduler", default={}).get("tolerance_ms", 1.0)),
        rt_priority=_get(data, "line", default={}).get("rt_priority", 50),
        busy_wait_us=float(_get(data, "line", default={}).get("busy_wait_us", 1000.0)),
    )


def params_from_config(config_path: str | None, bundle_dir: str | None = None) -> DoctorParams:
    """Read CONFIG.yaml through ``edgekit.config.run.load_run_config`` (validated, defaults
    filled in, relative paths resolved) and map it to DoctorParams.

    A broken config does not stop the doctor: it becomes a failed ``config`` line and the
    other checks run with the Jetson-station defaults."""
    if config_path is None:
        params = DoctorParams()
    else:
        try:
            params = params_from_mapping(_load_run_mapping(config_path), config_path)
        except EdgekitError as exc:
            params = DoctorParams(config_path=config_path, config_error=str(exc))
    if bundle_dir is not None:
        params = replace(params, bundle_dir=Path(bundle_dir))
    return params


def _load_run_mapping(config_path: str) -> dict[str, Any]:
    """The run config as a plain mapping (typed model dump; raw YAML if this edgekit has no
    run-config model)."""
    try:
        from edgekit.config.run import load_run_config
    except ImportError:
        from edgekit.config.base import read_yaml

        return read_yaml(config_path)
    return load_run_config(config_path).model_dump(mode="python")


# ----------------------------------------------------------------------------- probes
class Probes:
    """Everything the checks read from the system. Tests subclass this with canned answers."""

    def python_version(self) -> tuple[int, int, int]:
        return sys.version_info[:3]

    def import_module(self, name: str) -> Any:
        """Import and return a module; any exception means 'not usable' (tensorrt raises OSError
        when its shared libraries are missing, not ImportError)."""
        return importlib.import_module(name)

    def cuda_versions(self) -> dict[str, Any]:
        """cuda-python's version and the CUDA driver's (cudaDriverGetVersion, e.g. 12060 = 12.6);
        DeviceError (with the pin) when cuda-python is missing."""
        import importlib.metadata as md

        from edgekit.compile.trt_build import import_cudart

        cudart = import_cudart()
        version = "?"
        for dist in ("cuda-python", "cuda-bindings"):
            try:
                version = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
        err, drv = cudart.cudaDriverGetVersion()
        return {"cuda_python": version, "driver": int(drv) if int(err) == 0 else None}

    def ort_providers(self) -> list[str]:
        import onnxruntime

        return list(onnxruntime.get_available_providers())

    def cv2_build_info(self) -> str:
        import cv2

        return cv2.getBuildInformation()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern, recursive=True))

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def which(self, cmd: str) -> str | None:
        return shutil.which(cmd)

    def run(self, argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
        """Run a command; (returncode, stdout+stderr). 127 if missing, 124 on timeout."""
        try:
            p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        except subprocess.TimeoutExpired:
            return 124, f"{argv[0]}: timed out after {timeout_s:g} s"
        return p.returncode, (p.stdout or "") + (p.stderr or "")

    def user(self) -> tuple[str, int, list[str]]:
        """(user name, uid, names of the groups this process has)."""
        import grp
        import pwd

        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        groups = []
        for gid in sorted(set(os.getgroups()) | {os.getegid()}):
            try:
                groups.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                groups.append(str(gid))
        return name, uid, groups

    def disk_free_bytes(self, path: str) -> int:
        return shutil.disk_usage(path).free

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK)

    def tcp_connect(self, host: str, port: int, timeout_s: float) -> float:
        """Open and close a TCP connection; returns the connect time in seconds (OSError on failure)."""
        t0 = time.monotonic()
        with socket.create_connection((host, port), timeout=timeout_s):
            return time.monotonic() - t0

    def modbus_read(self, host: str, port: int, unit: int, address: int, timeout_s: float) -> int:
        """Read one holding register with pymodbus 3.x; raises on any failure."""
        from pymodbus.client import ModbusTcpClient

        client = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0)
        try:
            if not client.connect():
                raise ConnectionError(f"cannot connect to {host}:{port}")
            # device_id= since pymodbus 3.10 (slave= before), the floor in pyproject.toml
            rr = client.read_holding_registers(address, count=1, device_id=unit)
            if rr.isError():
                raise ConnectionError(f"Modbus exception response: {rr}")
            return int(rr.registers[0])
        finally:
            client.close()

    def camera_measure(self, kind: str, source: str | int, seconds: float, timeout_s: float) -> tuple[int, float, tuple[int, ...]]:
        """Open a camera with OpenCV and read frames for ``seconds``.

        Returns (frames read, elapsed seconds, shape of the last frame). Raises RuntimeError if it
        cannot open or delivers nothing before ``timeout_s`` (a read that blocks forever is
        abandoned in its thread instead of hanging the doctor)."""
        import cv2

        result: dict[str, Any] = {}

        def work() -> None:
            api = {"v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER}.get(kind, cv2.CAP_ANY)
            src: str | int = source
            if isinstance(src, str) and src.isdigit():
                src = int(src)
            cap = cv2.VideoCapture(src, api)
            try:
                if not cap.isOpened():
                    result["error"] = f"cannot open {source!r} (OpenCV backend {kind})"
                    return
                ok, frame = cap.read()  # first frame: sensor start-up is not part of the rate
                if not ok or frame is None:
                    result["error"] = f"{source!r} opened but delivered no frame"
                    return
                n, shape = 0, tuple(frame.shape)
                t0 = time.monotonic()
                while time.monotonic() - t0 < seconds:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    n += 1
                    shape = tuple(frame.shape)
                result["value"] = (n, time.monotonic() - t0, shape)
            finally:
                cap.release()

        t = threading.Thread(target=work, name="doctor-camera", daemon=True)
        t.start()
        t.join(seconds + timeout_s)
        if t.is_alive():
            raise RuntimeError(f"{source!r} did not deliver frames within {seconds + timeout_s:g} s")
        if "error" in result:
            raise RuntimeError(result["error"])
        return result["value"]

    def timer_jitter(self, duration_ms: float, rt_priority: int | None, busy_wait_us: float,
                     timeout_s: float) -> dict[str, Any]:
        """Wake-up jitter of a process scheduled like the line process (SCHED_FIFO when allowed),
        measured in a child so doctor's own scheduling is untouched."""
        import json as _json
        import subprocess as _sp

        code = ("import json, os, sys\n"
                "from edgekit.runtime.clock import MonotonicClock, set_timer_slack\n"
                "from edgekit.runtime.lineproc import measure_jitter\n"
                "prio, busy, ms = json.loads(sys.argv[1])\n"
                "fifo = False\n"
                "if prio:\n"
                "    try:\n"
                "        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(prio))); fifo = True\n"
                "    except (OSError, AttributeError):\n"
                "        pass\n"
                "set_timer_slack(1)\n"
                "j = measure_jitter(MonotonicClock(int(busy * 1000)), ms)\n"
                "j['sched_fifo'] = fifo\n"
                "print(json.dumps(j))\n")
        out = _sp.run([sys.executable, "-c", code, _json.dumps([rt_priority, busy_wait_us, duration_ms])],
                      capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError((out.stderr.strip().splitlines() or ["no output"])[-1])
        return _json.loads(out.stdout)

    def gpio_chips(self) -> list[str]:
        return self.glob("/dev/gpiochip*")

    def gpio_chip_info(self, path: str) -> tuple[str, str, int]:
        """(name, label, number of lines) of a gpiochip via the libgpiod v2 bindings."""
        import gpiod

        if not gpiod.is_gpiochip_device(path):
            raise OSError(f"{path} is not a GPIO character device")
        with gpiod.Chip(path) as chip:
            info = chip.get_info()
            return info.name, info.label, info.num_lines

    def gpio_line_info(self, path: str, line: int | str) -> tuple[int, str, bool, str]:
        """(offset, name, used, consumer) of one line (offset or line name such as 'PAC.06')."""
        import gpiod

        with gpiod.Chip(path) as chip:
            li = chip.get_line_info(line)
            return li.offset, li.name or "", bool(li.used), li.consumer or ""


# ----------------------------------------------------------------------------- checks
def check_config(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "config"
    if params.config_path is None:
        return _skip(name, "no CONFIG given: checking the default Jetson station "
                           f"(camera {DEFAULT_CAMERA}, /dev/gpiochip0, TensorRT, bundle {DEFAULT_BUNDLE_DIR})")
    if params.config_error:
        return _fail(name, params.config_error.replace("\n", "; "), "fix the config (one line per problem above)")
    return _ok(name, f"{params.config_path} is valid")


def check_user(params: DoctorParams, probes: Probes) -> CheckResult:
    """Run as the service user: root passes every permission check the daemon would fail."""
    name = "user"
    user, uid, groups = probes.user()
    if uid == 0:
        return _fail(name, "running as root: device permissions are not being tested",
                     "run as the service user: sudo -u edgekit /opt/edgekit/venv/bin/edgekit doctor ...",
                     optional=True)
    need = [g for g, used in (("gpio", params.need_gpio), ("video", params.camera_kind in ("v4l2", "gstreamer")))
            if used]
    missing = [g for g in need if g not in groups]
    if missing:
        return _fail(name, f"{user} is not in group(s) {', '.join(missing)} (has: {', '.join(groups)})",
                     f"sudo usermod -aG {','.join(missing)} {user} (provision.sh does this for edgekit), "
                     "then log in again / restart the service")
    return _ok(name, f"{user} (groups: {', '.join(groups)})")


def check_python(params: DoctorParams, probes: Probes) -> CheckResult:
    v = probes.python_version()
    s = ".".join(map(str, v))
    if tuple(v[:2]) >= MIN_PYTHON:
        return _ok("python", f"Python {s}")
    return _fail("python", f"Python {s} is older than {MIN_PYTHON[0]}.{MIN_PYTHON[1]}",
                 "JetPack 6 ships Python 3.10: recreate the venv with /usr/bin/python3 (provision.sh)")


def _module_version(mod: Any) -> str:
    return str(getattr(mod, "__version__", None) or getattr(mod, "version", "") or "?")


def check_extras(params: DoctorParams, probes: Probes) -> list[CheckResult]:
    """One line per optional dependency; required ones depend on what the station uses."""
    wanted = [
        ("onnxruntime", True),
        ("cv2", True),
        ("gpiod", params.need_gpio),
        ("pymodbus", params.need_plc),
    ]  # tensorrt: its own check below (import + version against the bundle's engine)
    out = []
    for module, required in wanted:
        name = f"import {module}"
        try:
            mod = probes.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
            why = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
            need = "needed by this station" if required else "optional, not used by this station"
            out.append(_fail(name, f"{why} ({need})", FIX_FOR_MODULE[module], optional=not required))
            continue
        out.append(_ok(name, f"{module} {_module_version(mod)}"))
    return out


def check_ort_providers(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "onnxruntime providers"
    try:
        providers = probes.ort_providers()
    except Exception as exc:  # noqa: BLE001
        return _fail(name, f"onnxruntime unusable ({exc.__class__.__name__}: {exc})",
                     f"{PIP} onnxruntime (Jetson: onnxruntime-gpu for your JetPack)")
    gpu = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    detail = ", ".join(providers) or "none"
    if params.need_cuda and not gpu:
        return _fail(name, f"{detail} (no CUDA provider; the station needs the GPU)",
                     "pip's onnxruntime is CPU-only: install the onnxruntime-gpu wheel built for your JetPack "
                     "(Jetson AI Lab pypi index) into the venv, then re-run doctor",
                     optional=params.need_tensorrt)  # the TensorRT backend does not go through ORT
    return _ok(name, detail)


def _engine_tensorrt_version(manifest: dict[str, Any]) -> str | None:
    build = manifest.get("build") or {}
    v = build.get("tensorrt_version")
    if v:
        return str(v)
    for m in (manifest.get("models") or {}).values():
        if isinstance(m, dict) and m.get("tensorrt_version"):
            return str(m["tensorrt_version"])
    return None


def _read_manifest(params: DoctorParams, probes: Probes) -> dict[str, Any] | None:
    if params.bundle_dir is None:
        return None
    text = probes.read_text(str(Path(params.bundle_dir) / "manifest.json"))
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def check_tensorrt(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "tensorrt"
    optional = not params.need_tensorrt
    try:
        trt = probes.import_module("tensorrt")
        version = _module_version(trt)
    except Exception as exc:  # noqa: BLE001
        return _fail(name, f"import tensorrt failed ({exc.__class__.__name__})",
                     f"{TRT_INSTALL}; or use backend onnxruntime", optional=optional)
    from edgekit.compile.trt_build import check_trt_version

    try:
        verdict = check_trt_version(trt)  # JetPack 6.0 = 8.6 (explicit batch), 6.1/6.2 = 10.3
    except DeviceError as exc:
        return _fail(name, str(exc).split("; upgrade")[0], "flash JetPack 6.1 or 6.2 (TensorRT 10.3) or 6.0 (8.6) "
                     "with SDK Manager", optional=optional)
    manifest = _read_manifest(params, probes)
    want = _engine_tensorrt_version(manifest) if manifest else None
    if want is None:
        return _ok(name, f"{verdict} (bundle has no engine to compare)")
    # Serialized engines only load on the TensorRT version that built them (major.minor.patch).
    if want.split(".")[:3] != version.split(".")[:3]:
        return _fail(name, f"TensorRT {version} but the bundle's engine was built with {want}",
                     "rebuild the engine on this device (`edgekit build RUN_DIR --target jetson`) or "
                     "install the matching JetPack", optional=optional)
    return _ok(name, f"{verdict}; matches the bundle engine")


def check_cuda_python(params: DoctorParams, probes: Probes) -> CheckResult:
    """cuda-python is what the TensorRT backend allocates and copies with; its major version must
    not exceed the driver's CUDA (cuda-python 13 on JetPack 6's CUDA 12.6 driver fails with
    cudaErrorInsufficientDriver at the first call)."""
    from edgekit.compile.trt_build import CUDA_PYTHON_HINT, CUDA_PYTHON_PIN

    name = "cuda-python"
    optional = not params.need_tensorrt
    try:
        v = probes.cuda_versions()
    except Exception as exc:  # noqa: BLE001 - DeviceError (missing) or a broken install
        return _fail(name, f"not usable ({str(exc).splitlines()[0]})", f"{PIP} '{CUDA_PYTHON_PIN}'",
                     optional=optional)
    drv = v.get("driver")
    drv_s = f"{drv // 1000}.{drv % 1000 // 10}" if drv else "unknown (no GPU visible?)"
    major = str(v.get("cuda_python", "?")).split(".")[0]
    if drv and major.isdigit() and int(major) > drv // 1000:
        return _fail(name, f"cuda-python {v['cuda_python']} needs a CUDA {major} driver, this one is CUDA {drv_s}",
                     f"{PIP} '{CUDA_PYTHON_PIN}' ({CUDA_PYTHON_HINT.split('(', 1)[1].rstrip(')')})", optional=optional)
    return _ok(name, f"cuda-python {v['cuda_python']}, CUDA driver {drv_s}")


def check_cuda(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "cuda device"
    evidence = []
    jetson_nodes = [p for p in ("/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/nvmap") if probes.exists(p)]
    if jetson_nodes:
        evidence.append("Jetson iGPU (" + ", ".join(jetson_nodes) + ")")
    dgpu = [p for p in probes.glob("/dev/nvidia[0-9]*")]
    if dgpu:
        evidence.append("discrete GPU (" + ", ".join(dgpu) + ")")
    if not evidence and probes.which("nvidia-smi"):
        rc, out = probes.run(["nvidia-smi", "-L"], params.timeout_s)
        if rc == 0 and "GPU" in out:
            evidence.append(out.strip().splitlines()[0])
    ort_note = ""
    try:
        if "CUDAExecutionProvider" in probes.ort_providers():
            evidence.append("onnxruntime CUDA provider")
    except Exception as exc:  # noqa: BLE001 - the providers check reports it with its fix
        ort_note = f"; onnxruntime unusable ({exc.__class__.__name__})"
    if evidence:
        return _ok(name, "; ".join(evidence))
    return _fail(name, f"no CUDA device (/dev/nvhost-ctrl-gpu, /dev/nvidia*, nvidia-smi all absent){ort_note}",
                 "on a Jetson: flash JetPack 6 (SDK Manager), then run firmware_scripts/provision.sh (puts the "
                 "service user in the video group); elsewhere use backend onnxruntime with device cpu",
                 optional=not params.need_cuda)


def check_gstreamer(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "opencv gstreamer"
    try:
        info = probes.cv2_build_info()
    except Exception as exc:  # noqa: BLE001
        return _fail(name, f"cv2 unusable ({exc.__class__.__name__})", "install JetPack's python3-opencv",
                     optional=not params.need_gstreamer)
    line = next((ln for ln in info.splitlines() if ln.strip().startswith("GStreamer:")), "")
    if "YES" in line:
        return _ok(name, "OpenCV built with GStreamer")
    return _fail(name, "OpenCV built without GStreamer (pip's opencv-python wheels never have it)",
                 "use JetPack's python3-opencv: `pip uninstall opencv-python-headless` inside the venv "
                 "(created with --system-site-packages; provision.sh does both)",
                 optional=not params.need_gstreamer)


IMAGE_EXTS = ("png", "jpg", "jpeg", "bmp", "tif", "tiff")


def check_camera(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "camera"
    if params.camera_kind == "none" or params.camera_source is None:
        return _skip(name, "no camera in the config")
    src = params.camera_source
    if params.camera_kind == "v4l2" and isinstance(src, str) and src.startswith("/dev/") and not probes.exists(src):
        found = probes.glob("/dev/video*")
        return _fail(name, f"{src} does not exist" + (f" (found: {', '.join(found)})" if found else " (no /dev/video*)"),
                     "plug in the camera and check `v4l2-ctl --list-devices`; set source.device in the config")
    if params.camera_kind in ("file", "folder") and isinstance(src, str) and not probes.exists(src):
        return _fail(name, f"{params.camera_kind} {src} not found", "fix source.path in the config")
    if params.camera_kind == "folder":
        n = sum(len(probes.glob(f"{src}/**/*.{ext}")) for ext in IMAGE_EXTS)
        if n == 0:
            return _fail(name, f"folder {src} has no images ({', '.join(IMAGE_EXTS)})", "fix source.path")
        return _ok(name, f"folder {src}: {n} images (replay source, no camera rate to measure)")
    try:
        n, elapsed_s, shape = probes.camera_measure(params.camera_kind, src, params.camera_measure_s, params.timeout_s)
    except Exception as exc:  # noqa: BLE001
        fix = ("check the cable/driver with `v4l2-ctl -d DEV --all`; the service user needs the video group "
               "(provision.sh); stop other programs using the camera")
        if params.camera_kind == "gstreamer":
            fix = "test the pipeline with `gst-launch-1.0 ... ! fakesink`; OpenCV needs GStreamer (see above)"
        return _fail(name, str(exc), fix)
    fps = n / elapsed_s if elapsed_s > 0 else 0.0
    size = f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else "?"
    if params.camera_fps and fps < FPS_TOLERANCE * params.camera_fps:
        return _fail(name, f"{src}: {fps:.1f} fps measured < {params.camera_fps:g} fps configured ({size})",
                     "lower camera.fps, shorten the exposure, or use a USB3 port/CSI; "
                     "check `v4l2-ctl -d DEV --list-formats-ext` for the modes the camera supports")
    want = f" (configured {params.camera_fps:g})" if params.camera_fps else ""
    return _ok(name, f"{src}: {n} frames in {elapsed_s:.2f} s = {fps:.1f} fps{want}, {size}")


def _resolve_chip(chip: str, probes: Probes) -> tuple[str | None, str]:
    """Path of the chip named by path, 'gpiochipN' or label, resolved exactly as the runtime
    does (edgekit.runtime.gpiochip.resolve_chip, over the probes); (None, reason) if not found."""
    from edgekit.runtime.gpiochip import resolve_chip

    def info(path: str) -> tuple[str, str, int]:
        if not probes.exists(path):
            raise FileNotFoundError(path)
        try:
            return probes.gpio_chip_info(path)
        except ImportError as exc:
            raise OSError(str(exc)) from None
        except PermissionError:  # the chip exists; check_gpio reports the permission with its fix
            return os.path.basename(path), "(unreadable)", 0

    try:
        return resolve_chip(chip, "gpio", chips=probes.gpio_chips, info=info).path, ""
    except DeviceError as exc:
        return None, str(exc).split("; set chip")[0].removeprefix("gpio: ")


def check_gpio(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "gpio"
    if not params.need_gpio:
        return _skip(name, "no GPIO output/encoder in the config")
    chips = probes.gpio_chips()
    if not chips:
        return _fail(name, "no /dev/gpiochip* on this machine",
                     f"not a Jetson or the gpio driver is missing; {FIX_PROVISION}")
    path, why = _resolve_chip(str(params.gpio_chip), probes)
    if path is None:
        return _fail(name, f"{why} (have: {', '.join(chips)})",
                     "set the chip in the config to one from `gpiodetect` (Orin: tegra234-gpio or tegra234-gpio-aon)")
    try:
        cname, label, nlines = probes.gpio_chip_info(path)
    except ImportError:
        return _fail(name, "gpiod (libgpiod v2 bindings) not importable", f"{PIP} 'edgekit[jetson]'")
    except PermissionError:
        return _fail(name, f"{path}: permission denied",
                     "add the service user to the gpio group and install 99-edgekit-gpio.rules (provision.sh)")
    except Exception as exc:  # noqa: BLE001
        return _fail(name, f"{path}: {exc}", "check `gpiodetect`; install libgpiod v2 and its Python bindings")
    busy, details = [], []
    for line in params.gpio_lines:
        try:
            off, lname, used, consumer = probes.gpio_line_info(path, line)
        except Exception as exc:  # noqa: BLE001
            return _fail(name, f"{path} ({label}): line {line!r} not found ({exc.__class__.__name__})",
                         "use a line name or offset from firmware_scripts/pinmap/jetson-orin-40pin.yaml or `gpioinfo`")
        details.append(f"{lname or off}@{off}")
        if used:
            busy.append(f"{lname or off}@{off} used by {consumer or 'unknown'}")
    if busy:
        return _fail(name, f"{path} ({label}): " + "; ".join(busy),
                     "stop the other user of the line (`gpioinfo` shows the consumer; another edgekit still running?)")
    lines_s = f", lines free: {', '.join(details)}" if details else ""
    return _ok(name, f"{path} {cname} ({label}, {nlines} lines){lines_s}")


def check_plc(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "plc"
    if not params.need_plc:
        return _skip(name, "no PLC in the config")
    target = f"{params.plc_host}:{params.plc_port}"
    try:
        connect_s = probes.tcp_connect(str(params.plc_host), params.plc_port, params.timeout_s)
    except OSError as exc:
        return _fail(name, f"{target} unreachable ({exc.__class__.__name__}: {exc})",
                     "check the cable/IP (`ping`), that the PLC's Modbus TCP server is enabled on that port, "
                     "and firewalls")
    detail = f"{target} reachable ({connect_s * 1000:.1f} ms)"
    if params.plc_read_address is None:
        return _ok(name, detail)
    try:
        value = probes.modbus_read(str(params.plc_host), params.plc_port, params.plc_unit,
                                   params.plc_read_address, params.timeout_s)
    except ImportError:
        return _fail(name, detail + "; pymodbus not installed, no Modbus read", f"{PIP} 'edgekit[plc]'", optional=True)
    except Exception as exc:  # noqa: BLE001
        return _fail(name, detail + f"; Modbus read of holding register {params.plc_read_address} "
                     f"(unit {params.plc_unit}) failed: {exc}",
                     "check unit id and that the PLC maps the edgekit register block (docs/plc.md)", optional=True)
    return _ok(name, detail + f"; holding register {params.plc_read_address} = {value}")


def check_disk(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "archive disk"
    if params.archive_dir is None:
        return _skip(name, "archive disabled")
    d = Path(params.archive_dir)
    probe_dir = d
    while not probes.exists(str(probe_dir)) and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    note = "" if probe_dir == d else f" (does not exist yet; checked {probe_dir})"
    try:
        free_gb = probes.disk_free_bytes(str(probe_dir)) / 1e9
    except OSError as exc:
        return _fail(name, f"{d}: {exc}", "create the state dir (provision.sh) or fix archive.dir")
    if probe_dir == d and not probes.writable(str(d)):
        return _fail(name, f"{d} is not writable by this user",
                     "chown it to the service user (provision.sh: chown -R edgekit: /var/lib/edgekit)")
    if free_gb < params.min_free_gb:
        return _fail(name, f"{d}: {free_gb:.1f} GB free < {params.min_free_gb:g} GB{note}",
                     "free space, move archive.dir to an NVMe/SD with room, or lower archive retention")
    return _ok(name, f"{d}: {free_gb:.1f} GB free{note}")


def check_clock(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "clock sync"
    if not probes.which("timedatectl"):
        return _fail(name, "timedatectl not available: cannot tell if the clock is synchronised",
                     "install systemd-timesyncd or chrony; event timestamps need a synced clock", optional=True)
    rc, out = probes.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], params.timeout_s)
    value = out.strip().splitlines()[-1].strip() if out.strip() else ""
    if rc == 0 and value == "yes":
        return _ok(name, "NTP synchronised")
    if rc == 0 and value == "no":
        return _fail(name, "clock not NTP-synchronised (Jetsons have no RTC battery on some carriers)",
                     "`sudo timedatectl set-ntp true` and point /etc/systemd/timesyncd.conf NTP= at the plant "
                     "NTP server", optional=True)
    first = out.strip().splitlines()[0][:80] if out.strip() else "no output"
    return _fail(name, f"cannot query timedatectl (rc {rc}: {first})",
                 "systemd not running here (container?); check the clock on the device", optional=True)


def check_pulse_timing(params: DoctorParams, probes: Probes) -> CheckResult:
    """Wake-up jitter of a line-process-like child against ``scheduler.tolerance_ms``."""
    name = "pulse timing"
    from edgekit.runtime.lineproc import PLC_FIX, RT_FIX, describe_jitter

    j = probes.timer_jitter(params.jitter_probe_ms, params.rt_priority, params.busy_wait_us,
                            timeout_s=params.jitter_probe_ms / 1e3 + 20.0)
    detail = describe_jitter(j, j.get("sched_fifo"), requested=bool(params.rt_priority))
    if j["p99_s"] * 1e3 <= params.tolerance_ms:
        return _ok(name, detail + f" (tolerance {params.tolerance_ms:g} ms)")
    if params.scheduler_mode == "plc":
        return _ok(name, detail + " — above tolerance, but the PLC times the reject (scheduler.mode: plc)")
    hint = RT_FIX
    if (j.get("late_over_100us_by_cause") or {}).get("hypervisor"):
        hint = ("this machine's CPU is taken away by its hypervisor (a VM): use a dedicated, not overcommitted "
                f"core or bare metal, or {PLC_FIX}")
    return _fail(name, detail + f" > scheduler.tolerance_ms {params.tolerance_ms:g} ms: reject pulses may land late",
                 hint, optional=True)


def check_bundle(params: DoctorParams, probes: Probes) -> CheckResult:
    name = "bundle"
    if params.bundle_dir is None:
        return _skip(name, "no bundle in the config")
    from edgekit.bundle.io import load_bundle

    try:
        b = load_bundle(params.bundle_dir)
    except EdgekitError as exc:
        return _fail(name, str(exc), "install a bundle: firmware_scripts/install-bundle.sh BUNDLE_DIR")
    return _ok(name, f"{params.bundle_dir}: {b.bundle_id} ({b.method}), {len(b.manifest['files'])} files verified")


def check_platform(params: DoctorParams, probes: Probes) -> CheckResult:
    """Jetson model and L4T release (informational; a dev box gets a warning)."""
    name = "platform"
    model = (probes.read_text("/proc/device-tree/model") or "").strip("\x00\n ")
    release = (probes.read_text("/etc/nv_tegra_release") or "").splitlines()
    l4t = release[0].strip() if release else ""
    if "jetson" in model.lower() or l4t:
        return _ok(name, f"{model or 'Jetson'}; {l4t or 'L4T release unknown'}")
    return _fail(name, f"not a Jetson ({platform.machine()} {platform.system()} {platform.release()})",
                 "fine for development; on the line run doctor on the Jetson", optional=True)


CHECKS: tuple[Callable[[DoctorParams, Probes], CheckResult | list[CheckResult]], ...] = (
    check_config, check_platform, check_user, check_python, check_extras, check_ort_providers, check_tensorrt,
    check_cuda_python, check_cuda, check_gstreamer, check_camera, check_gpio, check_plc, check_disk, check_clock, check_pulse_timing,
    check_bundle,
)


def run_checks(params: DoctorParams, probes: Probes | None = None,
               checks: Sequence[Callable[..., Any]] = CHECKS) -> list[CheckResult]:
    """Run every check; an exception inside a check becomes a failed line, never a crash."""
    probes = probes or Probes()
    results: list[CheckResult] = []
    for check in checks:
        label = check.__name__.removeprefix("check_")
        try:
            r = check(params, probes)
        except Exception as exc:  # noqa: BLE001
            r = _fail(label, f"check crashed: {exc.__class__.__name__}: {exc}",
                      "run `edgekit --debug doctor` and report the traceback")
        results.extend(r if isinstance(r, list) else [r])
    return results


# ----------------------------------------------------------------------------- report
@dataclass
class Report:
    """All results plus the context, printable as text or JSON."""

    results: list[CheckResult]
    params: DoctorParams
    host: str = field(default_factory=platform.node)

    @property
    def failures(self) -> int:
        return sum(r.status == "fail" for r in self.results)

    @property
    def warnings(self) -> int:
        return sum(r.status == "warn" for r in self.results)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "edgekit_version": __version__,
            "host": self.host,
            "config": self.params.config_path,
            "ok": self.ok,
            "failures": self.failures,
            "warnings": self.warnings,
            "checks": [dict(asdict(r), status=r.status) for r in self.results],
        }

    def to_text(self, unicode: bool = True) -> str:
        marks = {"ok": "✔", "fail": "✘", "warn": "!", "skip": "–"} if unicode else \
                {"ok": "OK  ", "fail": "FAIL", "warn": "WARN", "skip": "SKIP"}
        width = max((len(r.name) for r in self.results), default=10)
        lines = [f"edgekit doctor {__version__} on {self.host}"
                 + (f" (config {self.params.config_path})" if self.params.config_path else "")]
        for r in self.results:
            lines.append(f"{marks[r.status]} {r.name:<{width}}  {r.detail}")
            if r.status in ("fail", "warn") and r.fix:
                lines.append(" " * (len(marks[r.status]) + 1 + width + 2) + f"fix: {r.fix}")
        ok = sum(r.status == "ok" for r in self.results)
        lines.append(f"{ok} ok, {self.warnings} warning(s), {self.failures} failure(s)")
        return "\n".join(lines)


def doctor(config_path: str | None = None, bundle_dir: str | None = None, bundle_only: bool = False,
           probes: Probes | None = None) -> Report:
    """Run the checklist for CONFIG (default: /etc/edgekit/config.yaml when it exists, else the
    default Jetson station) and return the report."""
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = str(DEFAULT_CONFIG)
    params = params_from_config(config_path, bundle_dir)
    checks = (check_config, check_bundle) if bundle_only else CHECKS
    from edgekit.doctor_outputs import check_outputs_reachable  # Modbus server / OPC UA / MQTT outputs

    return Report(run_checks(params, probes, checks) + ([] if bundle_only else check_outputs_reachable(config_path)),
                  params)


def stdout_is_unicode() -> bool:
    enc = (getattr(sys.stdout, "encoding", None) or "").lower()
    return enc.replace("-", "") in ("utf8", "utf16", "utf32")
