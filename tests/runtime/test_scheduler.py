from __future__ import annotations

import numpy as np

from edgekit.runtime.scheduler import PulseTimeline, RejectScheduler
from edgekit.runtime.types import Decision, Frame, RejectCommand


def _decision(pid: int, kind: str, count: int | None = None, t_ns: int = 0) -> Decision:
    f = Frame(pid, "cam0", t_ns, np.zeros((8, 8, 3), np.uint8), encoder_count=count)
    return Decision(f, kind, 0.9, "m", None, t_ns, {})


def test_encoder_mode_targets_capture_count_plus_distance() -> None:
    s = RejectScheduler("encoder", distance_counts=250, pulse_ms=10)
    (cmd,) = s.schedule(_decision(3, "reject", count=1000))
    assert (cmd.at_count, cmd.at_ns, cmd.role, cmd.pulse_ms) == (1250, None, "reject", 10)
    assert s.schedule(_decision(4, "accept", count=1100)) == []
    (rv,) = RejectScheduler("encoder", 250, review_pulse_ms=30).schedule(_decision(5, "review", count=10))
    assert (rv.role, rv.at_count, rv.pulse_ms) == ("review", 260, 30)


def test_time_mode_targets_capture_time_plus_delay() -> None:
    (cmd,) = RejectScheduler("time", delay_ms=300.0).schedule(_decision(1, "reject", t_ns=5_000_000))
    assert cmd.at_ns == 5_000_000 + 300_000_000 and cmd.at_count is None


def test_out_of_order_results_fire_in_target_order() -> None:
    tl = PulseTimeline()
    # results arrive 3, 1, 2 but targets are 300, 100, 200
    for pid, c in [(3, 300), (1, 100), (2, 200)]:
        tl.add(RejectCommand(pid, "reject", 1.0, at_count=c))
    fired = []
    for count in range(0, 400):
        for e in tl.due(count * 10_000_000, count):
            if e.active:
                fired.append((e.command.part_id, e.count))
    assert fired == [(1, 100), (2, 200), (3, 300)]


def test_overlapping_pulses_merge_or_extend() -> None:
    for policy, end_ns in [("merge", 15_000_000), ("extend", 20_000_000)]:
        tl = PulseTimeline(overlap=policy)
        tl.add(RejectCommand(1, "reject", 10.0, at_ns=0))
        tl.add(RejectCommand(2, "reject", 10.0, at_ns=5_000_000))
        edges = tl.due(0, None) + tl.due(5_000_000, None)
        assert [(e.active, e.merged) for e in edges] == [(True, False), (True, True)]
        assert tl.due(end_ns - 1, None) == []
        (off,) = tl.due(end_ns, None)
        assert off.active is False and off.role == "reject"


def test_release_all_drives_active_lines_inactive() -> None:
    tl = PulseTimeline()
    tl.add(RejectCommand(1, "reject", 50.0, at_ns=0))
    tl.due(0, None)
    (e,) = tl.release_all(1)
    assert e.active is False and not tl.active("reject")
