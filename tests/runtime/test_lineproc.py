"""The line process's pulse loop on a virtual clock: placement, heartbeat and fault handling are
asserted exactly (to the nanosecond and to the tick), with no dependence on the machine's clock
or load. The real loop code runs (``_LineLoop.run``); only the clock and the pipe are scripted."""

from __future__ import annotations

from typing import Any

import pytest

from edgekit.runtime.clock import MonotonicClock, VirtualClock, late_cause
from edgekit.runtime.encoder import SimEncoder, SimEncoderConfig
from edgekit.runtime.lineproc import _LineLoop, decision_message, measure_jitter
from edgekit.runtime.scheduler import RejectScheduler
from edgekit.runtime.types import Decision, Frame, RejectCommand

MS = 1_000_000
T0 = 1_000 * MS


class ScriptedConn:
    """The parent's end of the pipe, scripted: each message becomes readable at its virtual time."""

    def __init__(self, clock: VirtualClock, script: list[tuple[int, tuple[Any, ...]]]) -> None:
        self.clock = clock
        self.script = sorted(script, key=lambda m: m[0])
        self.sent: list[tuple[Any, ...]] = []

    def ready_at_ns(self) -> int | None:
        return self.script[0][0] if self.script else None

    def poll(self, timeout: float = 0.0) -> bool:
        return bool(self.script) and self.script[0][0] <= self.clock.now_ns()

    def recv(self) -> tuple[Any, ...]:
        return self.script.pop(0)[1]

    def send(self, msg: tuple[Any, ...]) -> None:
        self.sent.append(msg)

    def messages(self, kind: str) -> list[tuple[Any, ...]]:
        return [m for b in self.sent if b[0] == "batch" for m in b[1] if m[0] == kind]


class RecordingOutput:
    """An output plug-in (the ``Output`` calls the loop makes) that records line levels at the
    virtual time they are driven."""

    name = "rec"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.edges: list[tuple[int, str, bool]] = []
        self.published: list[dict[str, Any]] = []
        self.faults: list[int] = []

    def set_line(self, role: str, active: bool) -> None:
        self.edges.append((self.clock.now_ns(), role, active))

    def publish_dict(self, d: dict[str, Any]) -> None:
        self.published.append(d)

    def set_band(self, a: float, r: float) -> None:
        pass

    def set_fault(self, code: int) -> None:
        self.faults.append(code)

    def pop_errors(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def rising(self, role: str) -> list[int]:
        return [t for t, r, a in self.edges if r == role and a]

    def falling(self, role: str) -> list[int]:
        return [t for t, r, a in self.edges if r == role and not a]


def _spec(encoder: bool = False, **kw: Any) -> dict[str, Any]:
    spec = {"overlap": "merge", "heartbeat_period_ms": 500.0, "alive_timeout_ms": 1500.0, "tolerance_ms": 1.0,
            "encoder": {"type": "sim"} if encoder else None, "trigger": None, "probe": False}
    spec.update(kw)
    return spec


def _run(script: list[tuple[int, tuple[Any, ...]]], encoder: SimEncoder | None = None,
         clock: VirtualClock | None = None, **kw: Any) -> tuple[ScriptedConn, RecordingOutput, _LineLoop]:
    clock = clock or VirtualClock(T0)
    conn = ScriptedConn(clock, script)
    out = RecordingOutput(clock)
    loop = _LineLoop(conn, _spec(encoder is not None, **kw), [out], encoder, clock=clock)
    loop.run()
    return conn, out, loop


def test_time_mode_pulses_start_and_end_exactly_at_their_targets() -> None:
    # out of order and overlapping in arrival; targets ≥ 2 ms after arrival
    targets = [T0 + 300 * MS, T0 + 120 * MS, T0 + 777 * MS + 123, T0 + 450 * MS]
    script = [(T0 + i * 10 * MS, ("pulse", RejectCommand(i, "reject", 8.0, at_ns=t))) for i, t in enumerate(targets)]
    script.append((T0 + 50 * MS, ("stop", 5.0)))
    conn, out, loop = _run(script)
    assert out.rising("reject") == sorted(targets)
    assert out.falling("reject") == [t + 8 * MS for t in sorted(targets)]
    fired = conn.messages("fired")
    assert [(m[1], m[3] - m[8], m[5], m[9]) for m in fired] == [(1, 0, False, None), (0, 0, False, None),
                                                                (3, 0, False, None), (2, 0, False, None)]
    assert loop.stats["late"] == 0 and loop.stats["pulses"] == 4


def test_encoder_mode_fires_at_the_exact_count_on_a_simulated_belt() -> None:
    clock = VirtualClock(T0)
    enc = SimEncoder(SimEncoderConfig(speed_mm_s=1500.0, ticks_per_mm=1.0), clock=clock)  # 0.667 ms/tick
    origin = T0 + 5 * MS
    counts = [400, 250, 251, 1200]  # 251: the next tick after 250, while 250's pulse is still on
    script = [(origin, ("encoder_origin", origin))]
    script += [(origin + (i + 1) * MS, ("pulse", RejectCommand(i, "reject", 0.5, at_count=c)))
               for i, c in enumerate(counts)]
    script.append((origin + 20 * MS, ("stop", 5.0)))
    conn, out, loop = _run(script, encoder=enc, clock=clock)
    starts = out.rising("reject")
    enc.t0_ns = origin
    assert [enc.count_at(t) for t in starts] == sorted(counts)  # 0 ticks error
    assert starts == [enc.time_of_count(c) for c in sorted(counts)]  # and 0 ns: the first instant of the count
    assert [enc.count_at(t - 1) for t in starts] == [c - 1 for c in sorted(counts)]
    assert loop.stats["late"] == 0 and all(m[3] == m[8] for m in conn.messages("fired"))


def test_merged_pulse_keeps_the_line_on_and_is_reported() -> None:
    script = [(T0, ("pulse", RejectCommand(1, "reject", 20.0, at_ns=T0 + 100 * MS))),
              (T0, ("pulse", RejectCommand(2, "reject", 20.0, at_ns=T0 + 110 * MS))),
              (T0 + MS, ("stop", 5.0))]
    conn, out, _ = _run(script)
    assert out.rising("reject") == [T0 + 100 * MS] and out.falling("reject") == [T0 + 130 * MS]
    assert [(m[1], m[6]) for m in conn.messages("fired")] == [(1, False), (2, True)]


def test_decision_after_its_target_fires_at_once_counted_as_decision_late() -> None:
    script = [(T0 + 40 * MS, ("pulse", RejectCommand(7, "reject", 5.0, at_ns=T0 + 30 * MS))),
              (T0 + 41 * MS, ("stop", 5.0))]
    conn, out, loop = _run(script)
    assert out.rising("reject") == [T0 + 40 * MS]
    (m,) = conn.messages("fired")
    assert m[5] is True and m[7] is True and m[9] == "decision" and m[3] - m[8] == 10 * MS
    assert loop.stats["late_by_cause"] == {"decision": 1, "runqueue": 0, "hypervisor": 0, "timer": 0}


def test_heartbeat_toggles_each_period_stops_when_the_pipeline_goes_quiet_and_resumes() -> None:
    # the parent reports alive every 250 ms until 2 s, then nothing until 5 s (a stalled pipeline)
    script = [(T0 + k * 250 * MS, ("alive", True)) for k in range(9)]
    script += [(T0 + 5000 * MS, ("alive", True)), (T0 + 6200 * MS, ("stop", 0.0))]
    _, out, _ = _run(script)
    hb = [t for t, r, _ in out.edges if r == "heartbeat"]
    before = [t for t in hb if t < T0 + 5000 * MS]
    # toggles at T0, +500 ms, ... while the last alive (2.0 s) is younger than 1.5 s: up to 3.0 s
    assert before == [T0 + k * 500 * MS for k in range(7)]
    after = [t for t in hb if t >= T0 + 5000 * MS]
    # resumes at the first beat after the next alive (the 5.0 s beat came before it was read),
    # and the line is driven low at shutdown
    assert after == [T0 + 5500 * MS, T0 + 6000 * MS, T0 + 6200 * MS]
    assert out.edges[-1] == (T0 + 6200 * MS, "heartbeat", False)


def test_unhealthy_report_stops_the_heartbeat_at_once() -> None:
    script = [(T0, ("alive", True)), (T0 + 600 * MS, ("alive", False)), (T0 + 2000 * MS, ("stop", 0.0))]
    _, out, _ = _run(script)
    hb = [t for t, r, a in out.edges if r == "heartbeat"]
    assert hb[:-1] == [T0, T0 + 500 * MS]  # the 1.0 s beat is skipped: the pipeline said unhealthy


def test_shutdown_fires_pending_pulses_then_drives_lines_inactive() -> None:
    script = [(T0, ("pulse", RejectCommand(1, "reject", 10.0, at_ns=T0 + 900 * MS))), (T0 + MS, ("stop", 5.0))]
    _, out, _ = _run(script)
    assert out.rising("reject") == [T0 + 900 * MS] and out.falling("reject") == [T0 + 910 * MS]
    script = [(T0, ("pulse", RejectCommand(1, "reject", 10.0, at_ns=T0 + 900 * MS))), (T0 + MS, ("stop", 0.5))]
    _, out, loop = _run(script)
    assert out.rising("reject") == [] and len(loop.timeline) == 1  # drain timeout passed first: not fired late


def test_plc_mode_schedules_nothing_locally_and_sends_the_target_count() -> None:
    sched = RejectScheduler("plc", distance_counts=375)
    d = Decision(Frame(5, "cam", T0, None, encoder_count=1000), "reject", 9.0, "m", None, T0 + 3 * MS, {})
    assert sched.schedule(d) == []
    assert sched.target_count(d) == 1375
    msg = decision_message(d, sched.target_count(d))
    assert msg["encoder_count"] == 1000 and msg["target_count"] == 1375
    assert RejectScheduler("time", delay_ms=100).target_count(d) is None


@pytest.mark.parametrize("gap,runq,steal,expected", [
    (0, 3 * MS, 0, "runqueue"), (2 * MS, 0, 0, "hypervisor"), (0, 0, 10 * MS, "hypervisor"), (0, 0, 0, "timer")])
def test_late_cause_classification(gap: int, runq: int, steal: int, expected: str) -> None:
    assert late_cause(4 * MS, (100, 50, 1), (100 + runq, 50 + steal, 1), gap) == expected


def test_jitter_probe_on_the_virtual_clock_is_zero_and_on_the_real_clock_is_measured() -> None:
    j = measure_jitter(VirtualClock(T0), 20.0)
    assert j["n"] == 10 and j["p50_s"] == j["p99_s"] == j["max_s"] == 0.0
    j = measure_jitter(MonotonicClock(busy_ns=200_000), 20.0, period_ns=1_000_000)
    assert j["n"] == 20 and 0.0 <= j["p50_s"] <= j["p99_s"] <= j["max_s"]  # figures only; no bound here


def test_simulated_trigger_starts_with_the_loop_not_before_the_startup_probe() -> None:
    clock = VirtualClock(T0)
    conn = ScriptedConn(clock, [(T0 + 500 * MS, ("stop", 0.0))])
    loop = _LineLoop(conn, _spec(trigger={"type": "sim", "period_ms": 50.0}), [RecordingOutput(clock)], None,
                     clock=clock)
    clock.advance_to(T0 + 300 * MS)  # the jitter probe runs between construction and run()
    loop.run()
    times = [m[2] for m in conn.messages("trigger")]
    assert times == [T0 + 300 * MS + k * 50 * MS for k in range(1, 5)]  # one per period, no burst of past ones


class FaultingEncoder(SimEncoder):
    """A simulated belt whose counter reports lost edge events once the clock passes ``t_fault``
    (what ``GpiodEncoder.pop_faults`` returns after a sequence-number gap)."""

    def __init__(self, clock: VirtualClock, t_fault: int) -> None:
        super().__init__(SimEncoderConfig(speed_mm_s=1500.0, ticks_per_mm=1.0), clock=clock)
        self.t_fault = t_fault

    def pop_faults(self) -> list[tuple[int, int, str]]:
        if self.t_fault is not None and self.clock() >= self.t_fault:
            self.t_fault = None
            return [(self.clock(), 7, "encoder: 7 edge event(s) lost before seqno 90")]
        return []


def test_encoder_fault_rejects_every_part_in_flight_at_its_target() -> None:
    """Lost encoder edges: parts between camera and ejector not already rejected are rejected at
    their target count; parts already past the ejector are not; the fault is reported once."""
    clock = VirtualClock(T0)
    origin = T0 + 5 * MS
    enc = FaultingEncoder(clock, t_fault=origin + 240 * MS)  # count 360 at the fault
    enc.t0_ns = origin
    sched = RejectScheduler("encoder", distance_counts=200, pulse_ms=5.0)

    def dec(pid: int, kind: str, count: int) -> dict[str, Any]:  # captured at `count` on the belt
        t = enc.t0_ns + count * 1_000_000 * 2 // 3
        d = Decision(Frame(pid, "cam", t, None, encoder_count=count), kind, 0.0, "m", None, t, {})
        return decision_message(d, sched.target_count(d))

    script = [(origin, ("encoder_origin", origin)),
              (origin + MS, ("publish", dec(3, "accept", 100))),    # target 300: past the ejector at the fault
              (origin + 2 * MS, ("publish", dec(1, "accept", 200))),  # target 400
              (origin + 3 * MS, ("pulse", RejectCommand(2, "reject", 5.0, at_count=500))),
              (origin + 3 * MS, ("publish", dec(2, "reject", 300))),
              (origin + 4 * MS, ("publish", dec(4, "review", 260))),  # target 460
              (origin + 200 * MS, ("publish", dec(6, "accept", 300))),  # captured at count 300, target 500
              (origin + 240 * MS, ("alive", True)),  # the loop wakes (a real encoder's count stream: 5 ms)
              (origin + 300 * MS, ("publish", dec(5, "accept", 400))),  # after the fault: placed normally
              (origin + 301 * MS, ("stop", 5.0))]
    conn, out, loop = _run(script, encoder=enc, clock=clock, pulse_ms=5.0)
    enc.t0_ns = origin
    assert [enc.count_at(t) for t in out.rising("reject")] == [400, 460, 500]  # 6 merges into 2's pulse
    faults = conn.messages("encoder_fault")
    assert [(m[2], m[4]) for m in faults] == [(7, [1, 4, 6])]
    assert [(m[1], m[6]) for m in conn.messages("fired")] == [(1, False), (4, False), (2, False), (6, True)]
    assert loop.stats["encoder_faults"] == 1


def test_hardware_trigger_on_fake_gpiod_resolves_label_and_reports_lost_edges(fake_chip) -> None:
    """The trigger input through the real request path (fake gpiod): kernel timestamps become
    trigger times; edges the kernel FIFO dropped show as a line_seqno gap and are reported."""
    clock = VirtualClock(T0)
    trig = {"type": "gpiod", "chip": "tegra234-gpio", "line": 7, "edge": "rising", "active_low": False,
            "debounce_us": 0, "event_buffer_size": 4, "period_ms": 100.0, "frame_timeout_ms": 100.0}
    conn = ScriptedConn(clock, [])
    loop = _LineLoop(conn, _spec(trigger=trig), [RecordingOutput(clock)], None, clock=clock)
    loop.open_trigger()
    fake_chip.drive(7, 1, T0 + 1 * MS)
    fake_chip.drive(7, 0, T0 + 2 * MS)
    loop._read_triggers()
    for k in range(10):  # 10 parts while the loop is busy: the FIFO keeps the last 4
        fake_chip.drive(7, 1, T0 + (10 + 2 * k) * MS)
        fake_chip.drive(7, 0, T0 + (11 + 2 * k) * MS)
    loop._read_triggers()
    trig_msgs = [m for m in loop.out_msgs if m[0] == "trigger"]
    assert [m[2] for m in trig_msgs] == [T0 + MS] + [T0 + (10 + 2 * k) * MS for k in range(6, 10)]
    errors = [m for m in loop.out_msgs if m[0] == "error"]
    assert len(errors) == 1 and errors[0][1] == "trigger" and "6 trigger edge event(s) lost" in errors[0][2]
    loop.trig_req.release()
