from __future__ import annotations

import sqlite3
import time

import numpy as np

from edgekit.runtime.events import EventLog, decision_row, read_events
from edgekit.runtime.types import Decision, Frame


def _d(pid: int, kind: str = "reject", failsafe: str | None = None) -> Decision:
    f = Frame(pid, "cam0", time.monotonic_ns(), np.zeros((4, 4, 3), np.uint8), encoder_count=pid * 10)
    return Decision(f, kind, float("nan") if failsafe else 0.7, "b1:fp32", failsafe, time.monotonic_ns(),
                    {"preprocess": 0.001, "infer": 0.002, "score": 0.0001})


def test_rows_wal_and_fields(tmp_path) -> None:
    log = EventLog(tmp_path / "ev.db", "FULL")
    log.open()
    log.start_run("r1", "b1", {"x": 1}, ["note"])
    log.write([decision_row("r1", _d(0)), decision_row("r1", _d(1, failsafe="late"))])
    assert log.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.close()
    rows = read_events(tmp_path / "ev.db")
    assert [r["part_id"] for r in rows] == [0, 1]
    assert rows[0]["score"] == 0.7 and rows[0]["infer_ms"] == 2.0 and rows[0]["encoder_count"] == 0
    assert rows[1]["failsafe"] == "late" and rows[1]["score"] is None and rows[1]["model_id"] == "b1:fp32"


def test_retention_deletes_oldest_rows_beyond_limit(tmp_path) -> None:
    log = EventLog(tmp_path / "ev.db", "NORMAL", max_rows=100, max_age_days=None, retention_every=1)
    log.open()
    for i in range(0, 300, 30):
        log.write([decision_row("r", _d(j)) for j in range(i, i + 30)])
    log.close()
    ids = [r["part_id"] for r in read_events(tmp_path / "ev.db")]
    assert len(ids) <= 130 and ids[-1] == 299 and ids == sorted(ids) and ids[0] >= 170


def test_age_retention(tmp_path) -> None:
    log = EventLog(tmp_path / "ev.db", max_rows=None, max_age_days=1.0)
    log.open()
    old = list(decision_row("r", _d(0)))
    old[1] = time.time() - 3 * 86400
    log.write([tuple(old), decision_row("r", _d(1))])
    assert log.apply_retention() == 1
    log.close()
    assert [r["part_id"] for r in read_events(tmp_path / "ev.db")] == [1]
    assert sqlite3.connect(tmp_path / "ev.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_size_retention_keeps_pages_in_use_under_limit(tmp_path) -> None:
    log = EventLog(tmp_path / "ev.db", "NORMAL", max_rows=None, max_age_days=None, retention_every=1, max_mb=0.25)
    log.open()
    for i in range(0, 6000, 200):
        log.write([decision_row("r", _d(j)) for j in range(i, i + 200)])
    assert log.used_bytes() <= 0.25 * 1024 * 1024
    log.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    size_now = (tmp_path / "ev.db").stat().st_size  # the WAL is bounded by journal_size_limit
    log.close()
    ids = [r["part_id"] for r in read_events(tmp_path / "ev.db")]
    assert ids[-1] == 5999 and ids[0] > 0 and ids == sorted(ids)
    assert size_now < 1024 * 1024
