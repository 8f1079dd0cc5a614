"""Typed daemon config (``edgekit run CONFIG.yaml``; ``--check`` validates only).

Each camera, backend and output plug-in declares its own config model with a literal ``type``;
the unions here select schema and class together (discriminated unions, as in Frigate's
detector configs, but with explicit registration). Unknown keys and bad values become one line
per problem naming file, key path, value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from edgekit.config.base import StrictModel, parse_model, read_yaml
from edgekit.errors import ConfigError
from edgekit.runtime.backends.ort import OrtBackendConfig
from edgekit.runtime.backends.trt import TrtBackendConfig
from edgekit.runtime.capture.files import FolderCameraConfig, VideoCameraConfig
from edgekit.runtime.capture.opencv import CsiCameraConfig, GstreamerCameraConfig, UsbCameraConfig
from edgekit.runtime.encoder import GpiodEncoderConfig, SimEncoderConfig
from edgekit.runtime.outputs.gpio import FakeGpioOutputConfig, GpiodOutputConfig
from edgekit.runtime.outputs.jetson import JetsonGpioOutputConfig
from edgekit.runtime.outputs.modbus import ModbusOutputConfig
from edgekit.runtime.outputs.modbus_server import ModbusServerOutputConfig
from edgekit.runtime.outputs.mqtt import MqttOutputConfig
from edgekit.runtime.outputs.opcua import OpcUaOutputConfig
from edgekit.sim.camera import SimCameraConfig
from edgekit.sim.faults import FaultyBackendConfig
from edgekit.ui.config import UiConfig

SourceConfig = Annotated[
    FolderCameraConfig | VideoCameraConfig | UsbCameraConfig | CsiCameraConfig | GstreamerCameraConfig
    | SimCameraConfig,
    Field(discriminator="type"),
]
BackendConfig = Annotated[OrtBackendConfig | TrtBackendConfig | FaultyBackendConfig, Field(discriminator="type")]
OutputConfig = Annotated[
    FakeGpioOutputConfig | GpiodOutputConfig | JetsonGpioOutputConfig | ModbusOutputConfig
    | ModbusServerOutputConfig | MqttOutputConfig | OpcUaOutputConfig,
    Field(discriminator="type"),
]
EncoderConfig = Annotated[SimEncoderConfig | GpiodEncoderConfig, Field(discriminator="type")]


class DecisionConfig(StrictModel):
    # band overrides; None = the bundle's calibrated edges (an override is logged at startup)
    accept_edge: float | None = None
    reject_edge: float | None = None
    review_as: Literal["review", "reject", "accept"] = "review"
    failsafe_as: Literal["reject", "review"] = "reject"  # never accept a part nobody looked at
    deadline_ms: float = Field(150.0, gt=0, le=60000)  # capture → decision, per part


class SchedulerConfig(StrictModel):
    # plc: no local reject pulse; each result carries the part's latched encoder count and its
    # target count (ENCODER_COUNT / TARGET_COUNT, docs/plc.md) and the PLC's shift register fires
    mode: Literal["time", "encoder", "plc"] = "time"
    delay_ms: float = Field(300.0, ge=0, le=600000)  # time mode: camera → reject station
    distance_counts: int = Field(0, ge=0)  # encoder mode: camera → reject station, in ticks
    pulse_ms: float = Field(20.0, gt=0, le=10000)
    review_pulse_ms: float | None = Field(None, gt=0, le=10000)
    overlap: Literal["merge", "extend"] = "merge"
    # placement a pulse may miss its target by before it counts as late (and the startup jitter
    # check warns); 1 ms = 1 mm at 1 m/s
    tolerance_ms: float = Field(1.0, gt=0, le=1000)


class PreprocessConfig(StrictModel):
    max_pixels: int = Field(40_000_000, ge=64)
    expect_width: int | None = Field(None, ge=8)
    expect_height: int | None = Field(None, ge=8)


class QueueConfig(StrictModel):
    frames: int = Field(4, ge=1, le=1024)  # capture → inference; full = fail-safe, never unbounded
    events: int = Field(10000, ge=10)


class EventsConfig(StrictModel):
    path: str = "events.db"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_rows: int | None = Field(5_000_000, ge=100)
    max_age_days: float | None = Field(90.0, gt=0)
    max_mb: float | None = Field(2048.0, gt=0)  # pages in use; oldest rows deleted beyond it
    batch_ms: float = Field(20.0, ge=0, le=5000)  # group-commit window


class ArchiveConfig(StrictModel):
    enabled: bool = False
    dir: str = "archive"
    quota_mb: float = Field(1024.0, gt=0)
    kinds: tuple[Literal["reject", "review", "failsafe"], ...] = ("reject", "review", "failsafe")
    format: Literal["jpg", "png"] = "jpg"
    heatmap: bool = True
    queue: int = Field(32, ge=1)  # full queue: the image is skipped and counted, never blocks


class MetricsConfig(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)  # 0 = any free port (tests)


class HealthConfig(StrictModel):
    heartbeat_period_ms: float = Field(500.0, gt=0)
    stall_s: float = Field(5.0, gt=0)  # no progress with parts pending → unhealthy, heartbeat stops
    camera_retry_initial_s: float = Field(0.2, gt=0)
    camera_retry_max_s: float = Field(10.0, gt=0)
    shutdown_drain_s: float = Field(5.0, ge=0, le=600)  # encoder mode: wait for pending pulses


class LineConfig(StrictModel):
    # SCHED_FIFO priority of the line process (pulse timing); None = normal scheduling.
    # Needs RLIMIT_RTPRIO >= this (edgekit.service: LimitRTPRIO=50, no capability); refused → a
    # startup note, pulses still fire with normal priority.
    rt_priority: int | None = Field(50, ge=1, le=99)
    # the line process polls the clock (without sleeping) this long before each edge: a sleeping
    # (halted) CPU wakes late on VMs and in deep idle states
    busy_wait_us: float = Field(1000.0, ge=0, le=5000)
    # wake-up jitter measured at startup (reported, metric edgekit_timer_jitter_seconds; warns when
    # its p99 exceeds scheduler.tolerance_ms); 0 = skip
    jitter_probe_ms: float = Field(300.0, ge=0, le=10000)


class LogConfig(StrictModel):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    decisions: bool = False  # one log line per committed decision (after it is in the event log)


class RunConfig(StrictModel):
    bundle: str
    source: SourceConfig
    backend: BackendConfig = OrtBackendConfig()
    decision: DecisionConfig = DecisionConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    encoder: EncoderConfig | None = None
    outputs: list[OutputConfig] = Field(default_factory=lambda: [FakeGpioOutputConfig()])
    preprocess: PreprocessConfig = PreprocessConfig()
    queues: QueueConfig = QueueConfig()
    events: EventsConfig = EventsConfig()
    archive: ArchiveConfig = ArchiveConfig()
    metrics: MetricsConfig = MetricsConfig()
    health: HealthConfig = HealthConfig()
    line: LineConfig = LineConfig()
    log: LogConfig = LogConfig()
    ui: UiConfig = UiConfig()  # operator page (edgekit/ui, extra [ui])
    watch_bundle: bool = False  # reload when bundle/manifest.json changes (besides SIGHUP)
    # public keys (NAME.pub files, or folders of *.pub; relative to this file) whose signature
    # (manifest.sig) a bundle must carry to be loaded, at start and on every hot swap; empty: any
    # intact bundle is loaded (warned once at start). edgekit keys new / build --sign KEY
    trust: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.scheduler.mode in ("encoder", "plc") and self.encoder is None:
            raise ValueError(f"scheduler.mode '{self.scheduler.mode}' needs an encoder section")
        if self.scheduler.mode == "plc" and not any(o.type.startswith("modbus") for o in self.outputs):
            raise ValueError("scheduler.mode 'plc' needs a Modbus output that carries each result's target count "
                             "to the PLC; add an output of type modbus (docs/plc-timed.md)")
        if self.source.type == "sim" and (self.encoder is None or self.encoder.type != "sim"):
            raise ValueError("source.type 'sim' needs encoder: {type: sim, speed_mm_s: ..., ticks_per_mm: ...}")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"outputs: names must be unique, got {names}")
        if self.scheduler.mode == "time" and self.decision.deadline_ms >= self.scheduler.delay_ms > 0:
            raise ValueError(f"decision.deadline_ms={self.decision.deadline_ms} must be below "
                             f"scheduler.delay_ms={self.scheduler.delay_ms} or parts pass the reject station undecided")
        return self


def resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make relative paths in the config relative to the config file's directory."""

    def fix(p: str) -> str:
        return p if "://" in p or Path(p).is_absolute() else str((base / p).resolve())

    upd: dict[str, Any] = {"bundle": fix(cfg.bundle)}
    if hasattr(cfg.source, "path") and cfg.source.type in ("folder", "video"):
        upd["source"] = cfg.source.model_copy(update={"path": fix(cfg.source.path)})
    if cfg.source.type == "sim":
        upd["source"] = cfg.source.model_copy(update={"dataset": fix(cfg.source.dataset)})
    upd["events"] = cfg.events.model_copy(update={"path": fix(cfg.events.path)})
    upd["trust"] = [fix(t) for t in cfg.trust]
    upd["archive"] = cfg.archive.model_copy(update={"dir": fix(cfg.archive.dir)})
    # files an output keeps (MQTT outbox, OPC UA certificates) are relative to the config's directory
    keys = ("outbox_path", "password_file", "cert_dir", "trusted_clients_dir")
    upd["outputs"] = [o.model_copy(update={k: fix(getattr(o, k)) for k in keys if getattr(o, k, None)})
                      for o in cfg.outputs]
    return cfg.model_copy(update=upd)


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, validate and resolve a run config; ``overrides`` are merged on top (dotted keys
    allowed: ``{"source.rate_hz": 5}``)."""
    p = Path(path)
    data = read_yaml(p)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    cfg = parse_model(RunConfig, data, str(p))
    return resolve_paths(cfg, p.parent)


def parse_run_config(data: dict[str, Any], source: str = "<run config>", base: Path | None = None) -> RunConfig:
    """Validate a run config given as a dict (API use); paths resolved against ``base``."""
    cfg = parse_model(RunConfig, data, source)
    return resolve_paths(cfg, base or Path.cwd())


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating intermediate mappings; a numeric part indexes a
    list (``outputs.0.chip``)."""
    parts = key.split(".")
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ConfigError(f"override {key}: {part} is not an index of the {len(cur)}-item list "
                                  f"{'.'.join(parts[:i])}")
            if last:
                cur[int(part)] = value
                return
            cur = cur[int(part)]
            continue
        if not isinstance(cur, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            cur[part] = value
            return
        if cur.get(part) is None:
            cur[part] = {}
        cur = cur[part]
