"""The line process: output lines, pulse timing and the heartbeat in a process of their own.

Why a process: pulse edges must land within a millisecond of their target. In one Python
process the timing thread waits for the GIL behind preprocessing, inference glue and SQLite, and
on a loaded CPU that wait is several milliseconds. A separate process has its own GIL, does
almost nothing but wait for the next edge, and is given ``SCHED_FIFO`` priority when allowed
(RLIMIT_RTPRIO >= the priority: LimitRTPRIO= in the unit, no capability; refused → logged,
never silent). The daemon starts it (this module is part of the
daemon's wiring, not a stage): it builds the outputs from their configs, runs the
``PulseTimeline`` against the monotonic clock / encoder and reports every fired pulse back.

Messages parent → line process: ("pulse", RejectCommand), ("publish", dict), ("alive", bool),
("set", role, bool), ("band", accept_edge, reject_edge), ("fault", code), ("encoder_origin", t0_ns),
("reset_fault",), ("enabled", bool), ("soft_trigger", source), ("stop", drain_timeout_s). Line process → parent: ("ready", notes, info),
("open_error", message), ("fired", part_id, role, t_ns, count, late, merged, late_command, target_ns,
late_cause), ("error", output,
message), ("stats", output, {name: value}) (an output's own figures, once a second; names ending
in ``_total`` are counters), ("control", action, source) (a PLC / OPC UA client asked for reset_fault, enable, disable or a
trigger the line process cannot take itself: ``Daemon.control``), ("trigger", seq, t_ns, latched_count), ("count", t_ns, count),
("encoder_fault", t_ns, lost_events, message, [part ids rejected for it]), ("edges", {chip:
[EdgeRecord...]}), ("closed", stats) — all but the first two batched as ("batch", [...]).

Safety: the heartbeat toggles only while the parent reports ``alive`` with a healthy pipeline;
if the parent dies (pipe closed) every line is driven inactive and the process exits; SIGINT /
SIGTERM are ignored here so the parent can finish in-flight parts before the lines go down."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from edgekit.errors import DeviceError, EdgekitError
from edgekit.runtime.clock import MonotonicClock, SchedProbe, late_cause, set_timer_slack
from edgekit.runtime.scheduler import Edge, PulseTimeline
from edgekit.runtime.types import Decision, RejectCommand

_GUARD_NS = 1_500_000  # the last 1.5 ms before an edge: no message handling, then sleep_until
_LATE_CAUSES = ("decision", "runqueue", "hypervisor", "timer")


def _build(spec: dict[str, Any]) -> tuple[list[Any], Any]:
    from edgekit.runtime.encoder import GpiodEncoderConfig, SimEncoderConfig, make_encoder
    from edgekit.runtime.outputs import OUTPUTS
    from edgekit.runtime.outputs.sidecar import IsolatedOutput

    outputs = []
    for c in spec["outputs"]:
        cls = OUTPUTS.get(c["type"])
        cfg = cls.config_model.model_validate(c)
        # network-heavy outputs (OPC UA, MQTT) run in a process of their own: their Python must
        # not hold this process's GIL while an edge is due (outputs/sidecar.py)
        outputs.append(IsolatedOutput(cls, cfg) if getattr(cfg, "process", "line") == "own" else cls(cfg))
    enc = None
    if spec.get("encoder"):
        e = spec["encoder"]
        enc = make_encoder(SimEncoderConfig.model_validate(e) if e["type"] == "sim" else GpiodEncoderConfig.model_validate(e))
    return outputs, enc


def line_main(conn: Any, spec: dict[str, Any]) -> None:
    """Body of the line process: open outputs, report ready, run the pulse loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    notes: list[str] = []
    opened: list[Any] = []
    enc = None
    try:
        outputs, enc = _build(spec)
        for o in outputs:
            o.open()
            opened.append(o)
            notes += list(getattr(o, "notes", []))  # e.g. an OPC UA server without security
        if enc is not None and spec["encoder"]["type"] != "sim":
            enc.open()  # a simulated belt is opened when the parent sends its origin
        loop = _LineLoop(conn, spec, outputs, enc)
        loop.open_trigger()
    except EdgekitError as exc:
        for o in opened:
            o.close()
        if enc is not None and spec["encoder"]["type"] != "sim":
            enc.close()
        conn.send(("open_error", str(exc)))
        return
    prio = spec.get("rt_priority")
    fifo = False
    if prio:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(prio)))
            fifo = True
        except (PermissionError, OSError, AttributeError) as exc:
            notes.append(f"line process not real-time (SCHED_FIFO {prio} refused: {exc}); pulse jitter may "
                         f"exceed 1 ms under load: {RT_FIX}")
    slack = set_timer_slack(1)
    _lock_memory(notes)
    info = {"sched_fifo": fifo, "rt_priority": prio if fifo else None, "timer_slack_1ns": slack,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    if spec.get("jitter_probe_ms", 0) > 0:
        info["jitter"] = measure_jitter(loop.clock, spec["jitter_probe_ms"])
    conn.send(("ready", notes, info))
    # the cyclic garbage collector would stop this process for milliseconds at random moments;
    # objects made so far are frozen out of it and collections run only in quiet moments
    gc.collect()
    gc.freeze()
    gc.disable()
    loop.run()


PLC_FIX = "let the PLC time the reject (scheduler.mode: plc, docs/plc-timed.md)"
# one story with firmware_scripts/edgekit.service: RLIMIT_RTPRIO (LimitRTPRIO=), no capability
RT_FIX = ("grant the service real-time scheduling (systemd: LimitRTPRIO= at least line.rt_priority; "
          "edgekit.service ships LimitRTPRIO=50 and needs no capability for it; started by hand: `ulimit -r 50` "
          "or an rtprio line in /etc/security/limits.d), keep a core for it (isolcpus= / CPUAffinity=), or use "
          f"a PREEMPT_RT kernel (Jetson: the JetPack real-time kernel); where none is possible, {PLC_FIX}")


def describe_jitter(j: dict[str, Any], sched_fifo: bool | None, requested: bool = True) -> str:
    """One phrase for a ``measure_jitter`` result: p50/p99/max in ms, the scheduling (granted,
    refused, or not configured when ``line.rt_priority`` is unset) and the late wake-ups by cause
    (used by the daemon's startup note, doctor and the simulator)."""
    causes = {k: v for k, v in (j.get("late_over_100us_by_cause") or {}).items() if v}
    sched = ("SCHED_FIFO granted" if sched_fifo else "SCHED_FIFO refused" if requested
             else "SCHED_FIFO not configured (line.rt_priority)")
    return (f"wake-up jitter p50/p99/max {j['p50_s'] * 1e3:.3f}/{j['p99_s'] * 1e3:.3f}/{j['max_s'] * 1e3:.3f} ms "
            f"over {j['n']} wake-ups, {sched}" + (f", late wake-ups by cause {causes}" if causes else ""))


def measure_jitter(clock: Any, duration_ms: float, period_ns: int = 2_000_000) -> dict[str, Any]:
    """Wake-up lateness of this process for ``duration_ms``: sleep to a target every
    ``period_ns`` the way an edge is waited for, record how late each wake-up came and why
    (``late_cause``). Returns p50/p99/max in seconds, n, and the wake-ups > 100 µs late by cause."""
    probe = SchedProbe()
    lat: list[int] = []
    causes = dict.fromkeys(_LATE_CAUSES[1:], 0)
    n = max(10, int(duration_ms * 1e6 // period_ns))
    for _ in range(n):
        target = clock.now_ns() + period_ns
        before = probe.sample()
        clock.sleep_until(target)
        late = clock.now_ns() - target
        lat.append(late)
        if late > 100_000:
            causes[late_cause(late, before, probe.sample(), getattr(clock, "gap_ns", 0))] += 1
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] / 1e9  # noqa: E731
    return {"p50_s": q(0.5), "p99_s": q(0.99), "max_s": lat[-1] / 1e9, "n": len(lat),
            "late_over_100us_by_cause": causes}


def _lock_memory(notes: list[str]) -> None:
    """mlockall(MCL_CURRENT | MCL_FUTURE): no page fault may delay an edge (standard real-time
    practice); refused without CAP_IPC_LOCK / RLIMIT_MEMLOCK → a startup note."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.mlockall(1 | 2) != 0:
            err = ctypes.get_errno()
            notes.append(f"line process memory not locked (mlockall: {os.strerror(err)}); "
                         "grant CAP_IPC_LOCK or raise LimitMEMLOCK for the service")
    except (OSError, AttributeError) as exc:
        notes.append(f"line process memory not locked ({exc})")


class _LineLoop:
    """The pulse loop. ``clock`` is a ``MonotonicClock`` in production and a ``VirtualClock`` in
    tests (edges then land at exactly their target, asserted to the nanosecond)."""

    def __init__(self, conn: Any, spec: dict[str, Any], outputs: list[Any], enc: Any, clock: Any = None) -> None:
        self.conn = conn
        self.outputs = outputs
        self.enc = enc
        self.clock = clock if clock is not None else MonotonicClock(int(spec.get("busy_wait_us", 1000) * 1000))
        now = self.clock.now_ns()
        self.timeline = PulseTimeline(overlap=spec["overlap"])
        self.hb_period_ns = int(spec["heartbeat_period_ms"] * 1e6)
        self.alive_timeout_ns = int(spec["alive_timeout_ms"] * 1e6)
        self.tolerance_ns = int(spec.get("tolerance_ms", 1.0) * 1e6)
        self.last_alive_ns = now
        self.healthy = True
        self.hb_state = False
        self.next_hb = now
        self.stop_at: int | None = None
        self.out_msgs: list[tuple[Any, ...]] = []
        self.stats: dict[str, Any] = {"pulses": 0, "late": 0, "errors": 0,
                                      "late_by_cause": dict.fromkeys(_LATE_CAUSES, 0)}
        self.enc_ready = enc is not None and spec["encoder"]["type"] != "sim"
        self.next_gc_ns = 0
        self.next_stats_ns = 0
        self.late_cmds: set[int] = set()
        self.stream_count = self.enc_ready  # a real encoder: stream its count to the daemon
        self.next_count_ns = 0
        self.trig = spec.get("trigger")
        self.trig_seq = 0
        self.trig_req: Any = None
        self.next_trig_ns: int | None = None
        if self.trig is not None and self.trig["type"] == "sim":
            self.next_trig_ns = now + int(self.trig["period_ms"] * 1e6)
        self.probe = SchedProbe() if spec.get("probe", True) else None
        # parts between camera and ejector that are not already rejected: {part_id: target count};
        # an encoder fault (lost edges) makes their placement unknown and they are rejected
        self.inflight: dict[int, tuple[int, int]] = {}  # part_id: (target count, capture time)
        self.failsafe_pulse_ms = float(spec.get("pulse_ms", 20.0))
        self.output_fault = False  # a line write failed: FAULT_CODE 4 sent once (reset_fault re-arms)
        self.trig_seq_k: int = 0  # last trigger event seqno (kernel): a gap is a lost trigger
        self._wait_sample: tuple[int, int, int] | None = None  # probe sample before the current wait

    def _target_ns(self, c: RejectCommand) -> int | None:
        """When the command should fire: its time, or when the encoder reached its count."""
        if c.at_ns is not None:
            return c.at_ns
        if c.at_count is not None and self.enc_ready:
            return self.enc.time_of_count(c.at_count)
        return None

    def drive(self, edges: list[Edge]) -> None:
        fired: list[tuple[Edge, RejectCommand]] = []
        for e in edges:
            if e.active and e.command is not None:
                fired.append((e, e.command))
                if e.merged:
                    continue
            for o in self.outputs:
                try:
                    o.set_line(e.role, e.active)
                except Exception as exc:  # one broken output must not stop the others
                    self.stats["errors"] += 1
                    self.out_msgs.append(("error", o.name, repr(exc)))
                    if not self.output_fault:  # FAULT_CODE 4 (docs/plc.md) to the outputs that report faults
                        self.output_fault = True
                        for other in self.outputs:
                            if other is not o:
                                try:
                                    other.set_fault(4)
                                except Exception:  # noqa: BLE001 - reporting must not break the pulse loop
                                    self.stats["errors"] += 1
        # bookkeeping only after every line of this instant is driven
        for e, c in fired:
            target = self._target_ns(c)
            lateness = e.t_ns - target if target is not None else 0
            late = lateness > self.tolerance_ns or (
                target is None and c.at_count is not None and e.count is not None and e.count > c.at_count)
            late_cmd = c.part_id in self.late_cmds
            self.late_cmds.discard(c.part_id)
            cause = None
            if late:
                if late_cmd:
                    cause = "decision"
                elif self.probe is not None and self._wait_sample is not None:
                    cause = late_cause(lateness, self._wait_sample, self.probe.sample(),
                                       getattr(self.clock, "gap_ns", 0))
                else:
                    cause = "timer"
                self.stats["late_by_cause"][cause] += 1
            self.stats["pulses"] += 1
            self.stats["late"] += int(late)
            self.out_msgs.append(("fired", c.part_id, c.role, e.t_ns, e.count, late, e.merged, late_cmd,
                                  target, cause))

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "pulse":
            c = msg[1]
            now = self.clock.now_ns()
            count = self.enc.count() if self.enc_ready else None
            if (c.at_ns is not None and c.at_ns < now) or (c.at_count is not None and count is not None
                                                              and c.at_count < count):
                self.late_cmds.add(c.part_id)  # the decision came after its target: not our lateness
            self.timeline.add(c)
        elif kind == "publish":
            self._track_inflight(msg[1])
            for o in self.outputs:
                try:
                    o.publish_dict(msg[1])
                except Exception as exc:
                    self.stats["errors"] += 1
                    self.out_msgs.append(("error", o.name, repr(exc)))
        elif kind == "alive":
            self.last_alive_ns = self.clock.now_ns()
            self.healthy = bool(msg[1])
        elif kind == "set":
            self.drive([Edge(msg[1], bool(msg[2]), self.clock.now_ns(), None)])
        elif kind == "band":
            for o in self.outputs:
                o.set_band(msg[1], msg[2])
        elif kind == "fault":
            for o in self.outputs:
                o.set_fault(msg[1])
        elif kind == "flag":
            for o in self.outputs:
                getattr(o, "set_flag", lambda *_: None)(msg[1], msg[2])
        elif kind == "reset_fault":
            self.output_fault = False
            for o in self.outputs:
                if hasattr(o, "reset_fault"):
                    o.reset_fault()
        elif kind == "enabled":
            for o in self.outputs:
                if hasattr(o, "set_enabled"):
                    o.set_enabled(bool(msg[1]))
        elif kind == "soft_trigger":
            self.soft_trigger(msg[1], self.clock.now_ns())
        elif kind == "encoder_origin":
            self.enc.t0_ns = msg[1]  # the simulated belt of the parent's camera
            self.enc_ready = True
        elif kind == "stop":
            self.stop_at = self.clock.now_ns() + int(msg[1] * 1e9)

    def open_trigger(self) -> None:
        """Request the hardware trigger line with edge events (libgpiod v2)."""
        if self.trig is None or self.trig["type"] != "gpiod":
            return
        from datetime import timedelta

        from edgekit.runtime.gpiochip import resolve_chip

        chip = resolve_chip(self.trig["chip"], who="source.trigger").path
        import gpiod
        from gpiod.line import Direction, Edge

        edge = Edge.RISING if self.trig["edge"] == "rising" else Edge.FALLING
        settings = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=edge,
                                      active_low=self.trig["active_low"],
                                      debounce_period=timedelta(microseconds=self.trig["debounce_us"]))
        try:
            self.trig_req = gpiod.request_lines(chip, consumer="edgekit-trigger",
                                                config={self.trig["line"]: settings},
                                                event_buffer_size=self.trig.get("event_buffer_size"))
        except OSError as exc:
            raise DeviceError(f"trigger: cannot request {self.trig['chip']} line {self.trig['line']} "
                              f"({exc.strerror or exc}); check source.trigger") from None

    def _track_inflight(self, d: dict[str, Any]) -> None:
        tc = d.get("target_count")
        if tc is None or not self.enc_ready:
            return
        count = self.enc.count()
        if self.inflight and len(self.inflight) > 64:  # parts past the ejector leave the table
            self.inflight = {p: v for p, v in self.inflight.items() if v[0] >= count}
        if d.get("kind") != "reject" and tc >= count:
            self.inflight[d["part_id"]] = (int(tc), int(d.get("t_capture_ns") or 0))

    def check_encoder(self) -> None:
        """Encoder faults (lost edge events, impossible transitions): report them and reject every
        part in flight that is not rejected yet, at its target count (fail-safe: where a part is on
        the belt is no longer known to the tick)."""
        faults = self.enc.pop_faults()
        if not faults:
            return
        count = self.enc.count()
        t_first = min(f[0] for f in faults)
        # captured before the first lost edge and not yet at the ejector; parts captured after it
        # were latched on the same (shifted) count as the ejector's and stay placed
        parts = sorted(p for p, (c, t) in self.inflight.items() if c >= count and t <= t_first)
        for p in parts:
            self.timeline.add(RejectCommand(p, "reject", self.failsafe_pulse_ms, at_count=self.inflight.pop(p)[0]))
        self.stats["encoder_faults"] = self.stats.get("encoder_faults", 0) + len(faults)
        for t_ns, lost, msg in faults:
            self.out_msgs.append(("encoder_fault", t_ns, lost, msg, parts))
            parts = []  # the parts are named once, with the first fault

    def _emit_trigger(self, t_ns: int) -> None:
        count = None
        if self.enc is not None and (self.enc_ready or getattr(self.enc, "t0_ns", None) is not None):
            count = self.enc.count_at(t_ns)
        self.out_msgs.append(("trigger", self.trig_seq, t_ns, count))
        self.trig_seq += 1

    def soft_trigger(self, source: str, t_ns: int) -> None:
        """A software trigger (PLC TRIGGER bit, OPC UA, operator page): one part, like a trigger
        edge at ``t_ns``, where the camera takes triggers; else handed to the daemon, which refuses."""
        if self.trig is not None:
            self._emit_trigger(t_ns)
        else:
            self.out_msgs.append(("control", "trigger", source))

    def _read_triggers(self) -> None:
        for ev in self.trig_req.read_edge_events():
            if ev.line_seqno != self.trig_seq_k + 1:  # the kernel dropped trigger edges: parts not imaged
                lost = ev.line_seqno - self.trig_seq_k - 1
                self.out_msgs.append(("error", "trigger", f"{lost} trigger edge event(s) lost before seqno "
                                      f"{ev.line_seqno} (kernel buffer full): {lost} part(s) passed uninspected"))
            self.trig_seq_k = ev.line_seqno
            self._emit_trigger(ev.timestamp_ns)  # kernel CLOCK_MONOTONIC timestamp of the edge

    def flush(self, final: bool = False) -> None:
        now = self.clock.now_ns()
        if final or now >= self.next_stats_ns:  # outputs' own figures (outbox, FIFO) once a second
            self.next_stats_ns = now + 1_000_000_000
            for o in self.outputs:
                st = getattr(o, "stats", None)
                if st is not None:
                    self.out_msgs.append(("stats", o.name, st()))
        for o in self.outputs:
            for err in o.pop_errors():
                self.stats["errors"] += 1
                self.out_msgs.append(("error", o.name, err))
            for action, source, t_ns in getattr(o, "pop_controls", list)():
                if action == "trigger":
                    self.soft_trigger(source, t_ns)
                else:
                    self.out_msgs.append(("control", action, source))
        if self.out_msgs:
            msgs, self.out_msgs = self.out_msgs, []
            try:
                self.conn.send(("batch", msgs))
            except (BrokenPipeError, OSError):
                pass

    def run(self) -> None:
        conn = self.conn
        clock = self.clock
        parent_gone = False
        if self.next_trig_ns is not None:  # a simulated trigger starts with the loop, not before the probe
            self.next_trig_ns = clock.now_ns() + int(self.trig["period_ms"] * 1e6)
        while True:
            now = clock.now_ns()
            if self.enc_ready:
                self.check_encoder()
            count = self.enc.count() if self.enc_ready else None
            edges = self.timeline.due(now, count)
            if edges:
                self.drive(edges)
            if now >= self.next_hb:
                ok = self.healthy and now - self.last_alive_ns < self.alive_timeout_ns
                if ok:  # a stalled or dead pipeline stops the heartbeat: the PLC stops the line
                    self.hb_state = not self.hb_state
                    self.drive([Edge("heartbeat", self.hb_state, now, None)])
                self.next_hb = now + self.hb_period_ns
            if self.next_trig_ns is not None and now >= self.next_trig_ns:
                self._emit_trigger(self.next_trig_ns)
                self.next_trig_ns += int(self.trig["period_ms"] * 1e6)
            if self.stream_count and now >= self.next_count_ns:
                self.out_msgs.append(("count", now, self.enc.count()))
                self.next_count_ns = now + 5_000_000
            self.flush()
            busy = len(self.timeline) or any(self.timeline.active(r) for r in ("reject", "review"))
            if parent_gone or (self.stop_at is not None and (not busy or now >= self.stop_at)):
                break
            wake = [self.next_hb]
            if self.next_trig_ns is not None:
                wake.append(self.next_trig_ns)
            if self.stream_count:
                wake.append(self.next_count_ns)
            if self.stop_at is not None:
                wake.append(self.stop_at)
            t_next = self.timeline.next_time_ns()
            if t_next is not None:
                wake.append(t_next)
            ct = self.timeline.pending_count_target()
            if ct is not None and self.enc_ready:
                tc = self.enc.time_of_count(ct)
                wake.append(tc if tc is not None else now + 200_000)
            target = min(wake)
            left = target - clock.now_ns()
            if left > 10_000_000 and now >= self.next_gc_ns:  # ≥ 10 ms of nothing to do
                gc.collect(1)
                self.next_gc_ns = now + 1_000_000_000
                left = target - clock.now_ns()
            if self.probe is not None and left > 0 and len(self.timeline):
                self._wait_sample = self.probe.sample()  # how a pulse's wait began (for late causes)
            try:
                if left > _GUARD_NS:
                    fds = [conn] if self.trig_req is None else [conn, self.trig_req.fd]
                    ready = clock.wait(fds, left - _GUARD_NS)
                    if self.trig_req is not None and self.trig_req.fd in ready:
                        self._read_triggers()
                    while conn.poll(0):
                        self.handle(conn.recv())
                    continue
                while conn.poll(0):  # do not let messages wait while we approach an edge
                    self.handle(conn.recv())
            except (EOFError, OSError):
                parent_gone = True
                continue
            if left > 0:
                clock.sleep_until(target)
        now = clock.now_ns()
        self.drive(self.timeline.release_all(now) + [Edge("heartbeat", False, now, None)])
        chips: dict[str, list[Any]] = {}
        for o in self.outputs:
            try:
                o.close()
            except Exception as exc:
                self.out_msgs.append(("error", o.name, repr(exc)))
            chip = getattr(o, "recorded_edges", None)
            if chip is not None:
                chips[o.cfg.chip] = chip()
        if self.enc_ready:
            self.enc.close()
        if self.trig_req is not None:
            self.trig_req.release()
        self.flush(final=True)
        if not parent_gone:
            try:
                conn.send(("edges", chips))
                conn.send(("closed", self.stats))
            except (BrokenPipeError, OSError):
                pass


def decision_message(d: Decision, target_count: int | None = None,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What outputs that report per part (a PLC) get for one decision (no image). ``target_count``:
    the encoder count at which the part reaches the reject station (PLC-timed rejection);
    ``extra``: the daemon's ``bundle_id``, archived ``image_path`` (or None) and ``enabled``."""
    f = d.frame
    return {"part_id": f.part_id, "kind": d.kind, "score": d.score, "failsafe": d.failsafe,
            "encoder_count": f.encoder_count, "target_count": target_count, "t_capture_ns": f.t_capture_ns,
            "t_decided_ns": d.t_decided_ns, "source_id": f.source_id, "model_id": d.model_id, **(extra or {})}


class LineProcess:
    """Parent-side handle of the line process.

    Args:
        spec: outputs (config dicts), encoder (config dict) and its ``encoder_t0_ns``, ``overlap``,
            ``heartbeat_period_ms``, ``alive_timeout_ms``, ``rt_priority``.
        on_message: called in the receiver thread for every ("fired"|"error", ...) message.
    """

    def __init__(self, spec: dict[str, Any], on_message: Callable[[tuple[Any, ...]], None]) -> None:
        self.spec = spec
        self.on_message = on_message
        self._proc: Any = None
        self._conn: Any = None
        self._send_lock = threading.Lock()
        self._rx: threading.Thread | None = None
        self._closed = threading.Event()
        self.edges: dict[str, list[Any]] = {}
        self.stats: dict[str, Any] = {}
        self.notes: list[str] = []
        self.info: dict[str, Any] = {}  # scheduling granted, timer slack, startup jitter
        self.died = threading.Event()

    def start(self, timeout_s: float = 60.0) -> list[str]:
        """Start the process and wait until its outputs are open; DeviceError if they cannot be.

        A plain ``python -m edgekit.runtime.lineproc FD`` child over a socketpair: unlike
        multiprocessing's spawn it never re-imports the caller's ``__main__`` script, and unlike
        fork it does not copy a process that already runs onnxruntime threads."""
        a, b = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "edgekit.runtime.lineproc", str(b.fileno())],
                                          pass_fds=(b.fileno(),), close_fds=True)
        finally:
            b.close()
        parent = Connection(a.detach())
        self._conn = parent
        parent.send(self.spec)
        if not parent.poll(timeout_s):
            self._proc.kill()
            raise DeviceError(f"line process did not start within {timeout_s:.0f} s")
        try:
            msg = parent.recv()
        except EOFError:
            raise DeviceError("line process died while opening the outputs (see its stderr)") from None
        if msg[0] == "open_error":
            self._proc.wait(timeout=5)
            raise DeviceError(msg[1])
        self.notes = list(msg[1])
        self.info = dict(msg[2]) if len(msg) > 2 else {}
        return self.notes

    def receive_loop(self) -> None:
        """Receiver (run in a daemon thread by the daemon): dispatches line-process messages."""
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._closed.is_set():
                    self.died.set()
                    self.on_message(("died",))
                return
            if msg[0] == "batch":
                for m in msg[1]:
                    self.on_message(m)
            elif msg[0] == "edges":
                self.edges = msg[1]
            elif msg[0] == "closed":
                self.stats = msg[1]
                self._closed.set()
                return

    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self._conn.send(msg)
            except (BrokenPipeError, OSError):
                self.died.set()

    def schedule(self, cmd: RejectCommand) -> None:
        self._send(("pulse", cmd))

    def publish(self, d: Decision, target_count: int | None = None, extra: dict[str, Any] | None = None) -> None:
        self._send(("publish", decision_message(d, target_count, extra)))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def set_encoder_origin(self, t0_ns: int) -> None:
        """Share the simulated belt's origin (monotonic ns) with the line process."""
        self._send(("encoder_origin", t0_ns))

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        self._send(("band", accept_edge, reject_edge))

    def set_fault(self, code: int) -> None:
        self._send(("fault", code))

    def set_flag(self, name: str, on: bool) -> None:
        """A station condition for outputs that report it (``archive_full``)."""
        self._send(("flag", name, bool(on)))

    def reset_fault(self) -> None:
        """Every output clears its latched fault (``Daemon.control("reset_fault")``)."""
        self._send(("reset_fault",))

    def set_enabled(self, enabled: bool) -> None:
        self._send(("enabled", enabled))

    def soft_trigger(self, source: str) -> None:
        self._send(("soft_trigger", source))

    def alive(self, healthy: bool) -> None:
        self._send(("alive", healthy))

    def set_line(self, role: str, active: bool) -> None:
        self._send(("set", role, active))

    def stop(self, drain_timeout_s: float) -> None:
        """Fire what is pending (up to the timeout), drive lines inactive, collect the edges."""
        if self._proc is None:
            return
        self._send(("stop", drain_timeout_s))
        self._closed.wait(drain_timeout_s + 10.0)
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._conn.close()
        self._proc = None


def _child(fd: int) -> None:
    conn = Connection(fd)
    try:
        spec = conn.recv()
    except EOFError:
        return
    line_main(conn, spec)


if __name__ == "__main__":
    _child(int(sys.argv[1]))
