"""MQTT output against a real mosquitto broker started by the test on 127.0.0.1 (Debian package
``mosquitto``; skipped with the reason where it is missing). Delivery is at least once; the
subscriber de-duplicates by part id, and the tests assert that no result is lost."""

from __future__ import annotations

import getpass
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from rt_helpers import wait_until

from edgekit.errors import ConfigError
from edgekit.runtime.outputs.mqtt import MqttOutput, MqttOutputConfig, credentials

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto broker not installed (apt-get install mosquitto)")
OFFSET_NS = 1_700_000_000_000_000_000  # wall = monotonic + offset: exact timestamps, no wall clock


def _free_port() -> int:
    """A free port below the ephemeral range: while the broker is down for 5 s, no outgoing
    connection of another process can be given its port."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 20000-32000")


class Broker:
    """mosquitto on 127.0.0.1 with persistence, so a subscriber's session survives a restart."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.dir = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.conf = tmp / "mosquitto.conf"
        # ``user``: started as root (CI), mosquitto drops to the ``mosquitto`` user, which cannot
        # write the test's 0700 temp dir: no log, and no persistence, so the subscriber's session
        # (and the messages queued for it) would not survive the restart. Run as whoever we are.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"user {getpass.getuser()}\n"
                             f"persistence_location {tmp}/\nlog_dest file {tmp}/mosquitto.log\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        err = open(self.dir / "mosquitto.stderr", "ab")  # noqa: SIM115 (the broker's lifetime)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=err, stderr=err)
        err.close()
        end = time.monotonic() + 10
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start (exit {self.proc.poll()}): {self.logs()}")

    def logs(self) -> list[str]:
        """The broker's stderr and log file (whichever exist), for failure messages."""
        return [p.read_text(errors="replace")[-2000:] for p in (self.dir / "mosquitto.stderr",
                                                               self.dir / "mosquitto.log") if p.exists()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """The MES side: a persistent session (clean_session False, QoS 1) on prefix/station/#."""

    _n = 0

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, dict | str, bool]] = []
        self.lock = threading.Lock()
        Subscriber._n += 1
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"mes-test-{Subscriber._n}",
                             clean_session=False)
        self.c.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        body = msg.payload.decode()
        with self.lock:
            self.messages.append((msg.topic, json.loads(body) if body.startswith("{") else body, bool(msg.retain)))

    def results(self) -> list[dict]:
        with self.lock:
            return [m[1] for m in self.messages if m[0].endswith("/result")]

    def on(self, leaf: str) -> list:
        with self.lock:
            return [m[1] for m in self.messages if m[0].endswith("/" + leaf)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()



def _wait(pred, timeout_s: float = 20.0) -> bool:
    return wait_until(pred, timeout_s)


def _decision(pid: int, kind: str = "accept") -> dict:
    t = time.monotonic_ns()
    return {"part_id": pid, "kind": kind, "score": 0.125 if kind == "accept" else 0.875,
            "failsafe": None, "encoder_count": 20 + 10 * pid, "target_count": 170 + 10 * pid,
            "t_capture_ns": t - 7_000_000, "t_decided_ns": t, "source_id": "cam0", "bundle_id": "b-123",
            "model_id": "b-123:fp32", "image_path": f"/var/lib/edgekit/archive/p{pid}.jpg" if kind == "reject" else None,
            "enabled": True}


@pytest.fixture()
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def _output(port: int, tmp: Path, **kw) -> MqttOutput:
    cfg = MqttOutputConfig(host="127.0.0.1", port=port, station="line1", outbox_path=str(tmp / "outbox.db"),
                           retry_initial_s=0.05, retry_max_s=0.2, health_period_s=0.5, **kw)
    return MqttOutput(cfg, wall_ns=lambda: time.monotonic_ns() + OFFSET_NS)


def test_broker_outage_of_5_s_loses_no_result(broker, tmp_path) -> None:
    sub = Subscriber(broker.port, "edgekit/line1/#")
    out = _output(broker.port, tmp_path)
    out.open()
    out.set_line("ready", True)
    try:
        for i in range(100):
            out.publish_dict(_decision(i, "reject" if i % 5 == 0 else "accept"))
            time.sleep(0.005)
        assert _wait(lambda: len({r["part_id"] for r in sub.results()}) == 100)
        broker.stop()  # mid-run: SIGTERM, 5 s down
        t_down = time.monotonic()
        for i in range(100, 200):
            out.publish_dict(_decision(i))
            time.sleep(0.01)
        assert _wait(lambda: out.stats()["connected"] == 0, 5)
        assert out.stats()["outbox_queued"] >= 100  # kept locally while the broker is away
        time.sleep(max(0.0, 5.0 - (time.monotonic() - t_down)))
        broker.start()
        for i in range(200, 300):
            out.publish_dict(_decision(i))
            time.sleep(0.005)
        assert _wait(lambda: len({r["part_id"] for r in sub.results()}) == 300, 30), (
            sorted(set(range(300)) - {r["part_id"] for r in sub.results()}), out.stats(), out.pop_errors(),
            broker.logs())
        assert _wait(lambda: out.stats()["outbox_queued"] == 0, 10)
    finally:
        out.close()
    res = sub.results()
    sub.close()
    firsts: dict[int, dict] = {}
    for r in res:
        firsts.setdefault(r["part_id"], r)
    assert sorted(firsts) == list(range(300))  # none lost
    assert list(firsts) == list(range(300))  # first deliveries in order (the backlog drains oldest first)
    dup = len(res) - 300  # at least once: a result whose PUBACK was lost in the outage comes again
    assert 0 <= dup <= 20  # at most max_inflight resent
    st = out.stats()
    assert st["sent_total"] == 300 and st["dropped_total"] == 0 and st["reconnects_total"] >= 1
    r = firsts[5]
    assert r == {"station": "line1", "uid": f"{out.run_uid}-5", "part_id": 5, "decision": "reject",
                 "failsafe": None, "score": 0.875, "encoder_count": 70, "target_count": 220,
                 "t_capture": r["t_capture"], "t_decided": r["t_decided"], "latency_ms": 7.0, "bundle_id": "b-123",
                 "model_id": "b-123:fp32", "image_path": "/var/lib/edgekit/archive/p5.jpg", "enabled": True,
                 "source": "cam0"}
    assert r["t_capture"].endswith("Z") and r["t_capture"].startswith("2023-11-")
    assert any("kept in the outbox" in e for e in out.pop_errors())


def test_health_retained_status_online_and_last_will(broker, tmp_path) -> None:
    out = _output(broker.port, tmp_path)
    out.open()
    out.set_line("ready", True)
    out.set_line("heartbeat", True)
    try:
        assert _wait(lambda: out.stats()["connected"] == 1, 10)
        time.sleep(0.6)  # one health period
        late = Subscriber(broker.port, "edgekit/line1/#")  # joins late: gets the retained messages
        assert _wait(lambda: late.on("health") and late.on("status"), 10)
        h = late.on("health")[0]
        assert h["station"] == "line1" and h["ready"] is True and h["outbox"] == {"queued": 0, "sent": 0, "dropped": 0}
        assert late.on("status")[-1] == "online"
        late.close()
        watcher = Subscriber(broker.port, "edgekit/line1/status")
        assert _wait(lambda: watcher.on("status") == ["online"]), watcher.messages
        out._client.socket().close()  # the station dies without DISCONNECT: the broker sends the will
        assert _wait(lambda: "offline" in watcher.on("status"), 15)
        assert _wait(lambda: watcher.on("status")[-1] == "online", 10)  # reconnected
        watcher.close()
    finally:
        out.close()
    watcher = Subscriber(broker.port, "edgekit/line1/status")
    assert _wait(lambda: watcher.on("status") == ["offline"])  # clean shutdown: offline, retained
    watcher.close()


def test_full_outbox_drops_oldest_counts_them_and_survives_a_restart(tmp_path) -> None:
    port = _free_port()  # no broker yet: everything waits in the outbox
    out = _output(port, tmp_path, outbox_max_rows=10, shutdown_drain_s=0)
    out.open()
    for i in range(25):
        out.publish_dict(_decision(i))
    assert _wait(lambda: out.stats()["dropped_total"] == 15, 5)
    st = out.stats()
    assert st["outbox_queued"] == 10 and st["sent_total"] == 0
    errs = out.pop_errors()
    assert any("unreachable" in e for e in errs) and any("outbox full (10 rows)" in e for e in errs)
    out.close()  # the station stops with 10 results unsent
    b = Broker(tmp_path / "b", port).start()
    try:
        sub = Subscriber(port, "edgekit/line1/result")
        out2 = _output(port, tmp_path)  # next start, same outbox
        out2.open()
        try:
            assert _wait(lambda: len(sub.results()) >= 10, 15)
            assert _wait(lambda: out2.stats()["outbox_queued"] == 0, 10)
            assert out2.notes == [f"outputs.mqtt: 10 results from an earlier run are still in the outbox "
                                  f"{tmp_path / 'outbox.db'}; sending them first"]
        finally:
            out2.close()
        assert [r["part_id"] for r in sub.results()] == list(range(15, 25))
        sub.close()
    finally:
        b.stop()


def test_credentials_come_from_environment_or_file_never_from_the_logged_config(tmp_path) -> None:
    cfg = MqttOutputConfig(host="h", station="s1", username="plant")
    assert credentials(cfg, {"EDGEKIT_MQTT_PASSWORD": "pw1"}) == ("plant", "pw1")
    f = tmp_path / "pw"
    f.write_text("pw2\n")
    cfg = MqttOutputConfig(host="h", station="s1", username_env="U", password_file=str(f))
    assert credentials(cfg, {"U": "u2"}) == ("u2", "pw2")
    assert "pw" not in json.dumps(cfg.model_dump(mode="json")).replace("password", "").replace(str(f), "")
    with pytest.raises(ConfigError, match=r"outputs\.mqtt\.password_file: cannot read"):
        credentials(MqttOutputConfig(host="h", station="s", password_file=str(tmp_path / "nope")), {})
    with pytest.raises(ValueError, match="topic level"):
        MqttOutputConfig(host="h", station="a/#")


def test_daemon_publishes_every_decision_through_the_mqtt_process(broker, intensity_bundle, level_folder,
                                                                  tmp_path) -> None:
    """The real daemon replaying a folder; the MQTT output runs in its own process (the default),
    its outbox path is relative to the config's directory."""
    import sys

    from rt_helpers import LEVELS, expected_kind

    from edgekit.config.run import parse_run_config
    from edgekit.runtime.daemon import Daemon
    from edgekit.runtime.logs import setup_logging

    sub = Subscriber(broker.port, "plant/#")
    cfg = parse_run_config({
        "bundle": str(intensity_bundle), "source": {"type": "folder", "path": str(level_folder), "rate_hz": 50},
        "outputs": [{"type": "fake_gpio", "chip": "mqtt-daemon"},
                    {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "prefix": "plant", "station": "cell7",
                     "outbox_path": "state/outbox.db", "retry_initial_s": 0.05}],
        "decision": {"deadline_ms": 1000.0}, "scheduler": {"mode": "time", "delay_ms": 1050.0, "pulse_ms": 5.0},
        "events": {"path": str(tmp_path / "ev.db"), "synchronous": "NORMAL"}, "metrics": {"enabled": False},
        "line": {"jitter_probe_ms": 0}, "log": {"format": "text", "level": "error"}}, base=tmp_path)
    assert cfg.outputs[1].outbox_path == str(tmp_path / "state" / "outbox.db")
    d = Daemon(cfg, logger=setup_logging("text", "error", stream=sys.stderr))
    d.start()
    d.wait()
    s = d.summary()
    assert _wait(lambda: len(sub.results()) >= len(LEVELS), 10)
    res = sub.results()
    sub.close()
    assert [r["part_id"] for r in res] == list(range(len(LEVELS)))
    assert [r["decision"] for r in res] == [expected_kind(v) for v in LEVELS]
    assert {r["bundle_id"] for r in res} == {s["bundle_id"]} and {r["station"] for r in res} == {"cell7"}
    assert all(abs(r["score"] - v / 255) < 1e-6 for r, v in zip(res, LEVELS))
    assert s["output_stats"]["mqtt"]["sent_total"] == len(LEVELS) and s["output_stats"]["mqtt"]["outbox_queued"] == 0
    assert (tmp_path / "state" / "outbox.db").exists()


@pytest.mark.slow
def test_reject_placement_with_all_three_plant_outputs_active(broker, intensity_bundle, tmp_path) -> None:
    """The simulated line twice, 1,000 parts each: with a fake GPIO reject line only, then with the
    Modbus server (a PLC polling every 10-100 ms), the OPC UA server (a subscribed client) and MQTT
    (a subscriber) all active. Asserted: every defect pulsed and no good part (both runs), every
    result delivered by each output; printed: the placement figures of both runs."""
    import asyncio

    from asyncua import Client as UaClient

    from edgekit.config.run import parse_run_config
    from edgekit.sim.bundles import write_intensity_dataset
    from edgekit.sim.checker import line_problems
    from edgekit.sim.run import prepare_config, simulate_config
    from tests.runtime.test_outputs_modbus_server import PollingPlc
    from tests.sim.test_simulate import sim_config

    data = write_intensity_dataset(tmp_path / "data")
    n = 1000
    enc = {"type": "sim", "speed_mm_s": 600.0, "ticks_per_mm": 1.0}  # 60 parts/s

    def run(outputs: list[dict], sub_dir: str) -> dict:
        (tmp_path / sub_dir).mkdir()
        cfg = sim_config(intensity_bundle, data, tmp_path / sub_dir, "encoder", parts=n, outputs=outputs, encoder=enc)
        return simulate_config(prepare_config(parse_run_config(cfg)))

    base = run([{"type": "fake_gpio"}], "base")
    mb_port, ua_port = _free_port(), _free_port()
    plc = PollingPlc(mb_port, n, seed=5)
    plc.start()
    sub = Subscriber(broker.port, "edgekit/line1/result")
    ua_got: list = []

    def ua_client() -> None:
        async def main() -> None:
            end = time.monotonic() + 60
            while True:
                try:
                    c = UaClient(f"opc.tcp://127.0.0.1:{ua_port}", timeout=5)
                    await c.connect()
                    break
                except Exception:  # the line process is starting the server
                    if time.monotonic() > end:
                        raise
                    await asyncio.sleep(0.2)
            await c.load_data_type_definitions()
            ns = await c.get_namespace_index("urn:edgekit:line1")
            node = await c.nodes.objects.get_child([f"{ns}:Inspection", f"{ns}:LastResult"])

            class H:
                def datachange_notification(self, node, val, data) -> None:
                    if val.ResultId:
                        ua_got.append(val.PartId)

            s = await c.create_subscription(50, H())
            await s.subscribe_data_change(node, queuesize=10_000)
            while len(ua_got) < n and time.monotonic() < end + 120:
                await asyncio.sleep(0.1)

        asyncio.run(main())

    ua = threading.Thread(target=ua_client, daemon=True)
    ua.start()
    full = run([{"type": "fake_gpio"},
                {"type": "modbus_server", "name": "plc", "port": mb_port, "fifo_depth": 256, "shutdown_drain_s": 10},
                {"type": "opcua", "endpoint": f"opc.tcp://127.0.0.1:{ua_port}", "station": "line1",
                 "shutdown_linger_s": 2},
                {"type": "mqtt", "host": "127.0.0.1", "port": broker.port, "station": "line1",
                 "outbox_path": str(tmp_path / "ob.db")}], "full")
    plc.station_may_stop.set()
    plc.join(timeout=20)
    ua.join(timeout=20)
    assert _wait(lambda: len({r["part_id"] for r in sub.results()}) == n, 20)
    sub.close()
    for r in (base, full):
        assert line_problems(r) == [] and r["events_logged"] == n
    assert len(plc.results) == n and sorted(x[1] for x in plc.results) == list(range(n))
    for name, r in (("fake GPIO only", base), ("+ modbus_server, opcua, mqtt", full)):
        print(f"\n{name}: placement |ms| p50/p99/max {r['placement_error_ms']}, ticks {r['placement_error_ticks']}, "
              f"late pulses {r['late_pulses']} {r['late_pulses_by_cause']}, timer {r['timer'].get('sched_fifo')}, "
              f"e2e {r['e2e_latency_ms']}")
    print(f"OPC UA results received {len(set(ua_got))}/{n}")
