"""A local SQLite outbox for messages that must survive a broker (or network) outage and a
restart of the station: a message is added before it is sent and removed only when the broker
acknowledged it (MQTT PUBACK). Rows keep their insertion order (``id``, never reused), so a backlog
drains oldest first. The outbox has a row limit; beyond it the ``drop`` policy removes the oldest
rows (or refuses the newest) and counts every dropped message.

Used from one thread only (the output's worker); WAL with ``synchronous=NORMAL``: a committed row
survives a crash of the process, and a power cut loses at most the last transactions."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgekit.errors import DeviceError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Message:
    id: int
    topic: str
    payload: bytes
    qos: int


class Outbox:
    """Persistent FIFO of messages, bounded to ``max_rows``.

    Args:
        path: SQLite file (created with its directory).
        drop: ``oldest`` — a full outbox deletes its oldest rows to take the new one (the newest
            results matter most to a live dashboard); ``newest`` — it refuses the new one.
    """

    def __init__(self, path: str | Path, max_rows: int = 100_000, drop: Literal["oldest", "newest"] = "oldest") -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self.drop = drop
        self._con: sqlite3.Connection | None = None
        self._rows = 0
        self.dropped = 0  # this process's drops (the persistent total is in counters)

    def open(self, what: str = "outbox") -> Outbox:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DeviceError(f"{what}: cannot open the outbox {self.path} ({exc}); check the directory exists "
                              "and is writable by the service user, or set outbox_path") from None
        self._con = con
        self._rows = int(con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        return self

    @property
    def con(self) -> sqlite3.Connection:
        if self._con is None:
            raise RuntimeError("outbox not open")
        return self._con

    def __len__(self) -> int:
        return self._rows

    def add(self, items: list[tuple[str, bytes, int]]) -> int:
        """Append (topic, payload, qos) messages in one transaction; returns how many were
        dropped to stay within ``max_rows``."""
        if not items:
            return 0
        con = self.con
        dropped = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            if self.drop == "newest":
                room = max(0, self.max_rows - self._rows)
                dropped = len(items) - min(room, len(items))
                items = items[:room]
            con.executemany("INSERT INTO outbox (topic, payload, qos) VALUES (?, ?, ?)", items)
            self._rows += len(items)
            if self._rows > self.max_rows:
                extra = self._rows - self.max_rows
                con.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (extra,))
                self._rows -= extra
                dropped += extra
            if dropped:
                con.execute("INSERT INTO counters (name, value) VALUES ('dropped', ?) ON CONFLICT(name) "
                            "DO UPDATE SET value = value + excluded.value", (dropped,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.dropped += dropped
        return dropped

    def after(self, last_id: int, limit: int) -> list[Message]:
        """Up to ``limit`` messages with ``id > last_id``, oldest first."""
        rows = self.con.execute("SELECT id, topic, payload, qos FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                (last_id, limit)).fetchall()
        return [Message(int(i), t, bytes(p), int(q)) for i, t, p, q in rows]

    def remove(self, ids: list[int]) -> None:
        """Delete acknowledged messages (ids already gone, e.g. dropped, are ignored)."""
        if not ids:
            return
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            cur = con.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._rows -= max(0, cur.rowcount)

    def dropped_total(self) -> int:
        row = self.con.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
