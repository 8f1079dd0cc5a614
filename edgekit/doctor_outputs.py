"""``edgekit doctor``: one check per configured plant-integration output, each with a fix.

* ``modbus_server`` / ``opcua``: the listen address is free (or already served by a running
  edgekit — doctor on a live station), a port below 1024 has CAP_NET_BIND_SERVICE, OPC UA
  security has its certificate (or will create it at first start);
* ``mqtt``: the broker accepts a connection (TCP, TLS, MQTT CONNECT with the configured
  credentials) and the outbox directory is writable.

The Modbus client output (``modbus``, the PLC as server) is checked by doctor's ``plc`` check."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from edgekit.doctor import CheckResult, _fail, _ok
from edgekit.errors import EdgekitError
from edgekit.runtime.outputs.netcheck import bind_problem, connect_problem


def check_outputs_reachable(cfg: Any, timeout_s: float = 2.0) -> list[CheckResult]:
    """Checks for every modbus_server, opcua and mqtt output of ``cfg`` (a ``RunConfig``, or a
    run-config path / mapping, validated here); nothing when the config has none."""
    if cfg is None:
        return []
    if not hasattr(cfg, "outputs"):
        from edgekit.config.run import load_run_config, parse_run_config

        try:
            cfg = load_run_config(cfg) if isinstance(cfg, (str, Path)) else parse_run_config(cfg)
        except EdgekitError:
            return []  # doctor's config check reports why
    out: list[CheckResult] = []
    for o in cfg.outputs:
        check = _CHECKS.get(o.type)
        if check is not None:
            try:
                out.append(check(o, timeout_s))
            except Exception as exc:  # noqa: BLE001 (a crashed check is a failed line, never a crash)
                out.append(_fail(f"output {o.name}", f"check crashed: {exc.__class__.__name__}: {exc}",
                                 "run `edgekit --debug doctor` and report the traceback"))
    return out


def _listener(name: str, host: str, port: int, is_ours: Any, timeout_s: float) -> tuple[str | None, str]:
    """(problem, detail) for a port we must listen on; a port held by a running edgekit is fine."""
    problem = bind_problem(host, port, name)
    if problem is None:
        return None, f"{host}:{port} free"
    if "already in use" in problem:
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
        try:
            if is_ours(probe_host, port, timeout_s):
                return None, f"{host}:{port} served by a running edgekit"
        except Exception:  # noqa: BLE001 (not ours: the in-use problem stands)
            return problem, ""
    return problem, ""


def _edgekit_modbus(host: str, port: int, timeout_s: float, base: int = 0) -> bool:
    from pymodbus.client import ModbusTcpClient

    from edgekit.runtime.outputs.modbus_server import MAP_VERSION, MAP_VERSION_REG

    c = ModbusTcpClient(host, port=port, timeout=timeout_s, retries=0)
    try:
        if not c.connect():
            return False
        rr = c.read_holding_registers(base + MAP_VERSION_REG, count=1, device_id=1)
        return not rr.isError() and rr.registers[0] == MAP_VERSION
    finally:
        c.close()


def check_modbus_server(o: Any, timeout_s: float) -> CheckResult:
    name = f"output {o.name}"
    problem, detail = _listener(name, o.host, o.port,
                                lambda h, p, t: _edgekit_modbus(h, p, t, o.base_address), timeout_s)
    if problem:
        return _fail(name, f"Modbus server {o.host}:{o.port}: {problem.split(': ', 1)[1]}", _fix(problem))
    scope = "this machine only" if o.host.startswith("127.") else "the network"
    return _ok(name, f"Modbus server {detail} (reachable from {scope}); PLCs poll unit "
                     f"{o.unit or 'any'}, registers from {o.base_address} (docs/plc.md, server mode)")


def _edgekit_opcua(host: str, port: int, timeout_s: float, namespace: str) -> bool:
    import asyncio

    from asyncua import Client

    async def probe() -> bool:
        c = Client(f"opc.tcp://{host}:{port}", timeout=timeout_s)
        eps = await c.connect_and_get_server_endpoints()
        return any(e.Server.ApplicationUri == namespace for e in eps)

    return asyncio.run(probe())


def check_opcua(o: Any, timeout_s: float) -> CheckResult:
    from edgekit.runtime.outputs.opcua import SECURE, certificate_paths, certificate_thumbprint

    name = f"output {o.name}"
    problem, detail = _listener(name, o.host, o.port,
                                lambda h, p, t: _edgekit_opcua(h, p, t, o.namespace), timeout_s)
    if problem:
        return _fail(name, f"OPC UA {o.endpoint}: {problem.split(': ', 1)[1]}", _fix(problem))
    if o.secured:
        cert, key = certificate_paths(o)
        if cert.exists() and key.exists():
            sec = f"{SECURE}, certificate {cert} (SHA-1 {certificate_thumbprint(cert)})"
        elif os.access(cert.parent if cert.parent.exists() else cert.parent.parent, os.W_OK):
            sec = f"{SECURE}; the certificate is created at first start in {cert.parent} (or now: edgekit opcua-cert)"
        else:
            return _fail(name, f"OPC UA {o.endpoint}: {SECURE} needs a certificate in {cert.parent}, which cannot "
                               "be created there", "run `edgekit opcua-cert CONFIG` as a user that may write it, or "
                               "set cert_dir to a writable directory")
    elif o.loopback:
        sec = "no security (loopback only)"
    else:
        return _fail(name, f"OPC UA {o.endpoint} serves the network WITHOUT security (insecure: true)",
                     f"set security: {SECURE} and run `edgekit opcua-cert CONFIG`", optional=True)
    return _ok(name, f"OPC UA {detail}; {sec}")


def check_mqtt(o: Any, timeout_s: float) -> CheckResult:
    name = f"output {o.name}"
    target = f"{o.host}:{o.port}"
    outbox = Path(o.outbox_path)
    parent = next((p for p in [outbox.parent, *outbox.parent.parents] if p.exists()), Path("/"))
    if not os.access(parent, os.W_OK):
        return _fail(name, f"MQTT outbox {outbox}: {parent} is not writable by this user",
                     "create the directory for the service user or set outbox_path (results wait there while the "
                     "broker is away)")
    problem = connect_problem(o.host, o.port, f"MQTT broker {target}", timeout_s)
    if problem:
        return _fail(name, problem, "start the broker / correct host and port; the station keeps results in its "
                                    "outbox meanwhile (docs/mqtt.md)")
    try:
        answer = _mqtt_connect(o, timeout_s)
    except EdgekitError as exc:
        return _fail(name, str(exc), "fix the file or variable named in the message")
    if answer != "Success":
        return _fail(name, f"MQTT broker {target} refused the connection ({answer})",
                     f"check username / {o.password_env} / password_file and the broker's ACL for "
                     f"{o.prefix}/{o.station}/#")
    return _ok(name, f"MQTT broker {target} accepts this station (topics {o.prefix}/{o.station}/…, "
                     f"{'TLS, ' if o.tls else ''}QoS {o.qos}); outbox {outbox} ({'exists' if outbox.exists() else 'new'})")


def _mqtt_connect(o: Any, timeout_s: float) -> str:
    """MQTT CONNECT with the output's credentials and TLS; the CONNACK reason, or why none came."""
    import paho.mqtt.client as mqtt

    from edgekit.runtime.outputs.mqtt import credentials, tls_context

    user, password = credentials(o)
    ctx = tls_context(o)
    answer: list[str] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edgekit-doctor-{o.station}-{os.getpid()}",
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.connect_timeout = timeout_s
    if user:
        c.username_pw_set(user, password)
    if ctx is not None:
        c.tls_set_context(ctx)
    c.on_connect = lambda client, userdata, flags, reason, props: answer.append(str(reason))
    try:
        c.connect(o.host, o.port, keepalive=10)
        end = time.monotonic() + timeout_s
        while not answer and time.monotonic() < end:
            c.loop(timeout=0.05)
        if answer and answer[0] == "Success":
            c.disconnect()
            c.loop(timeout=0.05)
    except (OSError, ValueError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        sock = c.socket()
        if sock is not None:
            sock.close()
    return answer[0] if answer else f"no CONNACK within {timeout_s:.0f} s"


def _fix(problem: str) -> str:
    if "CAP_NET_BIND_SERVICE" in problem:
        return "AmbientCapabilities=CAP_NET_BIND_SERVICE in the service unit, or a port >= 1024"
    if "already in use" in problem:
        return "stop the other server (ss -ltnp shows it) or configure another port"
    if "not an address of this machine" in problem:
        return "set host to an interface address of this machine, 127.0.0.1 or 0.0.0.0"
    return "check host and port"


_CHECKS = {"modbus_server": check_modbus_server, "opcua": check_opcua, "mqtt": check_mqtt}

__all__ = ["check_outputs_reachable"]
