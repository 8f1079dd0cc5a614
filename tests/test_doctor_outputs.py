"""edgekit doctor's per-output checks (edgekit/doctor_outputs.py) against real listeners on
127.0.0.1: a free or foreign-held port, a running edgekit Modbus server, a real mosquitto."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest
import yaml

from edgekit.doctor_outputs import check_outputs_reachable
from edgekit.runtime.outputs.modbus_server import ModbusServerOutput, ModbusServerOutputConfig

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cfg(tmp_path, *outputs) -> dict:
    return {"bundle": str(tmp_path / "b"), "source": {"type": "folder", "path": str(tmp_path)},
            "outputs": list(outputs)}


def test_modbus_server_port_free_foreign_or_ours(tmp_path) -> None:
    port = _port()
    [r] = check_outputs_reachable(_cfg(tmp_path, {"type": "modbus_server", "name": "plc", "port": port}))
    assert r.status == "ok" and f"127.0.0.1:{port} free" in r.detail
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        [r] = check_outputs_reachable(_cfg(tmp_path, {"type": "modbus_server", "name": "plc", "port": port}))
    assert r.status == "fail" and "already in use" in r.detail and "ss -ltnp" in r.fix
    out = ModbusServerOutput(ModbusServerOutputConfig(port=port, shutdown_drain_s=0))
    out.open()
    try:  # doctor on a live station: the daemon's own server holds the port
        [r] = check_outputs_reachable(_cfg(tmp_path, {"type": "modbus_server", "name": "plc", "port": port}))
    finally:
        out.close()
    assert r.status == "ok" and "served by a running edgekit" in r.detail


def test_opcua_listen_address_and_security(tmp_path) -> None:
    port = _port()
    ok, warn = check_outputs_reachable(_cfg(
        tmp_path, {"type": "opcua", "name": "ua", "endpoint": f"opc.tcp://127.0.0.1:{port}"},
        {"type": "opcua", "name": "ua2", "endpoint": f"opc.tcp://0.0.0.0:{_port()}", "insecure": True}))
    assert ok.status == "ok" and "no security (loopback only)" in ok.detail
    assert warn.status == "warn" and "WITHOUT security" in warn.detail and "opcua-cert" in warn.fix
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(_cfg(tmp_path, {"type": "opcua", "name": "ua", "endpoint": f"opc.tcp://0.0.0.0:{port}"})))
    [r] = check_outputs_reachable(str(p))
    assert r.status == "ok" and "created at first start" in r.detail and str(tmp_path / "opcua-pki") in r.detail


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed (apt-get install mosquitto)")
def test_mqtt_broker_reachable_refused_and_credentials(tmp_path) -> None:
    port = _port()
    base = {"type": "mqtt", "name": "mes", "host": "127.0.0.1", "port": port, "station": "s1",
            "outbox_path": str(tmp_path / "ob.db")}
    [r] = check_outputs_reachable(_cfg(tmp_path, base))
    assert r.status == "fail" and "refused the connection" in r.detail and "outbox" in r.fix
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        [r] = check_outputs_reachable(_cfg(tmp_path, base))
        assert r.status == "ok" and "accepts this station" in r.detail and "s1" in r.detail
        [r] = check_outputs_reachable(_cfg(tmp_path, {**base, "password_file": str(tmp_path / "nope")}))
        assert r.status == "fail" and "password_file: cannot read" in r.detail
    finally:
        proc.terminate()
        proc.wait(timeout=10)
