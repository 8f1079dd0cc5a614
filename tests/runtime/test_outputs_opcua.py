"""OPC UA output (asyncua) on 127.0.0.1: a real asyncua client subscribes to every result of a
simulated run and calls the methods; with security on, a client without a certificate is refused."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from asyncua.sync import Client

from edgekit.runtime.outputs.opcua import OpcUaOutputConfig, certificate_thumbprint, make_certificate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client_cert(tmp: Path) -> tuple[Path, Path]:
    """A client application certificate (what a SCADA/MES client brings)."""
    from asyncua.crypto.cert_gen import (
        dump_private_key_as_pem,
        generate_private_key,
        generate_self_signed_app_certificate,
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = generate_private_key()
    cert = generate_self_signed_app_certificate(key, "test client", {}, [x509.UniformResourceIdentifier(
        "urn:freeopcua:client")], [ExtendedKeyUsageOID.CLIENT_AUTH])
    (tmp / "client_key.pem").write_bytes(dump_private_key_as_pem(key))
    (tmp / "client_cert.der").write_bytes(cert.public_bytes(Encoding.DER))
    return tmp / "client_cert.der", tmp / "client_key.pem"


async def _session_without_certificate(endpoint: str) -> list[str]:
    """What a client without a certificate gets: asyncua's client already refuses to create a
    session (no matching endpoint); driving the protocol by hand over a SecurityPolicy#None channel
    (allowed for GetEndpoints), the server must refuse to activate the session and to serve it."""
    from asyncua import Client as AsyncClient
    from asyncua import ua

    out = []
    c = AsyncClient(endpoint, timeout=5)
    try:
        await c.connect()
    except Exception as exc:
        out.append(repr(exc))
    c = AsyncClient(endpoint, timeout=5)
    await c.connect_socket()
    try:
        await c.send_hello()
        await c.open_secure_channel()
        params = ua.CreateSessionParameters(ClientNonce=b"0" * 32, EndpointUrl=endpoint, SessionName="no-cert",
                                            RequestedSessionTimeout=60000, ClientDescription=ua.ApplicationDescription(
                                                ApplicationUri="urn:no-cert", ApplicationType=ua.ApplicationType.Client))
        await c.uaclient.create_session(params)
        activate = ua.ActivateSessionParameters(UserIdentityToken=ua.AnonymousIdentityToken(PolicyId="anonymous"),
                                                ClientSignature=ua.SignatureData())
        for step in (c.uaclient.activate_session(activate), c.nodes.objects.get_children()):
            try:
                await step
                out.append("served")
            except ua.UaStatusCodeError as exc:
                out.append(exc.__class__.__name__)
    finally:
        c.disconnect_socket()
    return out


def _node(c: Client, ns: int, path: str):
    return c.nodes.objects.get_child([f"{ns}:{p}" for p in ["Inspection", *path.split(".")]])


def test_config_beyond_loopback_needs_security_or_an_explicit_insecure(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs security Basic256Sha256_SignAndEncrypt"):
        OpcUaOutputConfig(endpoint="opc.tcp://0.0.0.0:4840", security="none")
    assert OpcUaOutputConfig(endpoint="opc.tcp://0.0.0.0:4840").secured
    assert not OpcUaOutputConfig(endpoint="opc.tcp://0.0.0.0:4840", insecure=True).secured
    assert not OpcUaOutputConfig().secured  # loopback default: plain
    cfg = OpcUaOutputConfig(endpoint="opc.tcp://192.0.2.7:4840", station="s", cert_dir=str(tmp_path))
    cert, key, created = make_certificate(cfg)
    assert created and key.stat().st_mode & 0o777 == 0o600
    from cryptography import x509

    san = x509.load_der_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "urn:edgekit:s" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert make_certificate(cfg)[2] is False  # kept on the next start


def test_secured_server_streams_every_result_of_a_500_part_run_to_a_subscriber(intensity_bundle, tmp_path,
                                                                           monkeypatch) -> None:
    """The real daemon on the simulated conveyor with a fake GPIO reject line and the OPC UA server
    (in its own process, the default) with Basic256Sha256 SignAndEncrypt: a client without a
    certificate is refused; one with a certificate subscribes to LastResult, gets each of the 500
    results once, in order, with the values the event log holds, and calls ResetFault, which
    reaches Daemon.control."""
    from edgekit.config.run import parse_run_config
    from edgekit.runtime.events import read_events
    from edgekit.runtime.lineproc import LineProcess
    from edgekit.sim.bundles import write_intensity_dataset
    from edgekit.sim.checker import line_problems
    from edgekit.sim.run import prepare_config, simulate_config
    from tests.sim.test_simulate import sim_config

    data = write_intensity_dataset(tmp_path / "data")
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}"
    cfg = sim_config(intensity_bundle, data, tmp_path, "encoder", parts=500,
                     outputs=[{"type": "fake_gpio"},
                              {"type": "opcua", "endpoint": endpoint, "station": "line1", "shutdown_linger_s": 1.0,
                               "security": "Basic256Sha256_SignAndEncrypt", "cert_dir": str(tmp_path / "pki")}],
                     encoder={"type": "sim", "speed_mm_s": 1000.0, "ticks_per_mm": 1.0},  # 100 parts/s
                     decision={"deadline_ms": 100.0})
    cert, key = _client_cert(tmp_path)
    got: list = []
    state: dict = {}

    class Handler:
        def datachange_notification(self, node, val, data) -> None:
            if val.ResultId:
                got.append(val)
                if len(got) == 50:  # mid-run: the SCADA resets the fault and reads the plain variables
                    threading.Thread(target=mid_run, daemon=True).start()

        def status_change_notification(self, status) -> None:
            state["status"] = status  # the server going away at the end

    def mid_run() -> None:
        c, ns = state["client"], state["ns"]
        state["reset"] = c.nodes.objects.get_child([f"{ns}:Inspection"]).call_method(f"{ns}:ResetFault")
        state["mid"] = {k: _node(c, ns, k).read_value() for k in ("Counters.Parts", "Band.RejectEdge", "Health.Ready",
                                                                   "LastResult.PartId")}

    def subscribe() -> None:
        state["refused"] = asyncio.run(_session_without_certificate(endpoint))
        c = Client(endpoint, timeout=10)
        c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
        c.connect()
        c.load_data_type_definitions()
        ns = c.get_namespace_index("urn:edgekit:line1")
        state.update(client=c, ns=ns)
        sub = c.create_subscription(20, Handler())
        sub.subscribe_data_change(_node(c, ns, "LastResult"), queuesize=10_000)

    orig_start = LineProcess.start

    def start_then_subscribe(self, *a, **kw):
        """The server is up once the line process is; the belt starts after this returns."""
        notes = orig_start(self, *a, **kw)
        subscribe()
        return notes

    monkeypatch.setattr(LineProcess, "start", start_then_subscribe)
    r = simulate_config(prepare_config(parse_run_config(cfg)))
    try:
        state["client"].disconnect()
    except Exception:  # noqa: S110 (the server is gone already)
        pass
    no_cert = state["refused"]
    assert "No matching endpoints" in no_cert[0] and no_cert[1:] == ["BadUserAccessDenied", "BadSessionNotActivated"]
    assert line_problems(r) == [] and r["events_logged"] == 500
    assert [v.ResultId for v in got] == list(range(1, 501))  # each result once, in publishing order
    rows = {row["part_id"]: row for row in read_events(r["log_path"], r["run_id"])}
    assert sorted(v.PartId for v in got) == sorted(rows) == list(range(500))
    for v in got:
        row = rows[v.PartId]
        assert v.Decision == row["decision"] and v.FailsafeReason == (row["failsafe"] or "")
        assert (v.EncoderCount, v.TargetCount) == (20 + 10 * v.PartId, 170 + 10 * v.PartId)  # the geometry
        assert v.ResultState == {"accept": 1, "review": 2, "reject": -2 if row["failsafe"] else -1}[row["decision"]]
        if row["score"] is not None:
            assert v.Score == row["score"]
        latency_ms = (v.CreationTime - v.CaptureTime).total_seconds() * 1e3
        assert abs(latency_ms - row["e2e_ms"]) < 0.01 and v.BundleId == r["bundle_id"]
    assert sum(v.Decision == "reject" for v in got) == r["decisions"].get("reject", 0) > 0
    assert state["reset"] is True
    mid = state["mid"]
    assert mid["Counters.Parts"] >= 50 and mid["Band.RejectEdge"] == 0.5 and mid["Health.Ready"] is True
    assert mid["LastResult.PartId"] >= 49
    con = sqlite3.connect(r["log_path"])
    notes = [m for (m,) in con.execute("SELECT message FROM notes WHERE kind = 'control'")]
    con.close()
    assert notes == ["reset_fault from opcua:opcua: ok: latched faults cleared on every output"]
    assert r["metrics"]["edgekit_output_events_total{event=published,output=opcua}"] == 500
    assert (tmp_path / "pki" / "server_cert.der").exists()  # made on first start
    assert len(certificate_thumbprint(tmp_path / "pki" / "server_cert.der")) == 40


def test_opcua_cert_command_creates_keeps_and_explains(tmp_path) -> None:
    import yaml
    from click.testing import CliRunner

    from edgekit.cli import main

    cfg = {"bundle": "b", "source": {"type": "folder", "path": "f"},
           "outputs": [{"type": "opcua", "name": "ua", "endpoint": "opc.tcp://0.0.0.0:4840", "station": "cell7"}]}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["opcua-cert", str(p)])
    assert r.exit_code == 0, r.output
    cert = tmp_path / "opcua-pki" / "server_cert.der"  # cert_dir relative to the config
    assert r.output.startswith(f"ua: created {cert}") and "urn:edgekit:cell7" in r.output
    assert certificate_thumbprint(cert) in r.output
    again = CliRunner().invoke(main, ["opcua-cert", str(p)])
    assert again.exit_code == 0 and again.output.startswith(f"ua: kept {cert}")
    p.write_text(yaml.safe_dump({**cfg, "outputs": [{"type": "fake_gpio"}]}))
    r = CliRunner().invoke(main, ["opcua-cert", str(p)])
    assert r.exit_code != 0 and "no opcua output" in r.output and "Traceback" not in r.output
