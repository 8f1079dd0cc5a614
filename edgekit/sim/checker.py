"""Checks a simulated run against the ground truth: which parts were physically pushed off the
belt (from the fake chip's recorded edges, not from the daemon's own bookkeeping), whether that
was right, how far from the part each pulse started, and whether every decision reached the log.

A part counts as rejected when a rising edge on the reject line falls within ± half a part
pitch of its arrival at the reject station, or the line is active at that instant (a pulse
merged with the previous part's). Placement error = encoder count (and time) at the rising edge
minus the part's arrival count (and time)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from edgekit.runtime.outputs.gpio import EdgeRecord
from edgekit.sim.camera import PartTruth


def _pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, int(math.ceil(q * len(s))) - 1))]


def _stats(vals: list[float], nd: int = 3) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, nd)

    return {"p50": r(_pct(vals, 0.5)), "p99": r(_pct(vals, 0.99)), "max": r(max(vals) if vals else None),
            "n": len(vals)}


@dataclass
class _Line:
    rising: list[int]
    intervals: list[tuple[int, int]]

    @classmethod
    def from_edges(cls, edges: list[EdgeRecord], end_ns: int) -> _Line:
        rising, intervals, on = [], [], None
        for e in edges:
            if e.active and on is None:
                on = e.t_ns
                rising.append(e.t_ns)
            elif not e.active and on is not None:
                intervals.append((on, e.t_ns))
                on = None
        if on is not None:
            intervals.append((on, end_ns))
        return cls(rising, intervals)

    def edge_near(self, t_ns: int, half_window_ns: int) -> int | None:
        i = bisect.bisect_left(self.rising, t_ns - half_window_ns)
        best = None
        while i < len(self.rising) and self.rising[i] <= t_ns + half_window_ns:
            if best is None or abs(self.rising[i] - t_ns) < abs(best - t_ns):
                best = self.rising[i]
            i += 1
        return best

    def active_at(self, t_ns: int) -> bool:
        i = bisect.bisect_right(self.intervals, (t_ns, 1 << 62)) - 1
        return i >= 0 and self.intervals[i][0] <= t_ns < self.intervals[i][1]


def _attribution(truth: list[PartTruth], decisions: dict[int, Any], line: _Line,
                 fired: list[tuple[Any, ...]]) -> dict[str, Any]:
    """What does not depend on timing: which parts a reject pulse was fired for (the line
    process's own report), against the truth and the decisions, and whether the chip saw one
    rising edge per pulse that was not merged into a running one. A late pulse is still the
    right part's pulse here; where it landed is the placement figures' business."""
    rej = [f for f in fired if f[1] == "reject"]
    pulsed = {f[0] for f in rej}
    out = {"attributed_defects_unpulsed": 0, "attributed_good_pulsed": 0, "attributed_failsafe_pulsed": 0}
    for p in truth:
        d = decisions.get(p.part_id)
        failsafe = d is not None and d.failsafe is not None
        if p.part_id in pulsed and failsafe:
            out["attributed_failsafe_pulsed"] += 1
        elif p.label == 1 and p.part_id not in pulsed and not (d is not None and d.kind == "review"):
            out["attributed_defects_unpulsed"] += 1
        elif p.label == 0 and p.part_id in pulsed:
            out["attributed_good_pulsed"] += 1
    out["pulses_fired"] = len(rej)
    out["pulse_edges_expected"] = sum(1 for f in rej if not f[5])
    out["pulse_edges_seen"] = len(line.rising)
    return out


def line_problems(r: dict[str, Any]) -> list[str]:
    """Everything in a report that must hold whatever the machine's timing: every part decided
    and logged, every defect pulsed (or sent to review), no good part pulsed unless failed safe,
    one physical edge per unmerged pulse. Empty when the run is right; placement (where the
    pulses landed) is not part of it."""
    bad = []
    if r["no_decision"]:
        bad.append(f"{r['no_decision']} parts undecided")
    if r["lost_events"]:
        bad.append(f"{r['lost_events']} decisions missing from the event log")
    if "pulses_fired" in r:
        if r["attributed_defects_unpulsed"]:
            bad.append(f"{r['attributed_defects_unpulsed']} defective parts never got a reject pulse")
        if r["attributed_good_pulsed"]:
            bad.append(f"{r['attributed_good_pulsed']} good parts got a reject pulse without a fail-safe")
        if r["pulse_edges_seen"] != r["pulse_edges_expected"]:
            bad.append(f"reject line: {r['pulse_edges_seen']} rising edges for {r['pulse_edges_expected']} "
                       "unmerged pulses")
    return bad


def check_run(truth: list[PartTruth], decisions: dict[int, Any], reject_edges: list[EdgeRecord],
              count_at: Any, pitch_ns: int, logged_part_ids: set[int], end_ns: int,
              review_edges: list[EdgeRecord] | None = None,
              fired: list[tuple[Any, ...]] | None = None) -> dict[str, Any]:
    """Compare a run with the truth.

    Args:
        truth: one PartTruth per part that reached the camera.
        decisions: part_id → Decision reported by the daemon.
        reject_edges: the fake chip's records of the reject line.
        count_at: encoder function monotonic ns → count.
        pitch_ns: time between parts at the camera.
        logged_part_ids: part ids with a row in the event log.
        fired: the line process's report of every pulse start (part_id, role, target_ns, t_ns,
            count, merged, late cause): which part each pulse was for, whatever its timing.
    Returns:
        counts (parts, correct/missed/false/failsafe rejects, reviews, spurious pulses, lost
        decisions/events) and placement error in ticks and ms (p50/p99/max of |error|), signed
        mean in ms, end-to-end latency p50/p99 in ms.
    """
    line = _Line.from_edges(reject_edges, end_ns)
    review = _Line.from_edges(review_edges or [], end_ns)
    half = pitch_ns // 2
    c = {"parts": len(truth), "defective": 0, "correct_rejects": 0, "missed_rejects": 0, "false_rejects": 0,
         "failsafe_rejects": 0, "reviews": 0, "merged_pulses": 0, "no_decision": 0, "lost_events": 0,
         "pulse_without_reject_decision": 0}
    err_ticks: list[float] = []
    err_ms: list[float] = []
    signed_ms: list[float] = []
    used_edges: set[int] = set()
    e2e: list[float] = []
    worst: list[tuple[float, int]] = []
    ids: dict[str, list[int]] = {"missed": [], "false": []}
    for p in sorted(truth, key=lambda t: t.part_id):
        d = decisions.get(p.part_id)
        if p.label == 1:
            c["defective"] += 1
        if d is None:
            c["no_decision"] += 1
        else:
            e2e.append((d.t_decided_ns - d.frame.t_capture_ns) / 1e6)
            if p.part_id not in logged_part_ids:
                c["lost_events"] += 1
        edge = line.edge_near(p.station_ns, half)
        rejected = edge is not None or line.active_at(p.station_ns)
        if edge is not None:
            used_edges.add(edge)
            err_ticks.append(abs(count_at(edge) - p.station_count))
            err_ms.append(abs(edge - p.station_ns) / 1e6)
            signed_ms.append((edge - p.station_ns) / 1e6)
            worst.append((abs(edge - p.station_ns) / 1e6, p.part_id))
        elif rejected:
            c["merged_pulses"] += 1
        if review.edge_near(p.station_ns, half) is not None or review.active_at(p.station_ns):
            c["reviews"] += 1
        failsafe = d is not None and d.failsafe is not None
        if rejected and d is not None and d.kind != "reject":
            c["pulse_without_reject_decision"] += 1
        if rejected and failsafe:
            c["failsafe_rejects"] += 1
        elif rejected and p.label == 1:
            c["correct_rejects"] += 1
        elif rejected:
            c["false_rejects"] += 1
            ids["false"].append(p.part_id)
        elif p.label == 1 and not (d is not None and d.kind == "review"):
            c["missed_rejects"] += 1
            ids["missed"].append(p.part_id)
    c["spurious_pulses"] = len([t for t in line.rising if t not in used_edges])
    if fired is not None:
        c.update(_attribution(truth, decisions, line, fired))
    c["placement_error_ticks"] = _stats(err_ticks, 0)
    c["placement_error_ms"] = _stats(err_ms)
    c["placement_mean_signed_ms"] = round(sum(signed_ms) / len(signed_ms), 4) if signed_ms else None
    c["e2e_latency_ms"] = _stats(e2e)
    c["worst_placements_ms"] = [(pid, round(ms, 3)) for ms, pid in sorted(worst, reverse=True)[:5]]
    c["missed_part_ids"] = ids["missed"][:20]
    c["false_part_ids"] = ids["false"][:20]
    return c
