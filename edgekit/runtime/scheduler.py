"""Reject scheduling: ``Decision`` → ``RejectCommand`` (when and on which line), and the pulse
timeline that turns commands into line edges exactly at their target.

Encoder mode: the part's encoder count at capture + ``distance_counts`` is where the reject
fires. Time mode: capture time + ``delay_ms``. Targets are absolute, so results that arrive out
of order are still fired at their own target (a heap, not a FIFO). Overlapping pulses on one
line either ``merge`` (the line stays active to the later end) or ``extend`` (each merged part
adds its full pulse width, e.g. an air jet that must blow once per part)."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Literal

from edgekit.runtime.types import Decision, LineRole, RejectCommand


class RejectScheduler:
    """Decide the pulse(s) for a decision.

    Args:
        mode: ``encoder`` (needs ``frame.encoder_count``), ``time``, or ``plc`` (targets as in
            encoder mode, but no local pulse: the PLC fires from the result's target count).
        distance_counts: encoder ticks from the camera to the reject station.
        delay_ms: conveyor time from the camera to the reject station.
        pulse_ms: reject pulse width; ``review_pulse_ms`` for the review line.
    """

    def __init__(self, mode: Literal["encoder", "time", "plc"], distance_counts: int = 0, delay_ms: float = 0.0,
                 pulse_ms: float = 20.0, review_pulse_ms: float | None = None) -> None:
        self.mode = mode
        self.distance_counts = int(distance_counts)
        self.delay_ns = int(round(delay_ms * 1e6))
        self.pulse_ms = float(pulse_ms)
        self.review_pulse_ms = float(review_pulse_ms if review_pulse_ms is not None else pulse_ms)

    def target(self, decision: Decision) -> tuple[int | None, int | None]:
        """(at_count, at_ns) for the part; exactly one is set."""
        f = decision.frame
        if self.mode in ("encoder", "plc"):
            if f.encoder_count is None:
                raise ValueError(f"part {f.part_id}: encoder mode but the frame has no encoder count")
            return f.encoder_count + self.distance_counts, None
        return None, f.t_capture_ns + self.delay_ns

    def target_count(self, decision: Decision) -> int | None:
        """The encoder count at which the part reaches the reject station (None in time mode or
        without a latched count): what a PLC's shift register needs (``TARGET_COUNT``)."""
        if self.mode == "time" or decision.frame.encoder_count is None:
            return None
        return decision.frame.encoder_count + self.distance_counts

    def schedule(self, decision: Decision) -> list[RejectCommand]:
        """Commands for one decision: none for accept (or in plc mode), one pulse for reject/review."""
        if decision.kind == "accept" or self.mode == "plc":
            return []
        at_count, at_ns = self.target(decision)
        role: LineRole = "reject" if decision.kind == "reject" else "review"
        width = self.pulse_ms if role == "reject" else self.review_pulse_ms
        return [RejectCommand(decision.part_id, role, width, at_count=at_count, at_ns=at_ns)]


@dataclass(frozen=True)
class Edge:
    """A line transition produced by the timeline.

    Args:
        active: True for the start of a pulse (asserted), False for its end.
        command: the command that started this pulse (None for a pulse end).
        merged: True when a start landed inside an active pulse (no new edge on the line).
    """

    role: LineRole
    active: bool
    t_ns: int
    count: int | None
    command: RejectCommand | None = None
    merged: bool = False


@dataclass
class _LineState:
    active: bool = False
    until_ns: int = 0


@dataclass
class PulseTimeline:
    """Pending pulses ordered by target; ``due`` returns the edges to drive now.

    Pure logic (no clock, no I/O): the output thread passes the current monotonic time and
    encoder count, drives the returned edges and sleeps until ``next_wakeup``.
    """

    overlap: Literal["merge", "extend"] = "merge"
    _by_count: list[tuple[int, int, RejectCommand]] = field(default_factory=list)
    _by_time: list[tuple[int, int, RejectCommand]] = field(default_factory=list)
    _lines: dict[str, _LineState] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=itertools.count)

    def add(self, cmd: RejectCommand) -> None:
        if cmd.at_count is not None:
            heapq.heappush(self._by_count, (cmd.at_count, next(self._seq), cmd))
        else:
            heapq.heappush(self._by_time, (cmd.at_ns, next(self._seq), cmd))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._by_count) + len(self._by_time)

    def pending_count_target(self) -> int | None:
        """Smallest pending encoder target, if any."""
        return self._by_count[0][0] if self._by_count else None

    def next_time_ns(self) -> int | None:
        """Earliest time-mode target or pulse end, if any."""
        cands = [self._by_time[0][0]] if self._by_time else []
        cands += [s.until_ns for s in self._lines.values() if s.active]
        return min(cands) if cands else None

    def active(self, role: str) -> bool:
        s = self._lines.get(role)
        return bool(s and s.active)

    def _start(self, cmd: RejectCommand, now_ns: int, count: int | None, out: list[Edge]) -> None:
        st = self._lines.setdefault(cmd.role, _LineState())
        width_ns = int(round(cmd.pulse_ms * 1e6))
        if st.active:
            if self.overlap == "extend":
                st.until_ns = max(st.until_ns, now_ns) + width_ns
            else:
                st.until_ns = max(st.until_ns, now_ns + width_ns)
            out.append(Edge(cmd.role, True, now_ns, count, cmd, merged=True))
        else:
            st.active, st.until_ns = True, now_ns + width_ns
            out.append(Edge(cmd.role, True, now_ns, count, cmd))

    def due(self, now_ns: int, count: int | None) -> list[Edge]:
        """Edges due at ``now_ns`` / encoder ``count``, in order: ends first, then starts."""
        out: list[Edge] = []
        for role, st in self._lines.items():
            if st.active and st.until_ns <= now_ns:
                st.active = False
                out.append(Edge(role, False, now_ns, count))  # type: ignore[arg-type]
        while self._by_time and self._by_time[0][0] <= now_ns:
            self._start(heapq.heappop(self._by_time)[2], now_ns, count, out)
        while count is not None and self._by_count and self._by_count[0][0] <= count:
            self._start(heapq.heappop(self._by_count)[2], now_ns, count, out)
        return out

    def release_all(self, now_ns: int) -> list[Edge]:
        """Ends of every active pulse (shutdown: drive lines to their safe, inactive state)."""
        out = [Edge(r, False, now_ns, None) for r, s in self._lines.items() if s.active]  # type: ignore[arg-type]
        for s in self._lines.values():
            s.active = False
        return out
