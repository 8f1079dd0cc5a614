"""Prometheus metrics (prometheus-client) on a private registry, served with ``/healthz`` on
127.0.0.1 by default (a line PC must not expose its internals to the plant network unasked)."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import disable_created_metrics

from edgekit import __version__
from edgekit.errors import ConfigError

# No ``*_created`` series: each counter and histogram would export a second series with its
# creation time (twice the series for nothing a dashboard uses). prometheus_client keeps this
# switch in a module global read at every scrape, so it holds for the whole process.
disable_created_metrics()

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

# Label values exported as 0 from the start (a counter absent until its first event reads as "no
# data" in Prometheus: rate() and alerts on it stay silent exactly when something first goes wrong).
DECISION_KINDS = ("accept", "review", "reject")
FAILSAFE_REASONS = ("late", "overload", "late_result_discarded", "bad_frame", "backend_error", "nan",
                    "decode_error", "missing_frame", "camera_down")
LATE_CAUSES = ("decision", "runqueue", "hypervisor", "timer")  # lineproc._LATE_CAUSES (a test checks)
PULSE_ROLES = ("reject", "review")
SWAP_RESULTS = ("ok", "refused")


class Metrics:
    """Every counter/gauge/histogram the daemon exports (names prefixed ``edgekit_``)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter("edgekit_frames", "Frames captured", ["source"], registry=r)
        self.decisions = Counter("edgekit_decisions", "Decisions by kind", ["kind"], registry=r)
        self.failsafe = Counter("edgekit_failsafe", "Fail-safe decisions by reason", ["reason"], registry=r)
        self.latency = Histogram("edgekit_stage_latency_seconds", "Latency per stage", ["stage"],
                                 buckets=_LATENCY_BUCKETS_S, registry=r)
        self.queue_depth = Gauge("edgekit_queue_depth", "Items waiting per queue", ["queue"], registry=r)
        self.camera_reconnects = Counter("edgekit_camera_reconnects", "Camera reconnects", ["source"], registry=r)
        self.frames_missed = Counter("edgekit_frames_missed", "Frames missed while the camera was down",
                                     ["source"], registry=r)
        self.output_errors = Counter("edgekit_output_errors", "GPIO/PLC write or connection errors", ["output"],
                                     registry=r)
        self.pulses = Counter("edgekit_pulses", "Pulse starts per line role", ["role"], registry=r)
        self.late_pulses = Counter("edgekit_late_pulses", "Pulses that started later than scheduler.tolerance_ms "
                                   "after their target, by cause (decision: the result came after the target; "
                                   "runqueue/hypervisor/timer: the line process woke late)",
                                   ["role", "cause"], registry=r)
        self.encoder_faults = Counter("edgekit_encoder_faults", "Encoder faults (lost edge events, impossible "
                                      "quadrature transitions); the parts in flight are rejected", registry=r)
        self.encoder_lost_events = Counter("edgekit_encoder_lost_events", "Encoder edge events the kernel dropped "
                                           "(sequence-number gaps)", registry=r)
        self.placement_error = Histogram("edgekit_placement_error_seconds", "Pulse start minus its target time",
                                         buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05),
                                         registry=r)
        # label "stat" (p50/p99/max), not "quantile": that label is reserved for summaries (promtool check metrics)
        self.timer_jitter = Gauge("edgekit_timer_jitter_seconds", "Line-process wake-up lateness measured at "
                                  "startup: p50, p99, max", ["stat"], registry=r)
        self.events_written = Counter("edgekit_events_written", "Rows committed to the event log", registry=r)
        self.archive_skipped = Counter("edgekit_archive_skipped", "Archive images skipped (queue full)", registry=r)
        self.bundle_swaps = Counter("edgekit_bundle_swaps", "Bundle reloads", ["result"], registry=r)
        self.healthy = Gauge("edgekit_healthy", "1 while the pipeline makes progress", registry=r)
        # fleet view (firmware_scripts/monitoring): which bundle a station serves, archive disk use
        self.bundle_info = Gauge("edgekit_bundle_info", "The bundle being served (always 1; bundle_id and "
                                 "model_id labels)", ["bundle_id", "model_id"], registry=r)
        self.archive_bytes = Gauge("edgekit_archive_bytes", "Bytes of images in the reject-frame archive", registry=r)
        self.archive_quota_bytes = Gauge("edgekit_archive_quota_bytes", "The archive's quota (archive.quota_mb)",
                                         registry=r)
        self.archive_disk_free_bytes = Gauge("edgekit_archive_disk_free_bytes", "Free bytes on the file system "
                                             "that holds the archive", registry=r)
        # figures an output keeps itself (MQTT outbox, Modbus server FIFO, OPC UA sessions)
        self.output_events = Counter("edgekit_output_events", "Per-output event counts (MQTT results sent / "
                                     "dropped, Modbus server overruns, ...)", ["output", "event"], registry=r)
        self.output_value = Gauge("edgekit_output_value", "Per-output levels (MQTT outbox queued, Modbus server "
                                  "FIFO depth, ...)", ["output", "stat"], registry=r)
        self.plc_acks_missed = Counter("edgekit_plc_acks_missed", "Results the PLC did not acknowledge (ACK_SEQ) "
                                       "within ack_timeout_ms; connection errors are edgekit_output_errors",
                                       ["output"], registry=r)
        # what this station runs: edgekit_build_info{bundle_id,precision,backend,edgekit_version} 1
        self.build_info = Info("edgekit_build", "What this station runs: bundle, precision, backend, edgekit "
                               "version (replaced on a bundle swap)", registry=r)
        for k in DECISION_KINDS:
            self.decisions.labels(k)
        for k in FAILSAFE_REASONS:
            self.failsafe.labels(k)
        for k in SWAP_RESULTS:
            self.bundle_swaps.labels(k)

    def precreate(self, sources: list[str], outputs: list[str], roles: set[str], plc_outputs: list[str]) -> None:
        """Export 0 for the label sets this station's config can produce (cameras, outputs, pulse
        roles, Modbus client outputs) before their first event."""
        for s in sources:
            for c in (self.frames, self.camera_reconnects, self.frames_missed):
                c.labels(s)
        for o in outputs:
            self.output_errors.labels(o)
        for o in plc_outputs:
            self.plc_acks_missed.labels(o)
        for role in (r for r in PULSE_ROLES if r in roles):
            self.pulses.labels(role)
            for cause in LATE_CAUSES:
                self.late_pulses.labels(role, cause)

    def set_build(self, bundle_id: str, precision: str, backend: str) -> None:
        """``edgekit_build_info`` for the bundle now served (one series; a swap replaces it)."""
        self.build_info.info({"bundle_id": bundle_id, "precision": precision, "backend": backend,
                              "edgekit_version": __version__})

    def set_bundle(self, bundle_id: str, model_id: str) -> None:
        """``edgekit_bundle_info`` names the bundle now served (one series; a swap replaces it)."""
        self.bundle_info.clear()
        self.bundle_info.labels(bundle_id, model_id).set(1)

    def watch_archive(self, archive: Any) -> None:
        """Archive bytes and the free space of its file system, read at each scrape."""
        import shutil

        def free() -> float:
            try:
                return float(shutil.disk_usage(archive.dir).free)
            except OSError:  # the archive folder vanished: say so without failing the scrape
                return float("nan")

        self.archive_quota_bytes.set(archive.quota_bytes)
        self.archive_bytes.set_function(lambda: float(archive.used_bytes))
        self.archive_disk_free_bytes.set_function(free)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, float]:
        """Counter/gauge samples as ``name{label=value,...}`` → value (histogram buckets left out)."""
        out: dict[str, float] = {}
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name.endswith(("_bucket", "_created")):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 healthy / 503 not, JSON body); GET and
    HEAD (same headers, no body); any other path 404, any other method 405.

    ``bind()`` takes the port (a port in use raises ``ConfigError`` naming it: a second daemon
    must not run without metrics, or answer for the first); ``start()`` serves (binds first if
    needed). Connections that arrive between the two wait in the listen backlog."""

    PATHS = ("/metrics", "/healthz")

    def __init__(self, metrics: Metrics, health: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> int:
        """Listen on host:port; returns the bound port (port 0: a free one)."""
        if self._server is not None:
            return self.port
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body_too: bool) -> None:
                path = urlsplit(self.path).path
                if path == "/metrics":
                    body, ctype, code = outer.metrics.render(), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    h = outer.health()
                    body, ctype = json.dumps(h).encode(), "application/json"
                    code = 200 if h.get("healthy") else 503
                else:
                    body, ctype, code = f"not found: {path} (try {' or '.join(outer.PATHS)})\n".encode(), \
                        "text/plain; charset=utf-8", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body_too:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def _not_allowed(self) -> None:
                body = b"method not allowed: GET or HEAD\n"
                self.send_response(405)
                self.send_header("Allow", "GET, HEAD")
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

            def log_message(self, *args: Any) -> None:
                return  # scrapes every few seconds would flood the journal

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"metrics.port {self.port} on {self.host} is already in use (another edgekit "
                                  "daemon on this station?); stop it, or set another metrics.port in the config"
                                  ) from None
            raise ConfigError(f"metrics endpoint {self.host}:{self.port} cannot listen ({exc.strerror or exc}); "
                              "set metrics.host/metrics.port in the config") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        return self.port

    def start(self) -> int:
        """Serve in a daemon thread (binding first if ``bind()`` was not called); returns the port."""
        self.bind()
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever: only once it ran
                self._server.shutdown()
                self._thread = None
            self._server.server_close()
            self._server = None
