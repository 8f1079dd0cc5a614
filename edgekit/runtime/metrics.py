"""Prometheus metrics (prometheus-client) on a private registry, served with ``/healthz`` on
127.0.0.1 by default (a line PC must not expose its internals to the plant network unasked)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


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
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 healthy / 503 not, JSON body)."""

    def __init__(self, metrics: Metrics, health: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Serve in a daemon thread; returns the bound port."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                if self.path.startswith("/metrics"):
                    body, ctype, code = outer.metrics.render(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    h = outer.health()
                    body, ctype = json.dumps(h).encode(), "application/json"
                    code = 200 if h.get("healthy") else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return  # scrapes every few seconds would flood the journal

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
