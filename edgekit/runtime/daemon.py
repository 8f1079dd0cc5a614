"""The inspection daemon: wires the stages, owns the bounded queues, threads, deadlines,
watchdogs and shutdown order. Nothing else in the runtime knows about threads or YAML.

Threads:
  capture   camera.read() → admit (deadline registered) → frames queue (bounded)
  infer     preprocess → backend → score → decision (one part at a time, current bundle)
  line      deadlines (fail-safe) and the "alive" beat to the line process
  line-rx   pulses fired / output errors reported by the line process
  events    group commits to SQLite, then the "decision" log line (reported = durable)
  archive   reject-frame images under a disk quota (queue full: skipped, counted)
  metrics   Prometheus /metrics and /healthz on 127.0.0.1
The line process (``lineproc``) owns the output lines, the encoder-or-clock pulse timeline and
the heartbeat, with its own GIL and real-time priority, so pulse timing does not depend on what
this process is doing. The main thread (``run_cli``) handles signals, sd_notify readiness and
watchdog and SIGHUP reloads.

Every admitted part is decided exactly once: by its result, or by its deadline (fail-safe)."""

from __future__ import annotations

import heapq
import logging
import math
import os
import queue
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle.io import Bundle, load_bundle
from edgekit.config.run import RunConfig, load_run_config, parse_run_config
from edgekit.errors import BundleError, ConfigError, DataError, DeviceError, EdgekitError
from edgekit.runtime.archive import Archive
from edgekit.runtime.backends import BACKENDS, Backend
from edgekit.runtime.capture import CAMERAS, Camera
from edgekit.runtime.capture.base import IDLE
from edgekit.runtime.decision import Band, Decider
from edgekit.runtime.encoder import Encoder, RemoteEncoder, make_encoder
from edgekit.runtime.events import EventLog, decision_row
from edgekit.runtime.lineproc import LineProcess
from edgekit.runtime.logs import emit, setup_logging
from edgekit.runtime.metrics import Metrics, MetricsServer
from edgekit.runtime.outputs import OUTPUTS, Output
from edgekit.runtime.outputs.gpio import FakeGpioChip
from edgekit.runtime.outputs.modbus import ACK_MISSED
from edgekit.runtime.preprocess import Preprocessor
from edgekit.runtime.scheduler import RejectScheduler
from edgekit.runtime.score import Scorer
from edgekit.runtime.sdnotify import SdNotifier
from edgekit.runtime.types import Decision, Frame

_STOP = object()


@dataclass(frozen=True)
class Pipeline:
    """The stages that depend on the bundle; swapped as a whole on reload."""

    bundle: Bundle
    preprocessor: Preprocessor
    backend: Backend
    scorer: Scorer
    decider: Decider


class PartTracker:
    """Parts admitted but not yet decided, with their deadlines (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, Frame] = {}
        self._heap: list[tuple[int, int]] = []

    def add(self, frame: Frame, deadline_ns: int) -> None:
        with self._lock:
            self._pending[frame.part_id] = frame
            heapq.heappush(self._heap, (deadline_ns, frame.part_id))

    def is_pending(self, part_id: int) -> bool:
        with self._lock:
            return part_id in self._pending

    def take(self, part_id: int) -> Frame | None:
        """Claim a part for deciding; None if it was already decided (e.g. by its deadline)."""
        with self._lock:
            return self._pending.pop(part_id, None)

    def expired(self, now_ns: int) -> list[Frame]:
        """Claim every pending part whose deadline has passed."""
        out = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now_ns:
                _, pid = heapq.heappop(self._heap)
                f = self._pending.pop(pid, None)
                if f is not None:
                    out.append(f)
        return out

    def next_deadline(self) -> int | None:
        with self._lock:
            while self._heap and self._heap[0][1] not in self._pending:
                heapq.heappop(self._heap)
            return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def _reason(error: str) -> str:
    return error.split(":", 1)[0].strip() or "bad_frame"


class Daemon:
    """One inspection line. Construct (no I/O), ``start()``, then ``wait()`` / ``stop()``.

    Stage objects may be injected (tests, simulator); otherwise they are built from ``cfg``.

    Args:
        cfg: validated RunConfig (paths resolved).
        on_decision: called in the events thread for every decision after it is committed.
    """

    def __init__(self, cfg: RunConfig, *, camera: Camera | None = None, backend: Backend | None = None,
                 encoder: Encoder | None = None, on_decision: Any = None,
                 logger: logging.Logger | None = None) -> None:
        self.cfg = cfg
        self.log = logger or logging.getLogger("edgekit.runtime")
        self.metrics = Metrics()
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        # a simulated belt is a pure function of time, usable in both processes; a real encoder
        # input belongs to the line process, which streams its count here (RemoteEncoder)
        if encoder is not None:
            self.encoder = encoder
        elif cfg.encoder is None:
            self.encoder = None
        elif cfg.encoder.type == "sim":
            self.encoder = make_encoder(cfg.encoder)
        else:
            self.encoder = RemoteEncoder()
        self.camera = camera or self._make_camera()
        self._backend_given = backend
        # output plug-ins are built here only to check names and capabilities; the line process
        # builds its own instances from the same configs and drives them
        self.output_specs: list[Output] = [OUTPUTS.get(o.type)(o) for o in cfg.outputs]
        s = cfg.scheduler
        self.scheduler = RejectScheduler(s.mode, s.distance_counts, s.delay_ms, s.pulse_ms, s.review_pulse_ms)
        self.line: LineProcess | None = None
        self.tracker = PartTracker()
        ev = cfg.events
        self.event_log = EventLog(ev.path, ev.synchronous, ev.max_rows, ev.max_age_days, max_mb=ev.max_mb)
        self.archive = Archive(cfg.archive) if cfg.archive.enabled else None
        self.on_decision = on_decision
        self.pipeline: Pipeline | None = None
        self.notes: list[str] = []
        self._frames_q: queue.Queue[Any] = queue.Queue(maxsize=cfg.queues.frames)
        self._slot = threading.Semaphore(1)  # unpaced replay: one frame in inference at a time
        self._events_q: queue.Queue[Any] = queue.Queue(maxsize=cfg.queues.events)
        self._line_cv = threading.Condition()
        self._stop_capture = threading.Event()
        self._stop_line = threading.Event()
        self._source_done = threading.Event()
        self._stopped = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._failsafe: Counter[str] = Counter()
        self._stage_s: dict[str, deque[float]] = {}
        self._pulses: Counter[str] = Counter()
        self._output_errors: Counter[str] = Counter()
        self._late_by_cause: Counter[str] = Counter()
        self._encoder_faults = 0
        self._encoder_lost = 0
        # (part_id, role, target_ns or None, t_ns, count, merged, late cause) of every pulse start
        self.pulse_timing: deque[tuple[Any, ...]] = deque(maxlen=200_000)
        self.line_info: dict[str, Any] = {}
        self._frames = 0
        self._frames_missed = 0
        self._reconnects = 0
        self._committed = 0
        self._last_progress_ns = time.monotonic_ns()
        self._busy_since_ns: int | None = None
        self._deadline_ns = int(cfg.decision.deadline_ms * 1e6)
        self._work_ns = 0
        self._metrics_server: MetricsServer | None = None
        self.metrics_port: int | None = None
        self._ui: Any = None  # operator page (edgekit.ui), own threads; reads the event log
        self.ui_url: str | None = None
        self.fatal: BaseException | None = None
        self._started = False
        self._unpaced = False
        self._swap_lock = threading.Lock()
        self._enabled = True  # Daemon.control enable/disable: disabled = rejects logged, not pulsed
        self._suppressed: Counter[str] = Counter()  # pulses not fired while disabled, by role
        self._output_stats: dict[str, dict[str, float]] = {}  # each output's last ("stats", ...) report
        self._early_notes: list[tuple[str, str]] | None = []  # notes made before the event log is open
        self._trust: list[Any] = []  # trusted public keys (cfg.trust), read in start()
        self._acks_missed: Counter[str] = Counter()  # results a PLC did not acknowledge, by output

    # ------------------------------------------------------------------ construction
    def _make_camera(self) -> Camera:
        cls = CAMERAS.get(self.cfg.source.type)
        if getattr(cls, "needs_encoder", False):
            return cls(self.cfg.source, encoder=self.encoder)
        return cls(self.cfg.source)

    def build_pipeline(self, bundle_dir: str | Path, backend: Backend | None = None) -> Pipeline:
        """Load and verify a bundle (signature too when the config has a trust list) and build the
        stages that depend on it (file I/O here only)."""
        bundle = load_bundle(bundle_dir, trust=self._trust)
        bcfg = self.cfg.backend
        if backend is None:
            cls = BACKENDS.get(bcfg.type)
            info = BACKENDS.info(bcfg.type)
            prec = getattr(bcfg, "precision", None)
            if prec is not None and prec not in info.get("precisions", (prec,)):
                raise ConfigError(f"backend {bcfg.type} cannot run precision {prec!r} "
                                  f"(supports {', '.join(info['precisions'])})")
            backend = cls(bcfg)
        backend.load(bundle)
        d = self.cfg.decision
        self._warm_up(backend, bundle)
        key = getattr(bcfg, "precision", None) or "fp32"
        if bcfg.type == "tensorrt":
            key = f"trt-{key}"
        band = Band.resolve(bundle.thresholds, d.accept_edge, d.reject_edge,
                            model=bundle.models.get(key) or bundle.models.get(key.removeprefix("trt-")))
        p = self.cfg.preprocess
        expect = (p.expect_height, p.expect_width) if p.expect_height and p.expect_width else None
        pre = Preprocessor(bundle.preprocess, p.max_pixels, expect)
        return Pipeline(bundle, pre, backend, Scorer(), Decider(band, d.review_as, d.failsafe_as))

    @staticmethod
    def _warm_up(backend: Backend, bundle: Bundle) -> None:
        """One inference on a blank tile at load time: the first real part must not pay for
        kernel selection and memory allocation (hundreds of ms on a CPU)."""
        from edgekit.runtime.types import Batch

        size = bundle.preprocess.size
        tiles = np.zeros((1, size, size, 3), np.uint8)
        try:
            backend.infer(Batch(Frame(-1, "warm-up", time.monotonic_ns(), tiles[0]), tiles, {}))
        except Exception as exc:  # a model that cannot run a blank tile will not run parts either
            raise BundleError(f"{bundle.path}: warm-up inference failed ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); rebuild the bundle") from None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Load the bundle, open log, outputs, encoder and camera, start the threads."""
        self._trust = self._load_trust()
        self.pipeline = self.build_pipeline(self.cfg.bundle, self._backend_given)
        self._publish_bundle(self.pipeline)
        self.metrics.precreate([self.camera.name], [o.name for o in self.output_specs],
                               set().union(*(o.roles() for o in self.output_specs)) if self.output_specs else set(),
                               [o.name for o in self.cfg.outputs if o.type == "modbus"])
        band = self.pipeline.decider.band
        if band.source == "config":
            self.notes.append(f"decision band overridden by config: accept_edge={band.accept_edge} "
                              f"reject_edge={band.reject_edge} (bundle: {self.pipeline.bundle.thresholds})")
        for o in self.output_specs:
            if not type(o).can_pulse and "reject" in o.roles():
                self.notes.append(f"output {o.name} cannot time pulses; the PLC times the reject from the result")
        self._check_capabilities()
        if os.environ.get("INVOCATION_ID"):  # started by systemd: the unit's IPAddressAllow applies
            from edgekit.runtime.netpolicy import outside_unit_notes

            self.notes += outside_unit_notes(self.cfg)
        if self.cfg.metrics.enabled:
            # the port is taken before any output opens: a second daemon on a port in use stops
            # here with one line (it must not run without metrics, nor touch the first's lines)
            self._metrics_server = MetricsServer(self.metrics, self.health, self.cfg.metrics.host, self.cfg.metrics.port)
            self.metrics_port = self._metrics_server.bind()
        self.line = LineProcess(self._line_spec(), self._on_line_message)
        try:
            self.notes += self.line.start()
        except BaseException:
            self._stop_metrics()
            raise
        self._timer_check(self.line.info)
        try:
            self.event_log.open()
            self.event_log.start_run(self.run_id, self.pipeline.bundle.bundle_id, self.cfg.model_dump(mode="json"),
                                     self.notes)
            early, self._early_notes = self._early_notes or [], None
            for kind, msg in early:
                self._events_note(kind, msg)
            self.camera.open()
        except BaseException:
            self.line.stop(0.0)
            self.event_log.close()
            self._stop_metrics()
            raise
        if self.cfg.ui.enabled:  # before the belt moves: its start-up must not delay the first parts
            from edgekit.ui import start_ui

            self._ui, ui_note = start_ui(self)
            if ui_note:
                self.notes.append(ui_note)
            else:
                self.ui_url = self._ui.url
        if self.encoder is not None:
            # a simulated belt starts moving now, once the slow parts of start-up are done,
            # and the line process gets the same origin
            self.encoder.open()
            t0 = getattr(self.encoder, "t0_ns", None)
            if t0 is not None:
                self.line.set_encoder_origin(t0)
        if self.archive is not None:
            self.archive.open()
            self.metrics.watch_archive(self.archive)
        if self._metrics_server is not None:
            self._metrics_server.start()
        for n in self.notes:
            emit(self.log, logging.WARNING, "startup_note", note=n)
        emit(self.log, logging.INFO, "started", run_id=self.run_id, bundle_id=self.pipeline.bundle.bundle_id,
             model_id=self.pipeline.backend.model_id, accept_edge=band.accept_edge, reject_edge=band.reject_edge,
             band_source=band.source, source=self.camera.name, mode=self.cfg.scheduler.mode,
             events=str(self.event_log.path), metrics_port=self.metrics_port, ui_url=self.ui_url, line_pid=self.line.pid,
             signed_by=self.pipeline.bundle.signed_by,
             config=self.cfg.model_dump(mode="json"))
        self._unpaced = not (self.camera.nominal_fps or self.camera.triggered)
        self._last_progress_ns = time.monotonic_ns()
        self._spawn("events", self._events_loop)
        self._spawn("line-rx", self.line.receive_loop)
        self._spawn("line", self._line_loop)
        self._spawn("infer", self._infer_loop)
        self._spawn("capture", self._capture_loop)
        band = self.pipeline.decider.band
        self.line.set_band(band.accept_edge, band.reject_edge)
        if not self._enabled:  # disabled (Daemon.control) before the start
            self.line.set_enabled(False)
        self.line.set_line("ready", True)
        self._started = True

    def _load_trust(self) -> list[Any]:
        """The config's trusted public keys. Without a trust list a station (a camera source, not
        a replay or simulation on the workstation) gets a note, logged once at start: hot swaps
        and restarts load any intact bundle."""
        if not self.cfg.trust:
            if self.cfg.source.type in ("folder", "video", "sim"):
                return []
            self.notes.append("no trust list (trust: in the config): bundles are checked for integrity (sha256) "
                              "but not for origin, so an unsigned or foreign bundle is loaded; add the signer's "
                              "public key under trust: (edgekit keys new, edgekit build --sign KEY)")
            return []
        from edgekit.bundle.signing import load_trust

        return load_trust(self.cfg.trust)

    def _publish_bundle(self, pipe: Pipeline) -> None:
        """``edgekit_bundle_info`` and ``edgekit_build_info`` for the pipeline now serving."""
        model_id = pipe.backend.model_id
        self.metrics.set_bundle(pipe.bundle.bundle_id, model_id)
        precision = model_id.split(":", 1)[1] if ":" in model_id else str(getattr(self.cfg.backend, "precision", ""))
        backend = self.cfg.backend.type if self._backend_given is None else type(self._backend_given).__name__
        self.metrics.set_build(pipe.bundle.bundle_id, precision, backend)

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None

    def _line_spec(self) -> dict[str, Any]:
        trig = getattr(self.cfg.source, "trigger", None)
        return {
            "outputs": [o.model_dump(mode="json") for o in self.cfg.outputs],
            "encoder": self.cfg.encoder.model_dump(mode="json") if self.cfg.encoder is not None else None,
            "overlap": self.cfg.scheduler.overlap,
            "heartbeat_period_ms": self.cfg.health.heartbeat_period_ms,
            "alive_timeout_ms": max(3 * self.cfg.health.heartbeat_period_ms, 1000.0),
            "rt_priority": self.cfg.line.rt_priority,
            "busy_wait_us": self.cfg.line.busy_wait_us,
            "jitter_probe_ms": self.cfg.line.jitter_probe_ms,
            "tolerance_ms": self.cfg.scheduler.tolerance_ms,
            "trigger": trig.model_dump(mode="json") if trig is not None else None,
            "pulse_ms": self.cfg.scheduler.pulse_ms,
        }

    def _on_line_message(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "fired":
            _, part_id, role, t_ns, count, late, merged, late_cmd, target_ns, cause = msg
            with self._lock:
                self._pulses[role] += 1
                if late:
                    self._late_by_cause[cause] += 1
                self.pulse_timing.append((part_id, role, target_ns, t_ns, count, merged, cause))
            self.metrics.pulses.labels(role).inc()
            if target_ns is not None:
                self.metrics.placement_error.observe(max(0.0, (t_ns - target_ns) / 1e9))
            if late:
                self.metrics.late_pulses.labels(role, cause).inc()
                # counted, summarised at shutdown; per pulse only at debug level (no log flood)
                emit(self.log, logging.DEBUG, "late_pulse", part_id=part_id, role=role, count=count,
                     lateness_ms=round((t_ns - target_ns) / 1e6, 3) if target_ns is not None else None,
                     cause=cause)
        elif kind == "trigger":
            q = getattr(self.camera, "trigger_queue", None)
            if q is not None:
                q.put(msg[1:])  # (part seq, trigger time ns, latched encoder count)
        elif kind == "encoder_fault":  # lost edge events: the parts in flight were rejected
            _, t_ns, lost, message, parts = msg
            with self._lock:
                self._encoder_faults += 1
                self._encoder_lost += lost
            self.metrics.encoder_faults.inc()
            if lost:
                self.metrics.encoder_lost_events.inc(lost)
            emit(self.log, logging.ERROR, "encoder_fault", error=message, lost_events=lost,
                 parts_rejected=len(parts))
            self._events_note("encoder_fault", f"{message}; {len(parts)} part(s) in flight rejected: {parts[:20]}")
        elif kind == "count" and isinstance(self.encoder, RemoteEncoder):
            self.encoder.update(msg[1], msg[2])
        elif kind == "control":  # ResetFault / Enable / Disable / TRIGGER from a PLC or OPC UA client
            self.control(msg[1], msg[2])
        elif kind == "stats":
            self._on_output_stats(msg[1], msg[2])
        elif kind == "error" and str(msg[2]).startswith(ACK_MISSED):
            # the PLC is connected but did not confirm a result: not a connection error
            self.metrics.plc_acks_missed.labels(msg[1]).inc()
            with self._lock:
                self._acks_missed[msg[1]] += 1
            emit(self.log, logging.WARNING, "plc_ack_missed", output=msg[1], error=msg[2])
        elif kind == "error":
            self.metrics.output_errors.labels(msg[1]).inc()
            with self._lock:
                self._output_errors[msg[1]] += 1
            emit(self.log, logging.ERROR, "output_error", output=msg[1], error=msg[2])
        elif kind == "died":
            # without the line process nothing can be rejected: stop (systemd restarts us)
            self.fatal = DeviceError("line process died: outputs are down")
            emit(self.log, logging.ERROR, "line_process_died")
            self._stop_capture.set()
            self._source_done.set()

    def _on_output_stats(self, name: str, stats: dict[str, float]) -> None:
        """An output's own figures: ``*_total`` → counter ``edgekit_output_events`` (by the increase
        since the last report), the rest → gauge ``edgekit_output_value``."""
        with self._lock:
            last = self._output_stats.get(name, {})
            self._output_stats[name] = dict(stats)
        for k, v in stats.items():
            if k.endswith("_total"):
                inc = v - last.get(k, 0)
                if inc > 0:
                    self.metrics.output_events.labels(name, k[:-6]).inc(inc)
            else:
                self.metrics.output_value.labels(name, k).set(v)

    def _timer_check(self, info: dict[str, Any]) -> None:
        """Publish the line process's startup wake-up jitter; warn (with the fix) when its p99
        exceeds the placement tolerance. PLC-timed mode does not depend on it."""
        self.line_info = info
        j = info.get("jitter")
        if not j:
            return
        for q, k in (("p50", "p50_s"), ("p99", "p99_s"), ("max", "max_s")):
            self.metrics.timer_jitter.labels(q).set(j[k])
        tol_s = self.cfg.scheduler.tolerance_ms / 1e3
        emit(self.log, logging.INFO, "timer_jitter", p50_ms=round(j["p50_s"] * 1e3, 3),
             p99_ms=round(j["p99_s"] * 1e3, 3), max_ms=round(j["max_s"] * 1e3, 3), n=j["n"],
             sched_fifo=info.get("sched_fifo"), late_by_cause=j.get("late_over_100us_by_cause"))
        if j["p99_s"] > tol_s and self.cfg.scheduler.mode != "plc":
            from edgekit.runtime.lineproc import RT_FIX, describe_jitter

            self.notes.append(f"line process {describe_jitter(j, info.get('sched_fifo'), bool(self.cfg.line.rt_priority))}: p99 exceeds "
                              f"scheduler.tolerance_ms={self.cfg.scheduler.tolerance_ms}, reject pulses may land "
                              f"late; {RT_FIX}")

    def _check_capabilities(self) -> None:
        roles = set().union(*(o.roles() for o in self.output_specs)) if self.output_specs else set()
        if "reject" not in roles:
            self.notes.append("no output has a 'reject' line: rejects are logged only")
        if self.cfg.decision.review_as == "review" and "review" not in roles and "reject" in roles:
            self.notes.append("no 'review' line: review parts are logged only (set decision.review_as: reject to divert them)")
        if self.cfg.scheduler.mode in ("encoder", "plc") and self.encoder is None:
            raise ConfigError(f"scheduler.mode is '{self.cfg.scheduler.mode}' but no encoder is configured; "
                              "add an encoder section")

    def _spawn(self, name: str, fn: Any) -> None:
        t = threading.Thread(target=self._guard, args=(name, fn), name=name, daemon=True)
        self._threads[name] = t
        t.start()

    def _guard(self, name: str, fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # a dead thread must not pass parts silently: stop everything
            self.fatal = exc
            emit(self.log, logging.ERROR, "thread_died", thread=name, error=repr(exc))
            self._stop_capture.set()
            self._source_done.set()

    def request_stop(self) -> None:
        """Ask for a clean shutdown (signal-safe: only sets flags)."""
        self._stop_capture.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the source ended or stop was requested, then shut down cleanly.
        Returns True when shut down, False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        while not (self._source_done.is_set() or self._stop_capture.is_set()):
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._source_done.wait(0.05 if left is None else min(0.05, left))
        self.shutdown()
        return True

    def shutdown(self, drain_timeout_s: float = 10.0) -> None:
        """Shutdown order: stop capture → finish in-flight parts (result or deadline) → fire the
        pulses already due for parts on the belt → outputs to safe state → flush the event log."""
        if self._stopped.is_set():
            return
        self._stop_capture.set()
        t = self._threads.get("capture")
        if t is not None:
            t.join(timeout=5.0)
        try:
            self.camera.close()
        except Exception as exc:  # closing a broken device must not block the shutdown
            emit(self.log, logging.WARNING, "camera_close_failed", error=repr(exc))
        self._put_frame(_STOP, block=True)
        t = self._threads.get("infer")
        if t is not None:
            t.join(timeout=drain_timeout_s)
        end = time.monotonic() + drain_timeout_s
        while len(self.tracker) and time.monotonic() < end:
            time.sleep(0.005)
        # the line process fires the pulses of parts still travelling to the reject station,
        # then drives every line inactive and returns what the fake chips recorded
        self._stop_line.set()
        t = self._threads.get("line")
        if t is not None:
            t.join(timeout=5.0)
        if self.line is not None:
            self.line.stop(self._pulse_drain_s())
            for chip, edges in self.line.edges.items():
                FakeGpioChip.get(chip).add_edges(edges)
            rx = self._threads.get("line-rx")
            if rx is not None:
                rx.join(timeout=5.0)
        if self.encoder is not None:
            self.encoder.close()
        self._events_q.put(_STOP)
        t = self._threads.get("events")
        if t is not None:
            t.join(timeout=30.0)
        if self.archive is not None:
            self.archive.close()
        if self.pipeline is not None:
            self.pipeline.backend.close()
        self.event_log.close()
        self._stop_metrics()
        if self._ui is not None:  # after the last commit: the page shows the final counts
            self._ui.stop()
        self._stopped.set()
        emit(self.log, logging.INFO, "stopped", run_id=self.run_id, **{k: v for k, v in self.summary().items()
                                                                        if k in ("frames", "decisions", "rejects_fired")})

    # ------------------------------------------------------------------ capture
    def _put_frame(self, item: Any, block: bool = False) -> bool:
        try:
            self._frames_q.put(item, block=block, timeout=5.0 if block else None)
            return True
        except queue.Full:
            return False

    def _capture_loop(self) -> None:
        cam = self.camera
        h = self.cfg.health
        backoff = h.camera_retry_initial_s
        is_open = True
        down_since: int | None = None
        paced = not self._unpaced
        while not self._stop_capture.is_set():
            if not paced:
                # unpaced replay: read the next frame only when inference is free, so the
                # deadline measures processing, not time spent waiting in our own queue
                if not self._slot.acquire(timeout=0.1):
                    continue
            try:
                if not is_open:
                    cam.open()
                    is_open = True
                    self._reconnects += 1
                    self.metrics.camera_reconnects.labels(cam.name).inc()
                    missed = cam.missed_frames(down_since or time.monotonic_ns(), time.monotonic_ns()) \
                        if hasattr(cam, "missed_frames") else []
                    emit(self.log, logging.WARNING, "camera_reconnected", source=cam.name, missed=len(missed))
                    for f in missed:
                        self._frames_missed += 1
                        self.metrics.frames_missed.labels(cam.name).inc()
                        self._admit(f)
                    down_since = None
                    backoff = h.camera_retry_initial_s
                frame = cam.read()
            except DeviceError as exc:
                if not paced:
                    self._slot.release()
                if down_since is None:
                    down_since = time.monotonic_ns()
                    emit(self.log, logging.ERROR, "camera_down", source=cam.name, error=str(exc))
                try:
                    cam.close()
                except Exception as close_exc:  # the device is already gone; closing is best effort
                    emit(self.log, logging.DEBUG, "camera_close_failed", source=cam.name, error=str(close_exc))
                is_open = False
                self._stop_capture.wait(backoff)
                backoff = min(backoff * 2, h.camera_retry_max_s)
                continue
            if frame is IDLE:
                continue
            if frame is None:
                self._source_done.set()
                return
            self._admit(frame)
            if not paced and frame.error is not None:
                self._slot.release()  # decided without inference

    def _admit(self, frame: Frame) -> None:
        if frame.encoder_count is None and self.encoder is not None:
            # a free-running camera: the belt position at the capture time
            c = self.encoder.count_at(frame.t_capture_ns)
            if c is not None:
                frame = replace(frame, encoder_count=c)
        self._frames += 1
        self.metrics.frames.labels(frame.source_id).inc()
        if frame.error is not None:
            self._decide_failsafe(frame, _reason(frame.error))
            return
        deadline = frame.t_capture_ns + int(self.cfg.decision.deadline_ms * 1e6)
        self.tracker.add(frame, deadline)
        with self._line_cv:
            self._line_cv.notify()
        if not self._put_frame(frame):
            # overloaded: the oldest waiting frame is the one least likely to make its deadline,
            # so it is failed safe and the new frame takes its place (a FIFO would let every
            # frame age past its deadline while it waits)
            try:
                old = self._frames_q.get_nowait()
            except queue.Empty:
                old = None
            if old is _STOP:
                self._frames_q.put(old)
            elif old is not None and self.tracker.take(old.part_id) is not None:
                self._decide_failsafe(old, "overload")
            if not self._put_frame(frame) and self.tracker.take(frame.part_id) is not None:
                self._decide_failsafe(frame, "overload")
        self.metrics.queue_depth.labels("frames").set(self._frames_q.qsize())

    # ------------------------------------------------------------------ inference
    def _infer_loop(self) -> None:
        while True:
            frame = self._frames_q.get()
            if frame is _STOP:
                return
            if not self.tracker.is_pending(frame.part_id):
                self._free_slot()
                continue  # already decided by its deadline: do not spend time on it
            left_ns = frame.t_capture_ns + self._deadline_ns - time.monotonic_ns()
            if not self._unpaced and left_ns < self._work_ns:
                self._free_slot()
                continue  # cannot finish before its deadline: the deadline fails it safe
            pipe = self.pipeline
            assert pipe is not None
            self._busy_since_ns = time.monotonic_ns()
            try:
                batch = pipe.preprocessor.run(frame)
                raw = pipe.backend.infer(batch)
                score = pipe.scorer.run(raw)
                decision = pipe.decider.decide(score)
            except DataError as exc:
                decision = pipe.decider.failsafe(frame, "bad_frame", model_id=pipe.backend.model_id)
                emit(self.log, logging.WARNING, "bad_frame", part_id=frame.part_id, error=str(exc))
            except Exception as exc:  # any backend failure is a fail-safe reject, never a crash
                decision = pipe.decider.failsafe(frame, "backend_error", model_id=pipe.backend.model_id)
                emit(self.log, logging.ERROR, "backend_error", part_id=frame.part_id, error=repr(exc))
            now = time.monotonic_ns()
            # typical time per frame (EWMA), to skip frames that could not make their deadline. One
            # stuck call (seconds) must not poison it: above the deadline the estimate would skip
            # every later frame, so no call would ever lower it again and the line would fail
            # every part safe until restarted. A sample counts at most as one deadline.
            self._work_ns = int(0.9 * self._work_ns + 0.1 * min(now - self._busy_since_ns, self._deadline_ns))
            self._last_progress_ns = now
            self._busy_since_ns = None
            self._free_slot()
            if self.tracker.take(frame.part_id) is None:
                self.metrics.failsafe.labels("late_result_discarded").inc()
                continue
            self._dispatch(decision)

    def _free_slot(self) -> None:
        if self._unpaced:
            self._slot.release()

    def _decide_failsafe(self, frame: Frame, reason: str) -> None:
        pipe = self.pipeline
        assert pipe is not None
        self._dispatch(pipe.decider.failsafe(frame, reason, model_id=pipe.backend.model_id))

    # ------------------------------------------------------------------ decisions → lines/log
    def _dispatch(self, d: Decision) -> None:
        with self._lock:
            self._counts[d.kind] += 1
            if d.failsafe:
                self._failsafe[d.failsafe] += 1
            for k, v in d.stage_s.items():
                self._stage_s.setdefault(k, deque(maxlen=200_000)).append(v)
            e2e = (d.t_decided_ns - d.frame.t_capture_ns) / 1e9
            self._stage_s.setdefault("e2e", deque(maxlen=200_000)).append(e2e)
        self.metrics.decisions.labels(d.kind).inc()
        if d.failsafe:
            self.metrics.failsafe.labels(d.failsafe).inc()
            emit(self.log, logging.WARNING, "failsafe", part_id=d.part_id, reason=d.failsafe, action=d.kind)
        for k, v in d.stage_s.items():
            self.metrics.latency.labels(k).observe(v)
        self.metrics.latency.labels("e2e").observe(e2e)
        try:
            cmds = self.scheduler.schedule(d)
        except ValueError as exc:  # encoder mode and a frame without count: cannot place it
            emit(self.log, logging.ERROR, "unschedulable", part_id=d.part_id, error=str(exc))
            cmds = []
        if cmds and not self._enabled:  # disabled (Daemon.control): logged and reported, not pulsed
            with self._lock:
                for c in cmds:
                    self._suppressed[c.role] += 1
            cmds = []
        if self.line is not None:
            for c in cmds:
                self.line.schedule(c)
        image_path = None
        if self.archive is not None and (d.kind in self.cfg.archive.kinds or (d.failsafe and "failsafe" in self.cfg.archive.kinds)):
            if not self.archive.submit(d):
                self.metrics.archive_skipped.inc()
            elif d.frame.image is not None:
                image_path = str(self.archive.path_for(d))
        if self.line is not None:
            pipe = self.pipeline
            self.line.publish(d, self.scheduler.target_count(d),
                              {"bundle_id": pipe.bundle.bundle_id if pipe else None, "image_path": image_path,
                               "enabled": self._enabled})
        self._events_q.put(d)  # large bound; blocks rather than drop a decision
        self.metrics.queue_depth.labels("events").set(self._events_q.qsize())

    def _pulse_drain_s(self) -> float:
        """How long shutdown waits for pulses of parts already on their way to the station."""
        s = self.cfg.scheduler
        if s.mode == "time":
            return (s.delay_ms + max(s.pulse_ms, s.review_pulse_ms or 0.0)) / 1e3 + 0.5
        return self.cfg.health.shutdown_drain_s

    def _line_loop(self) -> None:
        """Deadlines (fail-safe for late parts) and the alive beat that keeps the heartbeat going."""
        period_s = self.cfg.health.heartbeat_period_ms / 1e3 / 2
        next_alive = 0.0
        next_station = 0.0
        while not self._stop_line.is_set():
            now = time.monotonic_ns()
            for f in self.tracker.expired(now):
                self._decide_failsafe(f, "late")
            if time.monotonic() >= next_station and self.line is not None:
                self._station_signals()
                next_station = time.monotonic() + 5.0
            if time.monotonic() >= next_alive and self.line is not None:
                healthy = self._healthy(now)
                self.metrics.healthy.set(1 if healthy else 0)
                self.line.alive(healthy)
                next_alive = time.monotonic() + period_s
            dl = self.tracker.next_deadline()
            wait_s = min(period_s, max(0.0, (dl - time.monotonic_ns()) / 1e9) if dl is not None else period_s)
            with self._line_cv:
                self._line_cv.wait(max(wait_s, 0.0005))

    def _station_signals(self) -> None:
        """Conditions the PLC sees (docs/plc.md): STATUS.ARCHIVE_FULL while the archive deletes old
        images to make room, FAULT_CODE 6 when it cannot write for lack of disk, FAULT_CODE 7 while
        the system clock is not synchronised. Sent on change only."""
        from edgekit.runtime.clock import clock_synchronised

        a = self.archive
        state = {"archive_full": bool(a is not None and a.at_quota), "disk_full": bool(a is not None and a.disk_full),
                 # a station camera only: replays and simulations on a workstation keep no plant records
                 "clock_unsync": self.cfg.source.type not in ("sim", "video", "folder") and clock_synchronised() is False}
        last = getattr(self, "_station_state", {})
        if state["archive_full"] != last.get("archive_full", False):
            self.line.set_flag("archive_full", state["archive_full"])
        for key, code, what in (("disk_full", 6, "archive disk full"), ("clock_unsync", 7, "system clock not synchronised")):
            if state[key] and not last.get(key, False):
                self.line.set_fault(code)
                emit(self.log, logging.ERROR if code == 6 else logging.WARNING, "station_fault", code=code, fault=what)
                self._events_note("fault", f"FAULT_CODE {code}: {what}")
        self._station_state = state

    def _healthy(self, now_ns: int) -> bool:
        """False when inference is stuck on one frame, or frames wait and nothing moves, for
        longer than ``health.stall_s`` (then the heartbeat stops and systemd's watchdog fires)."""
        limit = self.cfg.health.stall_s * 1e9
        busy = self._busy_since_ns
        stuck = busy is not None and now_ns - busy > limit
        starved = (len(self.tracker) > 0 or self._frames_q.qsize() > 0) and now_ns - self._last_progress_ns > limit
        return not (stuck or starved) and self.fatal is None

    def health(self) -> dict[str, Any]:
        """State for /healthz and the sd_notify watchdog."""
        now = time.monotonic_ns()
        threads_ok = all(t.is_alive() for n, t in self._threads.items() if n in ("line", "events", "infer")) \
            or self._stopped.is_set()
        return {"healthy": self._healthy(now) and threads_ok, "pending": len(self.tracker),
                "frames": self._frames, "committed": self._committed,
                "since_progress_s": round((now - self._last_progress_ns) / 1e9, 3), "run_id": self.run_id}

    # ------------------------------------------------------------------ control
    CONTROL_ACTIONS = {"resetfault": "reset_fault", "enable": "enable", "disable": "disable", "trigger": "trigger"}

    def control(self, action: str, source: str) -> dict[str, Any]:
        """Apply one control action from a PLC, an OPC UA client or the operator page and record it
        in the event log (``notes``, kind ``control``). Thread-safe; never raises for a bad request.

        Actions (case, ``_`` and ``-`` ignored: ``ResetFault`` = ``reset_fault``):
          ``reset_fault``: outputs clear their latched FAULT / FAULT_CODE (docs/plc.md);
          ``disable``: rejects are still decided, logged and reported, but no reject/review pulse is
          fired (counted in ``summary()["pulses_suppressed_disabled"]``); ``enable``: pulses again;
          ``trigger``: a software trigger (one part) on a camera with ``source.trigger``; refused
          for a free-running or simulated camera.
        Returns ``{"ok", "action", "source", "message", "enabled"}``."""
        key = "".join(ch for ch in str(action).lower() if ch.isalpha())
        act = self.CONTROL_ACTIONS.get(key)
        ok = True
        if act is None:
            ok, act = False, str(action)
            msg = f"unknown control action {action!r}; use one of reset_fault, enable, disable, trigger"
        elif act == "reset_fault":
            if self.line is not None:
                self.line.reset_fault()
            msg = "latched faults cleared on every output"
        elif act in ("enable", "disable"):
            with self._lock:
                was, self._enabled = self._enabled, act == "enable"
            if self.line is not None:
                self.line.set_enabled(act == "enable")
            msg = (("already " if was == self._enabled else "") +
                   ("enabled: rejects are pulsed" if self._enabled else "disabled: rejects are logged, not pulsed"))
        else:
            trig = getattr(self.cfg.source, "trigger", None)
            if trig is None or self.line is None:
                ok = False
                msg = (f"software trigger refused: camera {self.cfg.source.type} is not triggered "
                       "(configure source.trigger to take one part per trigger)")
            else:
                self.line.soft_trigger(source)
                msg = "software trigger sent to the camera"
        emit(self.log, logging.INFO if ok else logging.WARNING, "control", action=act, source=source, ok=ok,
             message=msg)
        self._events_note("control", f"{act} from {source}: {'ok' if ok else 'refused'}: {msg}")
        return {"ok": ok, "action": act, "source": source, "message": msg, "enabled": self._enabled}

    @property
    def enabled(self) -> bool:
        """False after ``control("disable", ...)``: rejects are logged, not pulsed."""
        return self._enabled

    # ------------------------------------------------------------------ events
    def _events_loop(self) -> None:
        batch_s = self.cfg.events.batch_ms / 1e3
        stop = False
        while not stop:
            items = [self._events_q.get()]
            while True:
                try:
                    items.append(self._events_q.get_nowait())
                except queue.Empty:
                    break
            if _STOP in items:
                stop = True
            decisions = [d for d in items if d is not _STOP]
            rows = [decision_row(self.run_id, d) for d in decisions]
            self.event_log.write(rows)
            self._committed += len(rows)
            self.metrics.events_written.inc(len(rows))
            for d in decisions:
                if self.cfg.log.decisions:
                    emit(self.log, logging.INFO, "decision", part_id=d.part_id, kind=d.kind,
                         score=d.score if math.isfinite(d.score) else None, failsafe=d.failsafe,
                         encoder_count=d.frame.encoder_count)
                if self.on_decision is not None:
                    self.on_decision(d)
            if batch_s and not stop:
                time.sleep(batch_s)

    # ------------------------------------------------------------------ hot swap
    def reload_bundle(self, bundle_dir: str | Path | None = None) -> bool:
        """Load and verify a new bundle and swap it in; parts in flight finish on the old one.
        A bad bundle is refused (logged, counted) and the old one keeps running."""
        path = Path(bundle_dir or self.cfg.bundle)
        with self._swap_lock:
            try:
                new = self.build_pipeline(path)
            except EdgekitError as exc:
                self.metrics.bundle_swaps.labels("refused").inc()
                if self.line is not None:
                    self.line.set_fault(5)  # docs/plc.md FAULT_CODE 5: bundle refused
                emit(self.log, logging.ERROR, "bundle_refused", bundle=str(path), error=str(exc))
                self._events_note("bundle_refused", f"{path}: {exc}")
                return False
            old = self.pipeline
            self.pipeline = new
            if self.line is not None:
                self.line.set_band(new.decider.band.accept_edge, new.decider.band.reject_edge)
            self.metrics.bundle_swaps.labels("ok").inc()
            self._publish_bundle(new)
            emit(self.log, logging.INFO, "bundle_swapped", bundle=str(path), bundle_id=new.bundle.bundle_id,
                 old_bundle_id=old.bundle.bundle_id if old else None)
            self._events_note("bundle_swapped", f"{path}: {new.bundle.bundle_id}")
            return True

    def _events_note(self, kind: str, msg: str) -> None:
        # notes go through the writer's connection only between batches; a short separate
        # connection keeps the single-writer rule simple (SQLite serialises writers)
        import sqlite3

        if self._early_notes is not None:  # before start(): written once the run is in the log
            self._early_notes.append((kind, msg))
            return
        try:
            conn = sqlite3.connect(str(self.event_log.path), timeout=5.0)
            with conn:
                conn.execute("INSERT INTO notes (run_id, t_wall, kind, message) VALUES (?, ?, ?, ?)",
                             (self.run_id, time.time(), kind, msg))
            conn.close()
        except sqlite3.Error as exc:
            emit(self.log, logging.WARNING, "note_failed", error=str(exc))

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Frames, decisions by kind, fail-safes by reason, pulses fired, latency per stage."""
        with self._lock:
            lat = {}
            for k, v in self._stage_s.items():
                vals = sorted(v)
                if vals:
                    lat[k] = {"median_ms": round(statistics.median(vals) * 1e3, 3),
                              "p99_ms": round(vals[min(len(vals) - 1, int(math.ceil(0.99 * len(vals))) - 1)] * 1e3, 3),
                              "n": len(vals)}
            return {
                "run_id": self.run_id,
                "bundle_id": self.pipeline.bundle.bundle_id if self.pipeline else None,
                "frames": self._frames,
                "decisions": dict(self._counts),
                "failsafe": dict(self._failsafe),
                "rejects_fired": self._pulses.get("reject", 0),
                "reviews_fired": self._pulses.get("review", 0),
                "pulses_suppressed_disabled": dict(self._suppressed),
                "output_stats": {k: dict(v) for k, v in self._output_stats.items()},
                "enabled": self._enabled,
                "late_pulses": sum(self._late_by_cause.values()),
                "encoder_faults": self._encoder_faults,
                "encoder_lost_events": self._encoder_lost,
                "late_pulses_decision_after_target": self._late_by_cause.get("decision", 0),
                "late_pulses_by_cause": dict(self._late_by_cause),
                "timer": dict(self.line_info),
                "frames_missed": self._frames_missed,
                "camera_reconnects": self._reconnects,
                "output_errors": dict(self._output_errors),
                "plc_acks_missed": dict(self._acks_missed),
                "events_committed": self._committed,
                "latency": lat,
                "log_path": str(self.event_log.path),
                "band": vars(self.pipeline.decider.band) if self.pipeline else None,
            }


# ---------------------------------------------------------------------- entry points
def replay(bundle_dir: str | Path, source: str | Path, *, rate_hz: float | None = None,
           out_dir: str | Path | None = None, overrides: dict[str, Any] | None = None,
           quiet: bool = True) -> dict[str, Any]:
    """Replay an image folder or a video file through the full daemon with a fake GPIO chip.

    Args:
        bundle_dir: bundle directory (verified on load).
        source: folder of images (replayed recursively, sorted) or a video file.
        rate_hz: frames per second; None = as fast as inference allows.
        out_dir: where ``events.db`` goes (default: ``<bundle_dir>/../replay``).
        overrides: extra run-config keys (dotted or nested), e.g. ``{"decision.reject_edge": 0.5}``.
        quiet: no structured log lines on stdout.
    Returns:
        ``Daemon.summary()``: frames, decisions by kind, failsafe reasons, rejects_fired,
        latency per stage {median_ms, p99_ms}, log_path, band.
    """
    from edgekit.config.run import set_dotted

    src = Path(source)
    if not src.exists():
        raise ConfigError(f"{src}: replay source not found; give an image folder or a video file")
    out = Path(out_dir) if out_dir is not None else Path(bundle_dir).resolve().parent / "replay"
    chip = f"replay-{uuid.uuid4().hex[:6]}"
    data: dict[str, Any] = {
        "bundle": str(Path(bundle_dir).resolve()),
        "source": {"type": "folder" if src.is_dir() else "video", "path": str(src.resolve()), "rate_hz": rate_hz},
        "outputs": [{"type": "fake_gpio", "chip": chip}],
        # replay has no conveyor: a generous deadline (a real model on 2 cores) and the reject
        # pulse just after it, so the fake chip records one pulse per rejected frame
        "decision": {"deadline_ms": 2000.0},
        "scheduler": {"mode": "time", "delay_ms": 2050.0, "pulse_ms": 5.0},
        "events": {"path": str(out.resolve() / "events.db"), "synchronous": "NORMAL"},
        "metrics": {"enabled": False},
        "log": {"format": "text", "level": "warning" if quiet else "info"},
    }
    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    cfg = parse_run_config(data, "replay")
    log = setup_logging(cfg.log.format, cfg.log.level, stream=sys.stderr)
    d = Daemon(cfg, logger=log)
    d.start()
    d.wait()
    if d.fatal is not None:
        raise DeviceError(f"replay stopped: {d.fatal!r}")
    s = d.summary()
    s["fake_chip"] = chip
    return s


class Supervisor:
    """The main thread's loop under systemd: watchdog pings, SIGHUP / watched-manifest reloads.

    A reload runs in a thread of its own, so deserialising a new engine (which can take longer
    than ``WatchdogSec``) never stops the pings: the line keeps running on the old bundle and
    the watchdog is pinged while that pipeline is healthy. systemd is told ``RELOADING=1`` with
    ``MONOTONIC_USEC`` (as ``Type=notify-reload`` requires) at the start and ``READY=1`` after.
    ``clock`` is injectable (tests step it)."""

    def __init__(self, daemon: Daemon, notifier: SdNotifier, watch_path: Path | None = None,
                 clock: Any = time.monotonic) -> None:
        self.daemon = daemon
        self.notifier = notifier
        self.watch_path = watch_path
        self.clock = clock
        self.ping_s = notifier.watchdog_interval_s() or 1.0
        self.last_ping = -1e18
        self._want = threading.Event()
        self._why = ""
        self._reloader: threading.Thread | None = None
        self.reloads: list[tuple[str, bool]] = []  # (why, ok)
        self.watch_mtime = self._mtime()

    def _mtime(self) -> int:
        p = self.watch_path
        return p.stat().st_mtime_ns if p is not None and p.exists() else 0

    def request_reload(self, why: str = "SIGHUP") -> None:
        self._why = why
        self._want.set()  # signal-safe: the work happens in step()

    def _reload(self, why: str) -> None:
        ok = False
        try:
            ok = bool(self.daemon.reload_bundle())
        finally:
            self.reloads.append((why, ok))

    def reloading(self) -> bool:
        return self._reloader is not None and self._reloader.is_alive()

    def step(self) -> bool:
        """One pass; False when the daemon is done."""
        d = self.daemon
        if d._source_done.is_set() or d._stop_capture.is_set():
            return False
        if self.watch_path is not None:
            m = self._mtime()
            if m != self.watch_mtime:
                self.watch_mtime = m
                self.request_reload("manifest changed")
        if self._reloader is not None and not self._reloader.is_alive():
            self._reloader = None
            why, ok = self.reloads[-1] if self.reloads else ("", False)
            self.notifier.ready(f"reloaded ({why})" if ok else f"reload refused ({why}); still on the old bundle")
        if self._want.is_set() and self._reloader is None:
            self._want.clear()
            self.notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
            self._reloader = threading.Thread(target=self._reload, args=(self._why,), name="reload", daemon=True)
            self._reloader.start()
        now = self.clock()
        if now - self.last_ping >= self.ping_s / 2:
            self.last_ping = now
            if d.health()["healthy"]:  # no ping while stalled: systemd restarts us
                self.notifier.watchdog()
        return True


def run_cli(config: str | Path, check: bool = False, overrides: dict[str, Any] | None = None) -> None:
    """``edgekit run CONFIG.yaml``: validate; with ``check`` print the resolved config and stop;
    else run until SIGTERM/SIGINT (SIGHUP reloads the bundle). ``overrides``: ``--set`` keys
    (dotted), validated with the file."""
    import json

    cfg = load_run_config(config, overrides)
    if check:
        from edgekit.bundle.signing import load_trust
        from edgekit.runtime.check import check_resources

        CAMERAS.get(cfg.source.type)
        for o in cfg.outputs:
            OUTPUTS.get(o.type)
        checks = []
        bundle_id = None
        try:  # verified: schema, every file's sha256, the signature when trust is set
            bundle = load_bundle(cfg.bundle, trust=load_trust(cfg.trust))
            Band.resolve(bundle.thresholds, cfg.decision.accept_edge, cfg.decision.reject_edge)
            bundle_id = bundle.bundle_id
            checks.append({"what": "bundle", "status": "ok", "detail": f"{cfg.bundle}: {bundle_id} verified"})
        except EdgekitError as exc:
            checks.append({"what": "bundle", "status": "error", "detail": str(exc)})
        checks += check_resources(cfg)
        errors = [c for c in checks if c["status"] == "error"]
        print(json.dumps({"ok": not errors, "config": str(config), "bundle_id": bundle_id, "checks": checks,
                          "resolved": cfg.model_dump(mode="json")}, indent=2))
        if errors:
            more = f" (and {len(errors) - 1} more, listed above)" if len(errors) > 1 else ""
            raise ConfigError(f"{config}: {errors[0]['what']}: {errors[0]['detail']}{more}")
        return
    log = setup_logging(cfg.log.format, cfg.log.level)
    sys.setswitchinterval(0.0005)  # deadlines and the alive beat get the GIL quickly
    daemon = Daemon(cfg, logger=log)
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.request_stop())
    notifier = SdNotifier.from_env()
    daemon.start()
    notifier.ready(f"run {daemon.run_id}")
    sup = Supervisor(daemon, notifier, Path(cfg.bundle) / "manifest.json" if cfg.watch_bundle else None)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: sup.request_reload("SIGHUP"))
    while sup.step():
        time.sleep(0.1)
    notifier.notify("STOPPING=1")
    daemon.shutdown()
    if daemon.fatal is not None:
        raise DeviceError(f"daemon stopped after an internal error: {daemon.fatal!r}")
    if os.environ.get("EDGEKIT_PRINT_SUMMARY", "1") == "1":
        print(json.dumps({"event": "summary", **daemon.summary()}, default=str), flush=True)


__all__ = ["Daemon", "Pipeline", "PartTracker", "replay", "run_cli"]
