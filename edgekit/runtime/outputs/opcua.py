"""OPC UA server output (asyncua): each result, the counters, health and the decision band in a
namespace ``urn:edgekit:<station>``, with methods for the line's control system (docs/plc.md,
*OPC UA node set*).

``Objects/Inspection`` (namespace ``urn:edgekit:<station>``):

* ``LastResult`` — structured variable (``InspectionResultDataType``: ResultId, PartId,
  Decision, ResultState, Score, EncoderCount, TargetCount, CreationTime, CaptureTime,
  FailsafeReason, BundleId), one data change per result, so a subscribing client (queue size ≥ the
  results per publishing interval) gets every result without polling; its fields are also child
  variables of the same names for clients without structure support (written first, the structure
  last);
* ``Counters`` — Parts, Accepts, Rejects, Reviews, Failsafes, Dropped (UInt64);
* ``Health`` — Ready, Healthy, Enabled (Boolean), FaultCode (UInt16), Heartbeat (UInt32);
* ``Band`` — AcceptEdge, RejectEdge (Double);
* methods ``ResetFault``, ``Enable``, ``Disable``, ``Trigger`` (no arguments; Boolean out:
  accepted — the daemon applies them and records each in the event log).

Names follow OPC 40100 (Machine Vision) where they fit — ``ResultId``, ``PartId``,
``CreationTime``, ``ResultState`` (> 0 good, < 0 bad), ``InternalRecipeId`` ≈ ``BundleId`` — but
this is not the companion specification's ``VisionSystemType`` (no state machine, recipe or result
management, and data changes instead of ``ResultReadyEventType`` events).

Security: ``opc.tcp://127.0.0.1:4840`` by default, without security on loopback. Any other
address needs ``Basic256Sha256`` / ``SignAndEncrypt`` with the server certificate in ``cert_dir``
(generated on first start, or beforehand with ``edgekit opcua-cert``); clients are then refused
unless they bring a certificate (and, with ``trusted_clients_dir``, one that is in it). ``insecure:
true`` serves without security anyway and says so at every start. The server runs in its own
thread and asyncio loop (and by default in a process of its own, ``process: own``), so a slow or
stuck client never delays the line."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from edgekit.config.base import StrictModel
from edgekit.errors import ConfigError, DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output
from edgekit.runtime.outputs.netcheck import bind_problem, is_loopback

SECURE = "Basic256Sha256_SignAndEncrypt"
CERT_FILE, KEY_FILE = "server_cert.der", "server_key.pem"
RESULT_STATES = {"accept": 1, "review": 2, "reject": -1}  # fail-safe reject: -2
_FIELDS = (("ResultId", "UInt32"), ("PartId", "UInt64"), ("Decision", "String"), ("ResultState", "Int32"),
           ("Score", "Double"), ("EncoderCount", "UInt64"), ("TargetCount", "UInt64"), ("CreationTime", "DateTime"),
           ("CaptureTime", "DateTime"), ("FailsafeReason", "String"), ("BundleId", "String"))


class OpcUaOutputConfig(StrictModel):
    type: Literal["opcua"] = "opcua"
    name: str = "opcua"
    endpoint: str = "opc.tcp://127.0.0.1:4840"
    station: str = Field(default_factory=lambda: socket.gethostname().split(".")[0] or "station")
    # auto: none on loopback, Basic256Sha256 SignAndEncrypt on any other address
    security: Literal["auto", "none", "Basic256Sha256_SignAndEncrypt"] = "auto"
    insecure: bool = False  # serve beyond loopback without security (warned at every start)
    cert_dir: str = "opcua-pki"  # server_cert.der + server_key.pem, relative to the run config
    trusted_clients_dir: str | None = None  # only client certificates found here are accepted
    max_pending: int = Field(10_000, ge=1)  # results waiting for the server loop; beyond: dropped, counted
    # at shutdown: time for subscribed clients to be sent the last results (≥ their publishing interval)
    shutdown_linger_s: float = Field(0.5, ge=0, le=10)
    process: Literal["own", "line"] = "own"  # own: a process of its own (outputs/sidecar.py)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme != "opc.tcp" or not u.hostname or not u.port:
            raise ValueError("must look like opc.tcp://HOST:PORT (e.g. opc.tcp://127.0.0.1:4840)")
        return v

    @model_validator(mode="after")
    def _security(self) -> OpcUaOutputConfig:
        if self.security == "none" and not self.loopback and not self.insecure:
            raise ValueError(f"endpoint {self.endpoint} is reachable beyond this machine: it needs security "
                             f"{SECURE} (run edgekit opcua-cert), or insecure: true to serve without it")
        return self

    @property
    def host(self) -> str:
        return str(urlparse(self.endpoint).hostname)

    @property
    def port(self) -> int:
        return int(urlparse(self.endpoint).port or 4840)

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def secured(self) -> bool:
        if self.security == "auto":
            return not self.loopback and not self.insecure
        return self.security == SECURE

    @property
    def namespace(self) -> str:
        return f"urn:edgekit:{self.station}"


def certificate_paths(cfg: OpcUaOutputConfig) -> tuple[Path, Path]:
    d = Path(cfg.cert_dir)
    return d / CERT_FILE, d / KEY_FILE


def make_certificate(cfg: OpcUaOutputConfig, days: int = 3650, overwrite: bool = False) -> tuple[Path, Path, bool]:
    """Create the server's key and self-signed application certificate (OPC 10000-6 6.2.2: the
    application URI and the endpoint host in subjectAltName) unless both exist. Returns (cert,
    key, created)."""
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = certificate_paths(cfg)
    if cert.exists() and key.exists() and not overwrite:
        return cert, key, False
    try:
        cert.parent.mkdir(parents=True, exist_ok=True)
        pk = generate_private_key()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(cfg.namespace),
                                         x509.DNSName(socket.gethostname())]
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(cfg.host)))
        except ValueError:
            names.append(x509.DNSName(cfg.host))
        c = generate_self_signed_app_certificate(pk, f"edgekit {cfg.station}", {"organizationName": "edgekit"},
                                                 names, [ExtendedKeyUsageOID.SERVER_AUTH], days=days)
        key.write_bytes(dump_private_key_as_pem(pk))
        key.chmod(0o600)
        cert.write_bytes(c.public_bytes(Encoding.DER))
    except OSError as exc:
        raise ConfigError(f"outputs.{cfg.name}.cert_dir: cannot write the certificate to {cert.parent} "
                          f"({exc.strerror}); make it writable by the service user or set cert_dir") from None
    return cert, key, True


def certificate_thumbprint(path: Path) -> str:
    """SHA-1 thumbprint (what OPC UA clients show when asked to trust a server)."""
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest().upper()  # noqa: S324 (the OPC UA convention, not security)


def _utc(ns: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc) if ns is not None else None


@OUTPUTS.register("opcua", can_pulse=False)
class OpcUaOutput(Output):
    """The OPC UA server (see the module docstring).

    Args:
        clock: monotonic ns (injectable); wall_ns: wall-clock ns for CreationTime / CaptureTime."""

    config_model = OpcUaOutputConfig
    can_pulse = False

    def __init__(self, cfg: OpcUaOutputConfig, clock: Callable[[], int] = time.monotonic_ns,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        super().__init__(cfg)
        self.clock = clock
        self.wall_ns = wall_ns
        self.notes: list[str] = []
        self._errors: list[str] = []
        self._controls: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: str | None = None
        self._server: Any = None
        self._queue: asyncio.Queue[Any] | None = None
        self._pending = 0
        self.nodes: dict[str, Any] = {}
        self.counts = {"Parts": 0, "Accepts": 0, "Rejects": 0, "Reviews": 0, "Failsafes": 0, "Dropped": 0}
        self.published = 0
        self.result_id = 0
        self.result_cls: Any = None
        self._ready = False
        self._dropped_shown = 0
        self._beats = 0
        self._last_beat_ns: int | None = None
        self._beat_interval_ns = 0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        try:
            import asyncua  # noqa: F401
        except ImportError:
            raise DeviceError(f"outputs.{self.name}: the opcua output needs asyncua: pip install 'edgekit[plc]'") \
                from None
        what = f"outputs.{self.name}"
        problem = bind_problem(self.cfg.host, self.cfg.port, what)
        if problem:
            raise DeviceError(problem)
        if self.cfg.secured:
            cert, _, created = make_certificate(self.cfg)
            if created:
                self.notes.append(f"{what}: created the OPC UA server certificate {cert} (SHA-1 "
                                  f"{certificate_thumbprint(cert)}); let the clients trust it")
        elif not self.cfg.loopback:
            self.notes.append(f"{what}: OPC UA server on {self.cfg.endpoint} WITHOUT security (insecure: true): "
                              "anyone on the network can read results and call ResetFault/Enable/Disable; "
                              f"use security {SECURE} (edgekit opcua-cert)")
        for name in ("asyncua", "asyncua.server", "asyncua.client"):
            logging.getLogger(name).setLevel(logging.ERROR)  # per-connection chatter
        self._thread = threading.Thread(target=self._serve, name=f"opcua-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(120.0) or self._start_error:
            raise DeviceError(f"{what}: OPC UA server on {self.cfg.endpoint} did not start "
                              f"({self._start_error or 'timeout'}); check endpoint and cert_dir")

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except Exception as exc:  # start failed or the server died: reported, the line keeps going
            self._start_error = f"{exc.__class__.__name__}: {exc}"
            if self._started.is_set():
                with self._lock:
                    self._errors.append(f"OPC UA server stopped: {self._start_error}")
            self._started.set()
        finally:
            loop.close()

    async def _build(self) -> Any:
        from asyncua import Server, ua
        from asyncua.common.structures104 import new_struct, new_struct_field

        cfg = self.cfg
        # asyncua lets a client without a certificate open a SecurityPolicy#None channel (for
        # GetEndpoints) and, unless told otherwise, activate a session on it even when only
        # SignAndEncrypt endpoints are offered: with security on, a session needs a certificate
        server = Server(user_manager=_CertificateRequired() if cfg.secured else None)
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name(f"edgekit {cfg.station}")
        await server.set_application_uri(cfg.namespace)
        if cfg.secured:
            cert, key = certificate_paths(cfg)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            if cfg.trusted_clients_dir:
                from asyncua.crypto.truststore import TrustStore
                from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

                store = TrustStore([Path(cfg.trusted_clients_dir)], [])
                await store.load()
                server.set_certificate_validator(CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store))
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(cfg.namespace)
        dtype, _ = await new_struct(server, idx, "InspectionResultDataType",
                                    [new_struct_field(n, getattr(ua.VariantType, t)) for n, t in _FIELDS])
        await server.load_data_type_definitions()
        self.result_cls = getattr(ua, "InspectionResultDataType")  # noqa: B009 (created at run time)
        insp = await server.nodes.objects.add_object(idx, "Inspection")
        n = self.nodes
        n["LastResult"] = await insp.add_variable(idx, "LastResult", ua.Variant(self.result_cls(), ua.VariantType.ExtensionObject),
                                                  datatype=dtype.nodeid)
        for name, t in _FIELDS:
            vt = getattr(ua.VariantType, t)
            n[f"LastResult.{name}"] = await n["LastResult"].add_variable(idx, name, ua.Variant(_zero(t), vt))
        for group, items in (("Counters", [(k, "UInt64", 0) for k in self.counts]),
                             ("Health", [("Ready", "Boolean", False), ("Healthy", "Boolean", False),
                                         ("Enabled", "Boolean", True), ("FaultCode", "UInt16", 0),
                                         ("Heartbeat", "UInt32", 0)]),
                             ("Band", [("AcceptEdge", "Double", 0.0), ("RejectEdge", "Double", 0.0)])):
            obj = await insp.add_object(idx, group)
            for name, t, v in items:
                n[f"{group}.{name}"] = await obj.add_variable(idx, name, ua.Variant(v, getattr(ua.VariantType, t)))
        for method, action in (("ResetFault", "reset_fault"), ("Enable", "enable"), ("Disable", "disable"),
                               ("Trigger", "trigger")):
            await insp.add_method(idx, method, self._method(action), [], [ua.VariantType.Boolean])
        return server

    def _method(self, action: str) -> Callable[..., Any]:
        from asyncua import ua

        def call(parent: Any) -> list[Any]:
            with self._lock:
                self._controls.append((action, f"opcua:{self.name}", self.clock()))
            return [ua.Variant(True, ua.VariantType.Boolean)]

        return call

    async def _main(self) -> None:
        self._queue = asyncio.Queue()
        self._server = await self._build()
        await self._server.start()
        self._started.set()
        healthy = False
        while True:
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                item = ("tick",)
            if item is None:
                break
            try:
                await self._apply(*item)
                # Healthy: READY and the heartbeat running (it stops when the pipeline stalls)
                beat = self._last_beat_ns
                now_healthy = self._ready and beat is not None and self.clock() - beat < 3 * self._beat_period_ns()
                if now_healthy != healthy:
                    healthy = now_healthy
                    await self._write("Health.Healthy", healthy, "Boolean")
            except Exception as exc:  # one bad update must not stop the server
                with self._lock:
                    self._errors.append(f"OPC UA update {item[0]}: {exc.__class__.__name__}: {exc}")
            finally:
                if item[0] != "tick":
                    with self._lock:
                        self._pending -= 1
        await asyncio.sleep(self.cfg.shutdown_linger_s)
        await self._server.stop()

    def _beat_period_ns(self) -> int:
        return max(self._beat_interval_ns, 100_000_000)

    async def _write(self, key: str, value: Any, vtype: str) -> None:
        from asyncua import ua

        await self.nodes[key].write_value(ua.Variant(value, getattr(ua.VariantType, vtype)))

    async def _apply(self, kind: str, *args: Any) -> None:
        from asyncua import ua

        if kind == "result":
            d, mono, wall = args
            self.result_id = self.result_id % 0xFFFFFFFF + 1
            fs = d.get("failsafe")
            score = d.get("score")
            state = -2 if (fs and d["kind"] == "reject") else RESULT_STATES.get(d["kind"], 0)
            vals = {"ResultId": self.result_id, "PartId": int(d["part_id"]), "Decision": d["kind"],
                    "ResultState": state, "Score": float(score) if score is not None else float("nan"),
                    "EncoderCount": int(d.get("encoder_count") or 0), "TargetCount": int(d.get("target_count") or 0),
                    "CreationTime": _utc(wall - (mono - d["t_decided_ns"])) if d.get("t_decided_ns") else _utc(wall),
                    "CaptureTime": _utc(wall - (mono - d["t_capture_ns"])) if d.get("t_capture_ns") else _utc(wall),
                    "FailsafeReason": fs or "", "BundleId": d.get("bundle_id") or ""}
            for name, t in _FIELDS:
                await self._write(f"LastResult.{name}", vals[name], t)
            keys = ["Parts", {"accept": "Accepts", "reject": "Rejects", "review": "Reviews"}.get(d["kind"], "Parts")]
            if fs:
                keys.append("Failsafes")
            for k in dict.fromkeys(keys):
                self.counts[k] += 1
                await self._write(f"Counters.{k}", self.counts[k], "UInt64")
            await self.nodes["LastResult"].write_value(ua.Variant(self.result_cls(**vals), ua.VariantType.ExtensionObject))
            self.published += 1
        elif kind == "health":
            name, value, vtype = args
            await self._write(f"Health.{name}", value, vtype)
        elif kind == "band":
            await self._write("Band.AcceptEdge", float(args[0]), "Double")
            await self._write("Band.RejectEdge", float(args[1]), "Double")
        elif kind == "tick" and self.counts["Dropped"] != self._dropped_shown:
            self._dropped_shown = self.counts["Dropped"]
            await self._write("Counters.Dropped", self._dropped_shown, "UInt64")

    def _submit(self, *item: Any) -> None:
        loop = self._loop
        if loop is None or self._queue is None or not loop.is_running():
            return
        with self._lock:
            if self._pending >= self.cfg.max_pending:  # the server loop is stuck: never wait for it
                self.counts["Dropped"] += 1
                if self.counts["Dropped"] == 1:
                    self._errors.append(f"OPC UA server busy: {self.cfg.max_pending} updates pending, later "
                                        "results are dropped (Counters.Dropped)")
                return
            self._pending += 1
        loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        if self._thread is None:
            return
        loop = self._loop
        if loop is not None and loop.is_running() and self._queue is not None:
            loop.call_soon_threadsafe(self._queue.put_nowait, None)
        self._thread.join(timeout=15)
        self._thread = None

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._start_error is None

    def pop_errors(self) -> list[str]:
        with self._lock:
            out, self._errors = self._errors, []
        self.errors += len(out)
        return out

    def pop_controls(self) -> list[tuple[str, str, int]]:
        with self._lock:
            out, self._controls = self._controls, []
        return out

    def stats(self) -> dict[str, float]:
        return {"published_total": self.published, "dropped_total": self.counts["Dropped"], "pending": self._pending}

    # ------------------------------------------------------------------ line interface
    def publish_dict(self, decision: dict[str, Any]) -> None:
        self._submit("result", decision, self.clock(), self.wall_ns())

    def set_line(self, role: str, active: bool) -> None:
        if role == "ready":
            self._ready = bool(active)
            self._submit("health", "Ready", bool(active), "Boolean")
        elif role == "heartbeat":
            now = self.clock()
            if self._last_beat_ns is not None:
                self._beat_interval_ns = now - self._last_beat_ns
            self._last_beat_ns = now
            self._beats += 1
            self._submit("health", "Heartbeat", self._beats & 0xFFFFFFFF, "UInt32")

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        self._submit("band", accept_edge, reject_edge)

    def set_fault(self, code: int) -> None:
        self._submit("health", "FaultCode", int(code) & 0xFFFF, "UInt16")

    def reset_fault(self) -> None:
        self._submit("health", "FaultCode", 0, "UInt16")

    def set_enabled(self, enabled: bool) -> None:
        self._submit("health", "Enabled", bool(enabled), "Boolean")

    def roles(self) -> set[str]:
        return {"ready", "heartbeat"}


class _CertificateRequired:
    """asyncua user manager: a session is activated only for a client that presented a
    certificate (on the secure channel or as its identity token); otherwise BadUserAccessDenied."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        return User(role=UserRole.User) if certificate else None  # None channel: no (empty) certificate


def _zero(t: str) -> Any:
    if t == "String":
        return ""
    if t == "DateTime":
        return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    if t == "Double":
        return 0.0
    return 0
