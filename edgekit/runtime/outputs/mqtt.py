"""MQTT events for MES / quality systems (paho-mqtt 2.x), with a local SQLite outbox so that no
result is lost across a broker outage or a station restart (docs/mqtt.md).

Topics (``prefix``/``station``/...): ``result`` — one JSON message per decision (QoS 1 by default,
not retained); ``health`` — station health every ``health_period_s`` (retained); ``status`` —
``online`` (retained) after each connect, ``offline`` as the Last Will and on a clean shutdown.

Delivery: each result is written to the outbox first and removed only when the broker acknowledged
it (PUBACK; QoS 0: when handed to the socket). On every (re)connect a fresh client session starts
and the outbox is sent oldest first at no more than ``drain_rate_per_s``, at most ``max_inflight``
unacknowledged; results published meanwhile queue behind the backlog, so order is kept. A message
whose PUBACK was lost in the outage is sent again: delivery is **at least once**; subscribers
de-duplicate by ``uid`` (station run + part id). The outbox is bounded (``outbox_max_rows``); a full
one drops per ``outbox_drop`` and counts it. Metrics (``edgekit_output_*``): outbox_queued,
sent_total, dropped_total, published_total (incl. resends), reconnects_total, connected.

Credentials: ``username`` (or the variable named by ``username_env``) and the password from the
variable named by ``password_env`` or from ``password_file`` — never in the run config itself,
which is logged and stored with every run; neither is ever logged. TLS with ``tls:`` (CA, client
certificate). All network I/O runs in this output's worker thread: a slow or absent broker never
delays a pulse."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator

from edgekit.config.base import StrictModel
from edgekit.errors import ConfigError, DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output
from edgekit.runtime.outputs.outbox import Outbox


class MqttTlsConfig(StrictModel):
    ca_file: str | None = None  # None: the system's CA store
    cert_file: str | None = None  # client certificate (mutual TLS), with key_file
    key_file: str | None = None
    verify_hostname: bool = True


def _topic_part(v: str) -> str:
    if not v or any(c in v for c in "#+\0") or v.startswith("/") or v.endswith("/"):
        raise ValueError("must be a non-empty MQTT topic level without #, + or a leading/trailing /")
    return v


class MqttOutputConfig(StrictModel):
    type: Literal["mqtt"] = "mqtt"
    name: str = "mqtt"
    host: str
    port: int = Field(1883, ge=1, le=65535)  # 8883 is the usual TLS port
    prefix: str = "edgekit"
    station: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "station")
    client_id: str | None = None  # default edgekit-<station>
    qos: Literal[0, 1, 2] = 1
    keepalive_s: int = Field(10, ge=2, le=3600)
    timeout_s: float = Field(5.0, gt=0, le=60)
    health_period_s: float = Field(5.0, gt=0)
    tls: MqttTlsConfig | None = None
    username: str | None = None
    username_env: str = "EDGEKIT_MQTT_USERNAME"
    password_env: str = "EDGEKIT_MQTT_PASSWORD"
    password_file: str | None = None  # e.g. a systemd credential: /run/credentials/edgekit.service/mqtt
    outbox_path: str = "mqtt-outbox.db"  # relative to the run config's directory
    outbox_max_rows: int = Field(100_000, ge=10)
    outbox_drop: Literal["oldest", "newest"] = "oldest"
    drain_rate_per_s: float = Field(200.0, gt=0)  # backlog drain after a reconnect (and any sending)
    max_inflight: int = Field(20, ge=1, le=65535)
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)
    shutdown_drain_s: float = Field(2.0, ge=0, le=60)  # at shutdown: time to send what is queued
    process: Literal["own", "line"] = "own"  # own: a process of its own (outputs/sidecar.py)

    @field_validator("prefix", "station")
    @classmethod
    def _topic_level(cls, v: str) -> str:
        return _topic_part(v)

    def topic(self, leaf: str) -> str:
        return f"{self.prefix}/{self.station}/{leaf}"


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def credentials(cfg: MqttOutputConfig, environ: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """(username, password) from the config, its environment variables or the password file."""
    env = os.environ if environ is None else environ
    user = cfg.username or env.get(cfg.username_env) or None
    password = env.get(cfg.password_env) or None
    if cfg.password_file:
        try:
            with open(cfg.password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"outputs.{cfg.name}.password_file: cannot read {cfg.password_file} "
                              f"({exc.strerror}); check the path and that the service user may read it") from None
    return user, password


def tls_context(cfg: MqttOutputConfig) -> ssl.SSLContext | None:
    t = cfg.tls
    if t is None:
        return None
    try:
        ctx = ssl.create_default_context(cafile=t.ca_file)
        if t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"outputs.{cfg.name}.tls: cannot load the CA or client certificate ({exc}); check "
                          "ca_file / cert_file / key_file") from None
    ctx.check_hostname = t.verify_hostname
    return ctx


@OUTPUTS.register("mqtt", can_pulse=False)
class MqttOutput(Output):
    """Decisions and health to an MQTT broker through a persistent outbox.

    Args:
        clock: monotonic ns (injectable); wall_ns: wall-clock ns for message timestamps."""

    config_model = MqttOutputConfig
    can_pulse = False

    def __init__(self, cfg: MqttOutputConfig, clock: Callable[[], int] = time.monotonic_ns,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(cfg)
        self.clock = clock
        self.wall_ns = wall_ns
        self.run_uid = uuid.uuid4().hex[:8]
        self._in: queue.Queue[Any] = queue.Queue()
        self._errors: collections.deque[str] = collections.deque(maxlen=100)
        self.notes: list[str] = []  # startup notes (the daemon logs them as warnings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox_max_rows, cfg.outbox_drop)
        self._client: Any = None
        self._session_ok = False
        self._inflight: dict[int, int] = {}  # paho mid → outbox id
        self._acked: list[int] = []
        self._cursor = 0  # last outbox id handed to the current session
        self._tokens = 0.0
        self._t_tokens = 0
        self._next_connect = 0
        self._backoff = cfg.retry_initial_s
        self._down_since: int | None = None
        self._reported_down = False
        self._next_health = 0
        self._user: str | None = None
        self._password: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        # station state for the health message
        self.ready = False
        self.enabled = True
        self.fault_code = 0
        self.parts = 0
        self.rejects = 0
        self.last_beat_ns: int | None = None
        self.beat_interval_ns = 0
        self.bundle_id: str | None = None
        # figures (stats())
        self.sent = 0
        self.published = 0
        self.reconnects = 0
        self._connected_once = False

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError:
            raise DeviceError(f"outputs.{self.name}: the mqtt output needs paho-mqtt 2.x: pip install 'edgekit[plc]'") \
                from None
        self._user, self._password = credentials(self.cfg)
        self._tls = tls_context(self.cfg)
        self.outbox.open(f"outputs.{self.name}")
        if len(self.outbox):
            self.notes.append(f"outputs.{self.name}: {len(self.outbox)} results from an earlier run are still in "
                              f"the outbox {self.outbox.path}; sending them first")
        self._next_connect = self.clock()
        self._next_health = self.clock()
        self._thread = threading.Thread(target=self._loop, name=f"mqtt-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.cfg.shutdown_drain_s + self.cfg.timeout_s + 5)
        self._thread = None
        self.outbox.close()

    def healthy(self) -> bool:
        return self._session_ok

    def pop_errors(self) -> list[str]:
        out = list(self._errors)
        self._errors.clear()
        self.errors += len(out)
        return out

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"outbox_queued": len(self.outbox) + self._in.qsize(), "sent_total": self.sent,
                    "dropped_total": self.outbox.dropped, "published_total": self.published,
                    "reconnects_total": self.reconnects, "connected": int(self._session_ok)}

    # ------------------------------------------------------------------ line interface
    def publish_dict(self, decision: dict[str, Any]) -> None:
        self._in.put(decision)  # JSON, SQLite and the network happen in the worker

    def set_line(self, role: str, active: bool) -> None:
        if role == "ready":
            self.ready = active
        elif role == "heartbeat":
            now = self.clock()
            if self.last_beat_ns is not None:
                self.beat_interval_ns = now - self.last_beat_ns
            self.last_beat_ns = now

    def set_fault(self, code: int) -> None:
        self.fault_code = int(code)

    def reset_fault(self) -> None:
        self.fault_code = 0

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled

    # ------------------------------------------------------------------ payloads
    def result_payload(self, d: dict[str, Any]) -> bytes:
        mono, wall = self.clock(), self.wall_ns()

        def w(t: int | None) -> str | None:
            return _iso(wall - (mono - t)) if t is not None else None

        score = d.get("score")
        score = float(score) if score is not None and score == score else None
        t_cap, t_dec = d.get("t_capture_ns"), d.get("t_decided_ns")
        body = {"station": self.cfg.station, "uid": f"{self.run_uid}-{d['part_id']}", "part_id": d["part_id"],
                "decision": d["kind"], "failsafe": d.get("failsafe"), "score": score,
                "encoder_count": d.get("encoder_count"), "target_count": d.get("target_count"),
                "t_capture": w(t_cap), "t_decided": w(t_dec),
                "latency_ms": round((t_dec - t_cap) / 1e6, 3) if t_cap is not None and t_dec is not None else None,
                "bundle_id": d.get("bundle_id"), "model_id": d.get("model_id"), "image_path": d.get("image_path"),
                "enabled": d.get("enabled", True), "source": d.get("source_id")}
        return json.dumps(body, separators=(",", ":")).encode()

    def health_payload(self) -> bytes:
        now = self.clock()
        age = (now - self.last_beat_ns) / 1e9 if self.last_beat_ns is not None else None
        limit = max(3 * self.beat_interval_ns / 1e9, 1.0)
        with self._lock:
            queued = len(self.outbox) + self._in.qsize()
        body = {"station": self.cfg.station, "t": _iso(self.wall_ns()), "ready": self.ready,
                "healthy": bool(self.ready and age is not None and age < limit), "heartbeat_age_s": age,
                "enabled": self.enabled, "fault_code": self.fault_code, "parts": self.parts, "rejects": self.rejects,
                "bundle_id": self.bundle_id,
                "outbox": {"queued": queued, "sent": self.sent, "dropped": self.outbox.dropped}}
        return json.dumps(body, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ worker
    def _ingest(self) -> None:
        items = []
        while True:
            try:
                d = self._in.get_nowait()
            except queue.Empty:
                break
            self.parts += 1
            self.rejects += int(d.get("kind") == "reject")
            self.bundle_id = d.get("bundle_id") or self.bundle_id
            items.append((self.cfg.topic("result"), self.result_payload(d), self.cfg.qos))
        if items:
            with self._lock:
                dropped = self.outbox.add(items)
            if dropped:
                self._errors.append(f"outbox full ({self.cfg.outbox_max_rows} rows): {dropped} result(s) dropped "
                                    f"({self.cfg.outbox_drop} first), {self.outbox.dropped} in all")

    def _down(self, why: str) -> None:
        """The connection failed or was lost: drop the session; the outbox keeps everything."""
        now = self.clock()
        if self._down_since is None:
            self._down_since = now
        if not self._reported_down:
            self._reported_down = True
            self._errors.append(f"broker {self.cfg.host}:{self.cfg.port}: {why}; results are kept in the outbox "
                                f"({len(self.outbox)} queued) and sent when it is back")
        c, self._client = self._client, None
        self._session_ok = False
        self._inflight.clear()  # a new session resends them from the outbox
        sock = c.socket() if c is not None else None
        if sock is not None:
            try:
                sock.close()  # this client object is not used again
            except OSError as exc:
                self._errors.append(f"closing the lost connection: {exc}")
        self._next_connect = now + int(self._backoff * 1e9)
        self._backoff = min(self._backoff * 2, self.cfg.retry_max_s)

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.cfg.client_id or f"edgekit-{self.cfg.station}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.connect_timeout = self.cfg.timeout_s
        c.will_set(self.cfg.topic("status"), "offline", qos=1, retain=True)
        c.max_inflight_messages_set(self.cfg.max_inflight)
        if self._user:
            c.username_pw_set(self._user, self._password)
        if self._tls is not None:
            c.tls_set_context(self._tls)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c
        try:
            c.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except ssl.SSLError as exc:
            self._down(f"TLS handshake failed ({exc.reason or exc}); check tls.ca_file and the broker certificate")
        except OSError as exc:
            self._down(f"unreachable ({exc.strerror or exc.__class__.__name__})")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            self._down(f"refused the connection ({reason}); check username / password_env / password_file")
            return
        self._session_ok = True
        self._backoff = self.cfg.retry_initial_s
        self._cursor = 0  # a fresh session: everything still in the outbox goes again, oldest first
        self._inflight.clear()
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self._down_since = None
        self._reported_down = False
        client.publish(self.cfg.topic("status"), "online", qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if client is self._client:
            self._down(f"connection lost ({reason})")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if client is not self._client:
            return
        oid = self._inflight.pop(mid, None)
        if oid is not None:
            self._acked.append(oid)

    def _send(self, now: int) -> None:
        import paho.mqtt.client as mqtt

        rate = self.cfg.drain_rate_per_s
        self._tokens = min(max(10.0, rate / 5), self._tokens + (now - self._t_tokens) / 1e9 * rate)
        self._t_tokens = now
        room = self.cfg.max_inflight - len(self._inflight)
        n = min(int(self._tokens), room)
        if n <= 0:
            return
        for m in self.outbox.after(self._cursor, n):
            info = self._client.publish(m.topic, m.payload, qos=m.qos)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._down(f"publish failed ({mqtt.error_string(info.rc)})")
                return
            self.published += 1
            self._cursor = m.id
            self._tokens -= 1
            if m.qos == 0:
                self._acked.append(m.id)
            else:
                self._inflight[info.mid] = m.id

    def _flush_acks(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            with self._lock:
                self.outbox.remove(ids)
                self.sent += len(ids)

    def _health(self, now: int) -> None:
        if now >= self._next_health:
            self._next_health = now + int(self.cfg.health_period_s * 1e9)
            self._client.publish(self.cfg.topic("health"), self.health_payload(), qos=self.cfg.qos, retain=True)

    def _step(self, timeout_s: float) -> None:
        """One round: take new results, keep the connection, send, receive acknowledgements."""
        import paho.mqtt.client as mqtt

        self._ingest()
        now = self.clock()
        if self._client is None:
            if now >= self._next_connect:
                self._connect()
            else:
                self._stop.wait(min(timeout_s, (self._next_connect - now) / 1e9))
            return
        if self._session_ok:
            self._send(now)
            self._health(now)
        rc = self._client.loop(timeout=timeout_s)
        self._flush_acks()
        if rc != mqtt.MQTT_ERR_SUCCESS and self._client is not None:
            self._down(f"connection lost ({mqtt.error_string(rc)})")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step(0.02)
            except Exception as exc:  # never let the worker die: report, drop the session, retry
                self._errors.append(f"worker: {exc.__class__.__name__}: {exc}")
                self._down("internal error")
        self._shutdown()

    def _shutdown(self) -> None:
        """Send what is queued (up to ``shutdown_drain_s``), then ``offline`` and a clean disconnect.
        What is left stays in the outbox for the next start."""
        end = self.clock() + int(self.cfg.shutdown_drain_s * 1e9)
        try:
            while self.clock() < end:
                self._ingest()
                if self._client is not None and self._session_ok and not len(self.outbox) and not self._inflight:
                    break
                self._step(0.02)
            self._ingest()
            if self._client is not None and self._session_ok:
                info = self._client.publish(self.cfg.topic("status"), "offline", qos=1, retain=True)
                t_end = self.clock() + int(1e9)
                while not info.is_published() and self._client is not None and self.clock() < t_end:
                    self._client.loop(timeout=0.02)
                self._flush_acks()
                if self._client is not None:
                    self._client.disconnect()
                    self._client.loop(timeout=0.05)
        except Exception as exc:  # shutdown is best effort; the outbox holds what was not sent
            self._errors.append(f"shutdown: {exc.__class__.__name__}: {exc}")
        if len(self.outbox):
            self._errors.append(f"shutdown: {len(self.outbox)} results not yet acknowledged stay in the outbox "
                                f"{self.outbox.path} and are sent at the next start")
