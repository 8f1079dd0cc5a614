"""EventTail: the page's aggregates read from a real SQLite event log, on an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.runtime.events import COLUMNS, EventLog
from edgekit.ui.state import EventTail


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def row(run: str, t: float, part: int, kind: str, score: float | None, failsafe: str | None = None) -> tuple:
    values = {"run_id": run, "t_wall": t, "t_capture_ns": part, "source_id": "cam", "part_id": part,
              "encoder_count": None, "score": score, "decision": kind, "failsafe": failsafe, "model_id": "m:fp32",
              "preprocess_ms": None, "infer_ms": None, "score_ms": None, "e2e_ms": 1.0, "meta_json": None}
    return tuple(values[c] for c in COLUMNS)


@pytest.fixture()
def log(tmp_path: Path) -> EventLog:
    ev = EventLog(tmp_path / "events.db", "NORMAL")
    ev.open()
    yield ev
    ev.close()


def test_counts_strip_and_rate_of_this_run_only(log: EventLog) -> None:
    clock = Clock(10_000.0)
    # an earlier run on the station: in the histogram window, not in this run's counts
    log.write([row("old", 9_000.0, i, "accept", 0.1) for i in range(5)])
    log.write([row("now", 9_950.0, 1, "accept", 0.2), row("now", 9_960.0, 2, "reject", 0.9),
               row("now", 9_970.0, 3, "reject", None, "decode_error")])
    tail = EventTail(log.path, "now", recent=2, window_s=3600.0, clock=clock)
    assert tail.poll() is True
    assert dict(tail.counts) == {"accept": 1, "reject": 2} and tail.parts == 3
    assert dict(tail.failsafe) == {"decode_error": 1}
    assert [d["part_id"] for d in tail.recent] == [2, 3]  # the last two, oldest first
    assert tail.parts_per_min() == 3  # captured within 60 s of the clock
    assert len(tail.scores) == 7  # 5 old + 2 scored; the fail-safe has no score
    # what is committed later arrives in the next poll, in order
    log.write([row("now", 9_990.0, 4, "review", 0.45)])
    assert tail.poll() is True
    assert tail.counts["review"] == 1 and tail.parts == 4 and tail.recent[-1]["part_id"] == 4
    assert tail.poll() is False  # nothing new
    # one minute later the rate window has emptied; an hour later the histogram too
    clock.t = 10_060.5
    tail.poll()
    assert tail.parts_per_min() == 0 and len(tail.scores) == 8
    clock.t = 9_000.0 + 3600.0 + 1.0
    tail.poll()
    assert len(tail.scores) == 3  # the old run's scores left the window
    tail.close()


def test_histogram_covers_the_band(log: EventLog) -> None:
    log.write([row("r", 100.0, i, "accept", s) for i, s in enumerate([0.1, 0.2, 0.2, 0.3])])
    tail = EventTail(log.path, "r", clock=Clock(100.0))
    tail.poll()
    h = tail.histogram(4, accept_edge=0.4, reject_edge=0.5)
    assert h["n"] == 4 and sum(h["counts"]) == 4 and len(h["edges"]) == 5
    assert h["edges"][0] < 0.1 and h["edges"][-1] > 0.5  # the band is always on the chart
    empty = EventTail(log.path, "r", clock=Clock(100.0 + 7200.0))
    empty.poll()
    assert empty.histogram(4, None, None)["n"] == 0
    tail.close()
    empty.close()


def test_fault_from_notes(log: EventLog) -> None:
    tail = EventTail(log.path, "r", clock=Clock(0.0))
    log.note("r", "bundle_refused", "/b: hash mismatch")
    log.note("other", "bundle_refused", "not ours")
    tail.poll()
    assert tail.fault is not None and "hash mismatch" in tail.fault
    log.note("r", "control", "reset_fault from operator page 127.0.0.1: ok: latched faults cleared on every output")
    tail.poll()
    assert tail.fault is None and tail.notes[0]["kind"] == "control"
    log.note("r", "encoder_fault", "channel A lost")
    tail.poll()
    assert tail.fault == "encoder fault: channel A lost"
    tail.close()


def test_log_not_created_yet(tmp_path: Path) -> None:
    tail = EventTail(tmp_path / "later.db", "r")
    assert tail.poll() is False and tail.parts == 0
