"""Modbus server mode (docs/plc.md): the station is a real pymodbus TCP server on 127.0.0.1 and a
real pymodbus client plays the PLC, polling every 10-100 ms (seeded) and taking results through
the RESULT_VALID / RESULT_ACK (or ACK_ID) handshake."""

from __future__ import annotations

import random
import socket
import sqlite3
import threading
import time

import pytest
from pymodbus.client import ModbusTcpClient

from edgekit.errors import DeviceError
from edgekit.runtime.outputs import modbus_server as ms
from edgekit.runtime.outputs.modbus_server import ModbusServerOutput, ModbusServerOutputConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _decision(pid: int, kind: str = "accept", score: float = 0.25, failsafe: str | None = None,
              enc: int = 0, target: int = 0) -> dict:
    return {"part_id": pid, "kind": kind, "score": score, "failsafe": failsafe, "encoder_count": enc,
            "target_count": target, "t_capture_ns": 1_000_000_000, "t_decided_ns": 1_007_000_000}


class Plc:
    """The PLC side: one client, reads the whole register block in one FC03 per scan."""

    def __init__(self, port: int, base: int = 0, order: str = "ABCD") -> None:
        self.c = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert self.c.connect()
        self.base = base
        self.order = "big" if order == "ABCD" else "little"

    def regs(self, kind: str = "h") -> list[int]:
        fn = self.c.read_holding_registers if kind == "h" else self.c.read_input_registers
        rr = fn(self.base, count=ms.REGISTERS, device_id=1)
        assert not rr.isError(), rr
        return list(rr.registers)

    def u32(self, regs: list[int], off: int) -> int:
        return int(self.c.convert_from_registers(regs[off:off + 2], self.c.DATATYPE.UINT32, word_order=self.order))

    def f32(self, regs: list[int], off: int) -> float:
        return float(self.c.convert_from_registers(regs[off:off + 2], self.c.DATATYPE.FLOAT32, word_order=self.order))

    def status(self, regs: list[int], bit: int) -> bool:
        return bool(regs[ms.STATUS] >> bit & 1)

    def control(self, value: int) -> None:
        assert not self.c.write_register(self.base + ms.CONTROL, value, device_id=1).isError()

    def coil(self, bit: int, value: bool) -> None:
        assert not self.c.write_coil(self.base + ms.CONTROL_COILS + bit, value, device_id=1).isError()

    def ack_id(self, iid: int) -> None:
        words = self.c.convert_to_registers(iid, self.c.DATATYPE.UINT32, word_order=self.order)
        assert not self.c.write_registers(self.base + ms.ACK_ID, words, device_id=1).isError()

    def take(self, regs: list[int], by: str) -> tuple[int, int, int, int, int]:
        """Book the presented result and acknowledge it (``bits``: RESULT_ACK set, then cleared
        once RESULT_VALID dropped, through coils; ``id``: ACK_ID)."""
        got = (self.u32(regs, ms.INSPECTION_ID), self.u32(regs, ms.PART_ID), regs[ms.DECISION],
               self.u32(regs, ms.ENCODER_COUNT), self.u32(regs, ms.TARGET_COUNT))
        if by == "id":
            self.ack_id(got[0])
        else:
            self.coil(ms.C_RESULT_ACK, True)
            assert not self.status(self.regs(), ms.S_RESULT_VALID)  # dropped while the ack is held
            self.coil(ms.C_RESULT_ACK, False)
        return got

    def close(self) -> None:
        self.c.close()


class PollingPlc(threading.Thread):
    """Scans every 10-100 ms (seeded) and takes up to ``per_scan`` presented results per scan (a
    PLC program books a batch per scan), alternating the two acknowledgement styles scan by scan,
    until it has ``expect`` results (or, once ``station_may_stop`` is set, the station closed)."""

    def __init__(self, port: int, expect: int, base: int = 0, seed: int = 7, per_scan: int = 32,
                 connect_timeout_s: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.port, self.base = port, base
        self.rng = random.Random(seed)
        self.results: list[tuple[int, int, int, int, int]] = []
        self.scans = 0
        self.expect = expect
        self.per_scan = per_scan
        self.station_may_stop = threading.Event()
        self.error: BaseException | None = None
        self.connect_timeout_s = connect_timeout_s
        self.plc: Plc | None = None

    def run(self) -> None:
        try:
            end = time.monotonic() + self.connect_timeout_s
            while self.plc is None:
                try:
                    self.plc = Plc(self.port, self.base)
                except AssertionError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)
            while len(self.results) < self.expect:
                time.sleep(self.rng.uniform(0.010, 0.100))
                self.scans += 1
                try:
                    regs = self.plc.regs()
                    by = "id" if self.scans % 2 else "bits"
                    for _ in range(self.per_scan):
                        if not self.plc.status(regs, ms.S_RESULT_VALID):
                            break
                        self.results.append(self.plc.take(regs, by))
                        regs = self.plc.regs()
                except (AssertionError, ConnectionError):
                    if self.station_may_stop.is_set():
                        return  # the station went down
                    raise
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            if self.plc is not None:
                self.plc.close()


@pytest.fixture()
def server():
    outs: list[ModbusServerOutput] = []

    def make(**kw) -> ModbusServerOutput:
        o = ModbusServerOutput(ModbusServerOutputConfig(port=_free_port(), shutdown_drain_s=0, **kw),
                               clock=lambda: 123_456_789)
        o.open()
        outs.append(o)
        return o

    yield make
    for o in outs:
        o.close()


@pytest.mark.parametrize("order", ["ABCD", "CDAB"])
def test_result_registers_round_trip_in_both_word_orders(server, order) -> None:
    o = server(word_order=order, base_address=100)
    o.set_band(0.4, 0.5)
    o.set_line("ready", True)
    o.publish_dict(_decision(70000, "reject", 0.75, enc=123456, target=123831))
    plc = Plc(o.cfg.port, 100, order)
    try:
        r = plc.regs()
        assert plc.regs("i") == r  # FC04 mirrors FC03
        assert r[ms.MAP_VERSION_REG] == 1 and r[ms.QUEUED] == 1
        assert plc.status(r, ms.S_READY) and plc.status(r, ms.S_RESULT_VALID) and plc.status(r, ms.S_REVIEW_ENABLED)
        assert plc.u32(r, ms.INSPECTION_ID) == 1 and plc.u32(r, ms.PART_ID) == 70000
        assert r[ms.DECISION] == 2 and r[ms.FAILSAFE] == 0
        assert plc.f32(r, ms.SCORE) == 0.75 and r[ms.SCORE_PERMILLE] == 1500 and r[ms.LATENCY_MS] == 7
        assert plc.u32(r, ms.ENCODER_COUNT) == 123456 and plc.u32(r, ms.TARGET_COUNT) == 123831
        assert plc.u32(r, ms.PART_COUNT) == 1 and plc.u32(r, ms.REJECT_COUNT) == 1
        assert abs(plc.f32(r, ms.ACCEPT_EDGE) - 0.4) < 1e-7 and plc.f32(r, ms.REJECT_EDGE) == 0.5
        hi_first = r[ms.PART_ID:ms.PART_ID + 2] == [70000 >> 16, 70000 & 0xFFFF]
        assert hi_first == (order == "ABCD")
        # coils and discrete inputs carry the same status bits
        coils = plc.c.read_coils(100, count=10, device_id=1).bits[:10]
        di = plc.c.read_discrete_inputs(100, count=10, device_id=1).bits[:10]
        assert coils == di == [bool(r[ms.STATUS] >> i & 1) for i in range(10)]
        assert coils[ms.S_READY] and coils[ms.S_RESULT_VALID] and coils[ms.S_ENABLED]
        o.set_line("reject", True)
        assert plc.c.read_discrete_inputs(100 + ms.S_REJECT, count=1, device_id=1).bits[0]
    finally:
        plc.close()


def test_plc_polling_10_to_100_ms_reads_2000_parts_once_each_in_order(server) -> None:
    # FIFO as deep as the run: how far the PLC falls behind depends on the machine (a loaded 2-core
    # box drains ~250 results/s), what is asserted must not; overruns have their own test below
    o = server(fifo_depth=2000)
    o.set_line("ready", True)
    plc = PollingPlc(o.cfg.port, 2000, seed=3)
    plc.start()
    n = 2000
    t0 = time.monotonic()
    for i in range(n):  # the line: 800 parts/s, every 7th a reject with its target count
        o.publish_dict(_decision(5000 + i, "reject" if i % 7 == 0 else "accept", enc=10 * i, target=10 * i + 375))
        delay = t0 + (i + 1) / 800 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    plc.join(timeout=60)
    assert plc.error is None, plc.error
    assert not plc.is_alive()
    assert [r[0] for r in plc.results] == list(range(1, n + 1))  # every INSPECTION_ID once, in order
    assert [r[1] for r in plc.results] == [5000 + i for i in range(n)]
    assert [r[2] for r in plc.results] == [2 if i % 7 == 0 else 1 for i in range(n)]
    assert [r[3:] for r in plc.results] == [(10 * i, 10 * i + 375) for i in range(n)]
    st = o.stats()
    assert st["overruns_total"] == 0 and st["results_acked_total"] == n and st["fifo_queued"] == 0
    assert o.map.presented == list(range(1, n + 1))  # each presented exactly once
    assert plc.scans >= n // plc.per_scan and st["fifo_max"] > 1 and o.pop_errors() == []


def test_full_fifo_flags_overrun_counts_it_and_fails_those_parts_safe(server) -> None:
    o = server(fifo_depth=4)
    for i in range(7):
        o.publish_dict(_decision(i, "accept"))
    plc = Plc(o.cfg.port)
    try:
        r = plc.regs()
        assert r[ms.QUEUED] == 4 and plc.status(r, ms.S_BUFFER_OVERRUN)
        assert plc.u32(r, ms.OVERRUN_COUNT) == 3
        assert plc.u32(r, ms.PART_COUNT) == 7 and plc.u32(r, ms.REJECT_COUNT) == 3  # overruns count as rejected
        errs = o.pop_errors()
        assert len(errs) == 1 and "FIFO full (4)" in errs[0] and "INSPECTION_ID 5" in errs[0]
        got = []
        while plc.status(r, ms.S_RESULT_VALID):
            got.append(plc.take(r, "bits")[:2])
            r = plc.regs()
        assert got == [(1, 0), (2, 1), (3, 2), (4, 3)]
        o.publish_dict(_decision(7, "accept"))
        r = plc.regs()
        assert plc.u32(r, ms.INSPECTION_ID) == 8  # ids 5-7 never presented: the PLC sees the gap
        assert plc.status(r, ms.S_BUFFER_OVERRUN)  # latched until RESET_FAULT
        plc.control(1 << ms.C_RESET_FAULT)
        r = plc.regs()
        assert not plc.status(r, ms.S_BUFFER_OVERRUN) and plc.u32(r, ms.OVERRUN_COUNT) == 3
        assert o.pop_controls() == [("reset_fault", "modbus_server:modbus_server", 123_456_789)]
    finally:
        plc.close()


def test_trigger_handshake_and_control_bits_reach_the_line_process(server) -> None:
    o = server()
    o.set_line("ready", True)
    plc = Plc(o.cfg.port)
    try:
        assert plc.status(plc.regs(), ms.S_TRIGGER_READY)
        plc.coil(ms.C_TRIGGER, True)
        r = plc.regs()
        assert plc.status(r, ms.S_TRIGGER_ACK) and r[ms.TRIGGER_COUNT] == 1
        plc.coil(ms.C_TRIGGER, False)
        assert not plc.status(plc.regs(), ms.S_TRIGGER_ACK)
        plc.control(1 << ms.C_DISABLE)
        plc.control(0)
        plc.control(1 << ms.C_ENABLE)
        src = "modbus_server:modbus_server"
        assert o.pop_controls() == [("trigger", src, 123_456_789), ("disable", src, 123_456_789),
                                    ("enable", src, 123_456_789)]
        o.set_enabled(False)  # what the daemon answers with
        r = plc.regs()
        assert not plc.status(r, ms.S_ENABLED) and not plc.status(r, ms.S_TRIGGER_READY)
        # the status area and status coils are read-only: exception 2 (illegal data address)
        rr = plc.c.write_register(ms.STATUS, 0, device_id=1)
        assert rr.isError() and rr.exception_code == 2
        rr = plc.c.write_coil(ms.S_READY, False, device_id=1)
        assert rr.isError() and rr.exception_code == 2
        assert plc.c.read_holding_registers(ms.REGISTERS, count=1, device_id=1).isError()
        assert o.stats()["bad_writes_total"] == 2
    finally:
        plc.close()


def test_a_second_master_writing_control_coils_keeps_the_plcs_held_ack_a_register_write_releases_it() -> None:
    """CONTROL written whole (FC06) replaces all five bits, RESULT_ACK included; a control coil
    (FC05) changes its own bit only (docs/plc.md, two masters)."""
    m = ms.ServerMap(fifo_depth=8, clock=lambda: 5)
    for i in range(3):
        m.publish(_decision(i))
    assert m.write("c", ms.CONTROL_COILS + ms.C_RESULT_ACK, [True])  # the PLC takes result 1, holds the ack
    assert m.read("c", ms.S_RESULT_VALID, 1) == [False]
    assert m.write("c", ms.CONTROL_COILS + ms.C_RESET_FAULT, [True])  # an HMI presses RESET_FAULT by coil
    assert m.read("c", ms.S_RESULT_VALID, 1) == [False] and m.ack_hold  # still held by the PLC
    assert m.write("c", ms.CONTROL_COILS + ms.C_RESET_FAULT, [False])  # the HMI releases its button
    assert m.write("c", ms.CONTROL_COILS + ms.C_RESULT_ACK, [False])  # the PLC clears: result 2 presented
    assert m.presented == [1, 2] and m.read("c", ms.S_RESULT_VALID, 1) == [True]
    assert m.write("c", ms.CONTROL_COILS + ms.C_RESULT_ACK, [True])  # takes result 2, holds the ack
    assert m.write("h", ms.CONTROL, [1 << ms.C_RESET_FAULT])  # the HMI writes the whole register instead
    assert not m.ack_hold and m.presented == [1, 2, 3]  # the ack was released: result 3 presented
    assert m.acked == 2 and m.spurious_acks == 0
    assert [c[0] for c in m.pop_controls()] == ["reset_fault", "reset_fault"]


def test_port_in_use_is_one_clear_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        o = ModbusServerOutput(ModbusServerOutputConfig(name="plc", port=port))
        with pytest.raises(DeviceError, match=rf"outputs\.plc: 127\.0\.0\.1:{port} is already in use .*another port"):
            o.open()
    o = ModbusServerOutput(ModbusServerOutputConfig(name="plc", host="192.0.2.1", port=_free_port()))
    with pytest.raises(DeviceError, match="192.0.2.1 is not an address of this machine"):
        o.open()


def test_simulated_line_results_reach_a_polling_plc_and_controls_reach_the_daemon(intensity_bundle, tmp_path) -> None:
    """The real daemon on the simulated conveyor (200 parts: 2 cores) with a fake GPIO reject line
    and the Modbus server (FIFO deeper than the run: how far the PLC falls behind depends on the
    machine; overruns have their own test); the PLC polls every 10-100 ms, takes every result once and in order,
    each reject carrying its true station count as TARGET_COUNT; its RESET_FAULT and TRIGGER reach
    Daemon.control (the trigger is refused: the simulated camera is not software-triggered)."""
    from edgekit.config.run import parse_run_config
    from edgekit.sim.bundles import write_intensity_dataset
    from edgekit.sim.checker import line_problems
    from edgekit.sim.run import prepare_config, simulate_config
    from tests.sim.test_simulate import sim_config

    bundle = intensity_bundle  # the session's (tests/runtime/conftest.py)
    data = write_intensity_dataset(tmp_path / "data")
    port = _free_port()
    cfg = sim_config(bundle, data, tmp_path, "encoder", parts=200,
                     outputs=[{"type": "fake_gpio"},
                              {"type": "modbus_server", "name": "plc", "port": port, "fifo_depth": 256,
                               "shutdown_drain_s": 10}],
                     encoder={"type": "sim", "speed_mm_s": 1000.0, "ticks_per_mm": 1.0},  # 100 parts/s
                     decision={"deadline_ms": 100.0})
    plc = PollingPlc(port, 200, seed=11)
    plc.start()
    sent = threading.Event()

    def controls() -> None:  # once results flow, a second master (an HMI) presses RESET_FAULT and TRIGGER
        while len(plc.results) < 20 and plc.is_alive():
            time.sleep(0.02)
        c = Plc(port)
        try:  # through single coils: a CONTROL register write would release the PLC's held RESULT_ACK
            c.coil(ms.C_RESET_FAULT, True)
            c.coil(ms.C_TRIGGER, True)
        finally:
            c.close()
        sent.set()

    ctl = threading.Thread(target=controls, daemon=True)
    ctl.start()
    prepared = prepare_config(parse_run_config(cfg))
    r = simulate_config(prepared)  # at shutdown the PLC gets shutdown_drain_s to take what is queued
    plc.station_may_stop.set()
    plc.join(timeout=15)
    ctl.join(timeout=5)
    assert plc.error is None, plc.error
    assert line_problems(r) == [] and r["events_logged"] == 200
    assert [x[0] for x in plc.results] == list(range(1, 201))  # every result once, in publishing order
    assert sorted(x[1] for x in plc.results) == list(range(200))  # (a part failed safe late comes after its successor)
    # the simulated geometry: part k is imaged at count 20 + 10 k and reaches the station 150 later
    assert all(x[3:] == (20 + 10 * x[1], 170 + 10 * x[1]) for x in plc.results)
    assert sum(x[2] in (2, 4) for x in plc.results) == r["decisions"].get("reject", 0) > 0
    assert sent.is_set()
    # the output's own figures reach the daemon's metrics (the last report comes at close)
    assert r["metrics"]["edgekit_output_events_total{event=results_acked,output=plc}"] == 200
    assert r["metrics"]["edgekit_output_value{output=plc,stat=fifo_queued}"] == 0
    con = sqlite3.connect(r["log_path"])
    notes = [m for (m,) in con.execute("SELECT message FROM notes WHERE kind = 'control' ORDER BY rowid")]
    con.close()
    assert notes[0] == "reset_fault from modbus_server:plc: ok: latched faults cleared on every output"
    assert notes[1].startswith("trigger from modbus_server:plc: refused: software trigger refused: camera sim")
    assert len(notes) == 2

