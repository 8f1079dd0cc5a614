"""Event log: SQLite in WAL mode, one row per part (decision, score, fail-safe reason, per-stage
latency, model id) plus a ``runs`` table with the resolved config of every daemon start.

Durability choice: ``synchronous=FULL`` by default. In WAL mode FULL fsyncs the WAL at every
commit, so a committed decision survives both a crashed daemon (kill -9) and a power cut — a
cabinet losing power at line stop is routine in a factory, and "never lose a decision" is the
requirement. NORMAL would only survive process crashes (the last commits may roll back after a
power cut). The cost is one fsync per commit; rows are written by a dedicated thread in group
commits (one transaction per batch of queued decisions), so the fsync never sits in the
per-frame path and the rate of fsyncs is bounded by the batch interval, not the frame rate.

Retention: rows older than ``max_age_days``, beyond ``max_rows``, or while the pages in use
exceed ``max_mb`` are deleted oldest first (checked every ``retention_every`` commits, not per
frame). Freed pages are reused by SQLite, so the file stops growing at the limit."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import DeviceError
from edgekit.runtime.types import Decision

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    bundle_id TEXT,
    config_json TEXT NOT NULL,
    notes_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    t_wall REAL NOT NULL,
    t_capture_ns INTEGER NOT NULL,
    source_id TEXT NOT NULL,
    part_id INTEGER NOT NULL,
    encoder_count INTEGER,
    score REAL,
    decision TEXT NOT NULL,
    failsafe TEXT,
    model_id TEXT,
    preprocess_ms REAL,
    infer_ms REAL,
    score_ms REAL,
    e2e_ms REAL,
    meta_json TEXT
);
CREATE INDEX IF NOT EXISTS events_run_part ON events(run_id, part_id);
CREATE INDEX IF NOT EXISTS events_t ON events(t_wall);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    t_wall REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

COLUMNS = ("run_id", "t_wall", "t_capture_ns", "source_id", "part_id", "encoder_count", "score", "decision",
           "failsafe", "model_id", "preprocess_ms", "infer_ms", "score_ms", "e2e_ms", "meta_json")


def _ms(stage: dict[str, float], key: str) -> float | None:
    v = stage.get(key)
    return None if v is None else v * 1e3


def decision_row(run_id: str, d: Decision) -> tuple[Any, ...]:
    """The ``events`` row for one decision (wall time derived from the monotonic capture time)."""
    f = d.frame
    now_mono, now_wall = time.monotonic_ns(), time.time()
    t_wall = now_wall - (now_mono - f.t_capture_ns) / 1e9
    meta = {k: v for k, v in f.meta.items() if isinstance(v, (str, int, float, bool)) and k != "label"} or None
    score = d.score if math.isfinite(d.score) else None
    return (run_id, t_wall, f.t_capture_ns, f.source_id, f.part_id, f.encoder_count, score, d.kind,
            d.failsafe, d.model_id, _ms(d.stage_s, "preprocess"), _ms(d.stage_s, "infer"), _ms(d.stage_s, "score"),
            (d.t_decided_ns - f.t_capture_ns) / 1e6, json.dumps(meta) if meta else None)


class EventLog:
    """SQLite event log (one connection, used by one writer thread).

    Args:
        path: database file (created with its directory).
        synchronous: ``FULL`` (default, survives power loss) or ``NORMAL`` (survives crashes).
        max_rows / max_age_days: retention; None disables that limit.
    """

    def __init__(self, path: str | Path, synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 max_rows: int | None = 5_000_000, max_age_days: float | None = 90.0,
                 retention_every: int = 500, max_mb: float | None = None) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_rows = max_rows
        self.max_age_days = max_age_days
        self.retention_every = retention_every
        self.max_mb = max_mb
        self._conn: sqlite3.Connection | None = None
        self._commits = 0

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA journal_size_limit=8388608")  # WAL truncated to ≤ 8 MB after checkpoints
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise DeviceError(f"{self.path}: cannot open the event log ({exc}); check the path and free disk space") from None
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DeviceError("event log used before open()")
        return self._conn

    def start_run(self, run_id: str, bundle_id: str, config: dict[str, Any], notes: list[str]) -> None:
        """Record a daemon start with its resolved config and startup notes (overrides, warnings)."""
        self.conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
                          (run_id, time.time(), bundle_id, json.dumps(config, default=str), json.dumps(notes)))

    def note(self, run_id: str, kind: str, message: str) -> None:
        """Operational note (bundle swap, camera reconnect, refused bundle)."""
        self.conn.execute("INSERT INTO notes (run_id, t_wall, kind, message) VALUES (?, ?, ?, ?)",
                          (run_id, time.time(), kind, message))

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows in one transaction (one fsync with synchronous=FULL)."""
        if not rows:
            return
        c = self.conn
        c.execute("BEGIN")
        try:
            c.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._commits += 1
        if self._commits % self.retention_every == 0:
            self.apply_retention()

    def apply_retention(self) -> int:
        """Delete rows beyond the age/row limits, oldest first; returns rows deleted."""
        c = self.conn
        deleted = 0
        if self.max_age_days is not None:
            cur = c.execute("DELETE FROM events WHERE t_wall < ?", (time.time() - self.max_age_days * 86400,))
            deleted += cur.rowcount
        if self.max_rows is not None:
            cur = c.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (self.max_rows,))
            deleted += cur.rowcount
        if self.max_mb is not None:
            for _ in range(50):
                used = self.used_bytes()
                if used <= self.max_mb * 1024 * 1024:
                    break
                n = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                if n == 0:
                    break
                cur = c.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                                (max(1, n // 20),))  # oldest 5 % per step
                deleted += cur.rowcount
        return deleted

    def used_bytes(self) -> int:
        """Bytes in pages holding data (file size minus reusable free pages)."""
        c = self.conn
        page = c.execute("PRAGMA page_size").fetchone()[0]
        count = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (count - free) * page

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()


def read_events(path: str | Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """All event rows (optionally of one run) as dicts, in insertion order."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        q = "SELECT * FROM events" + (" WHERE run_id = ?" if run_id else "") + " ORDER BY id"
        return [dict(r) for r in conn.execute(q, (run_id,) if run_id else ())]
    finally:
        conn.close()
