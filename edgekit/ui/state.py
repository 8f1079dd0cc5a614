"""What the operator page shows, built away from the per-frame path.

``EventTail`` follows the SQLite event log with its own read-only connection (WAL: readers never
block the writer) and keeps running aggregates: counts of the current run, fail-safes by
reason, the last decisions, the scores of the last hour (histogram) and the notes (bundle
swaps, refused bundles, control actions). ``LineView`` adds what only the daemon knows without
asking the per-frame path: a metrics snapshot (prometheus counters), health(), the bundle and
band in use, the archive's files. Both run in the page's poll thread; the clock is injected."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# archive file names (edgekit/runtime/archive.py): <t_capture_ns>_<source>_p<part>_<kind or fail-safe reason>
ARCHIVE_NAME = re.compile(r"^(?P<t>\d+)_(?P<src>.+)_p(?P<part>\d+)_(?P<tag>[a-z_]+?)(?P<heat>_heat)?\.(?:jpg|png)$")
_TAIL_BATCH = 20000


class EventTail:
    """Incremental reader of one event log for one run (the daemon's ``run_id``).

    Args:
        path: the event log (may not exist yet: polls until it does).
        run_id: run whose counts are shown (the histogram covers every run in the window).
        recent: decisions kept for the strip.
        window_s: histogram window (scores of the last hour by default).
        clock: wall-clock seconds (``time.time``); compared with the rows' ``t_wall``.
    """

    def __init__(self, path: str | Path, run_id: str, recent: int = 60, window_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.window_s = window_s
        self.clock = clock
        self.counts: Counter[str] = Counter()  # accept / reject / review (fail-safes included)
        self.failsafe: Counter[str] = Counter()
        self.parts = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.by_part: dict[int, dict[str, Any]] = {}  # last rejects / reviews by part id (archive captions)
        self._by_part_order: deque[int] = deque()
        self.scores: deque[tuple[float, float]] = deque()  # (t_wall, score) in the window, every run
        self.times: deque[float] = deque()  # t_wall of this run's decisions in the last minute
        self.notes: deque[dict[str, Any]] = deque(maxlen=20)
        self.fault: str | None = None
        self.last_id = 0
        self.last_note_id = 0
        self.version = 0
        self._conn: sqlite3.Connection | None = None
        self._primed = False

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None:
            if not self.path.exists():
                return None
            try:
                self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0,
                                             check_same_thread=False)
            except sqlite3.Error:
                return None
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def poll(self) -> bool:
        """Read what was committed since the last poll; True when anything changed."""
        conn = self._connect()
        if conn is None:
            return False
        try:
            changed = self._prime(conn) if not self._primed else False
            changed |= self._tail(conn)
            changed |= self._tail_notes(conn)
        except sqlite3.OperationalError:
            # schema not created yet, or a busy checkpoint: next poll
            return False
        changed |= self._prune()
        if changed:
            self.version += 1
        return changed

    def _prime(self, conn: sqlite3.Connection) -> bool:
        """Start where the log is: this run's totals by aggregate, the window's scores by t_wall,
        without replaying months of rows."""
        row = conn.execute("SELECT MAX(id) FROM events").fetchone()
        max_id = int(row[0] or 0)
        for kind, fs, n in conn.execute(
                "SELECT decision, failsafe, COUNT(*) FROM events WHERE run_id = ? AND id <= ? GROUP BY decision, failsafe",
                (self.run_id, max_id)):
            self._count(kind, fs, n)
        rows = conn.execute("SELECT part_id, decision, score, failsafe, t_wall FROM events WHERE run_id = ? AND id <= ? "
                            "ORDER BY id DESC LIMIT ?", (self.run_id, max_id, self.recent.maxlen)).fetchall()
        for part, kind, score, fs, t in reversed(rows):
            self._remember(part, kind, score, fs, t)
        since = self.clock() - self.window_s
        for t, score in conn.execute("SELECT t_wall, score FROM events WHERE t_wall >= ? AND id <= ? AND score IS NOT NULL "
                                     "ORDER BY id", (since, max_id)):
            self.scores.append((t, score))
        for (t,) in conn.execute("SELECT t_wall FROM events WHERE run_id = ? AND t_wall >= ? AND id <= ?",
                                 (self.run_id, self.clock() - 60.0, max_id)):
            self.times.append(t)
        self.last_id = max_id
        self._primed = True
        return max_id > 0

    def _count(self, kind: str, failsafe: str | None, n: int = 1) -> None:
        self.counts[kind] += n
        self.parts += n
        if failsafe:
            self.failsafe[failsafe] += n

    def _remember(self, part: int, kind: str, score: float | None, failsafe: str | None, t: float) -> None:
        item = {"part_id": part, "kind": kind, "score": score, "failsafe": failsafe, "t": t}
        self.recent.append(item)
        if kind != "accept":
            self.by_part[part] = item
            self._by_part_order.append(part)
            while len(self._by_part_order) > 1000:
                self.by_part.pop(self._by_part_order.popleft(), None)

    def _tail(self, conn: sqlite3.Connection) -> bool:
        rows = conn.execute("SELECT id, run_id, t_wall, part_id, score, decision, failsafe FROM events WHERE id > ? "
                            "ORDER BY id LIMIT ?", (self.last_id, _TAIL_BATCH)).fetchall()
        for rid, run, t, part, score, kind, fs in rows:
            self.last_id = rid
            if score is not None:
                self.scores.append((t, score))
            if run != self.run_id:
                continue
            self._count(kind, fs)
            self._remember(part, kind, score, fs, t)
            self.times.append(t)
        return bool(rows)

    def _tail_notes(self, conn: sqlite3.Connection) -> bool:
        rows = conn.execute("SELECT id, t_wall, kind, message FROM notes WHERE id > ? AND run_id = ? ORDER BY id",
                            (self.last_note_id, self.run_id)).fetchall()
        for nid, t, kind, msg in rows:
            self.last_note_id = nid
            self.notes.appendleft({"t": t, "kind": kind, "message": msg})
            if kind == "bundle_refused":
                self.fault = "bundle refused (FAULT_CODE 5): " + msg
            elif kind.endswith("_fault"):  # encoder_fault, ...: latched like the PLC's FAULT bit
                self.fault = kind.replace("_", " ") + ": " + msg
            elif kind == "control" and msg.startswith("reset_fault") and ": ok:" in msg:
                self.fault = None
        return bool(rows)

    def _prune(self) -> bool:
        now = self.clock()
        changed = False
        while self.scores and self.scores[0][0] < now - self.window_s:
            self.scores.popleft()
            changed = True
        while self.times and self.times[0] < now - 60.0:
            self.times.popleft()
            changed = True
        return changed

    def parts_per_min(self) -> int:
        """Decisions of this run with a capture time in the last 60 s."""
        return len(self.times)

    def histogram(self, bins: int, accept_edge: float | None, reject_edge: float | None) -> dict[str, Any]:
        """Scores in the window binned over a range that always includes the band."""
        vals = np.array([s for _, s in self.scores], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        marks = [v for v in (accept_edge, reject_edge) if v is not None and math.isfinite(v)]
        pool = np.concatenate([vals, np.asarray(marks, dtype=np.float64)]) if marks else vals
        if pool.size == 0:
            return {"edges": [], "counts": [], "n": 0, "window_s": self.window_s}
        lo, hi = float(pool.min()), float(pool.max())
        pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1e-3)
        counts, edges = np.histogram(vals, bins=bins, range=(lo - pad, hi + pad))
        return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts],
                "n": int(vals.size), "window_s": self.window_s}


def _num(snap: dict[str, float], key: str) -> float:
    return float(snap.get(key, 0.0))


class LineView:
    """The page's state for one daemon: ``snapshot()`` is called only by the poll thread.

    Reads, never waits on, the daemon: attribute reads (pipeline, band, enabled), ``health()``
    (a few integers), ``metrics.snapshot()`` (prometheus samples) and the event log."""

    def __init__(self, daemon: Any, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        ui = daemon.cfg.ui
        self.daemon = daemon
        self.cfg = ui
        self.clock = clock
        self.monotonic = monotonic
        self.tail = EventTail(daemon.event_log.path, daemon.run_id, recent=ui.recent, window_s=ui.histogram_window_s,
                              clock=clock)
        self._frames_seen = (-1.0, None)  # (frames, monotonic time it last changed)
        self._out_errors: dict[str, tuple[float, float | None]] = {}
        self._archive_written = -1
        self._archive_items: list[dict[str, Any]] = []
        self._hist: tuple[int, float, dict[str, Any] | None] = (-1, 0.0, None)  # (version, computed at, histogram)
        self.hist_every_s = 2.0  # an hour of scores (100k at 30 parts/s) is binned at most this often

    def close(self) -> None:
        self.tail.close()

    def _archive(self) -> list[dict[str, Any]]:
        arch = getattr(self.daemon, "archive", None)
        n = self.cfg.rejects
        if arch is None or n == 0:
            return []
        if arch.written == self._archive_written:
            return self._with_captions(self._archive_items)
        self._archive_written = arch.written
        try:
            # oldest first by capture time (the numeric prefix), then name
            names = sorted((p.name for p in Path(arch.dir).iterdir() if p.is_file()),
                           key=lambda nm: (len(nm.split("_", 1)[0]), nm))
        except OSError:
            return []
        heat = {nm for nm in names if "_heat." in nm}
        items = []
        for nm in reversed(names):
            m = ARCHIVE_NAME.match(nm)
            if m is None or m.group("heat") or m.group("tag") in ("review", "accept"):
                continue
            hname = nm.replace(f"_{m.group('tag')}.", f"_{m.group('tag')}_heat.")
            items.append({"name": nm, "heat": hname if hname in heat else None, "part_id": int(m.group("part")),
                          "tag": m.group("tag")})
            if len(items) >= n:
                break
        self._archive_items = items
        return self._with_captions(items)

    def _with_captions(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for it in items:
            ev = self.tail.by_part.get(it["part_id"])
            out.append({**it, "score": ev["score"] if ev else None})
        return out

    def _histogram(self, band: dict[str, Any], now_m: float, force: bool) -> dict[str, Any]:
        version, at, hist = self._hist
        if hist is None or force or (version != self.tail.version and now_m - at >= self.hist_every_s):
            hist = self.tail.histogram(self.cfg.histogram_bins, band.get("accept_edge"), band.get("reject_edge"))
            self._hist = (self.tail.version, now_m, hist)
        return hist

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        """The page state; ``final``: the daemon is shutting down (its last commit is in)."""
        d = self.daemon
        self.tail.poll()
        t = self.tail
        now_m = self.monotonic()
        pipe = d.pipeline
        band = vars(pipe.decider.band) if pipe is not None else {}
        snap = d.metrics.snapshot()
        health = d.health()
        started = bool(getattr(d, "_started", False))
        stopped = final or d._stopped.is_set()
        # camera: frames counted by the capture thread (metrics), age since the count last moved
        src = d.cfg.source
        frames = sum(v for k, v in snap.items() if k.startswith("edgekit_frames_total{"))
        if frames != self._frames_seen[0]:
            self._frames_seen = (frames, now_m)
        last_frame_s = None if self._frames_seen[1] is None or frames == 0 else round(now_m - self._frames_seen[1], 1)
        reconnects = sum(v for k, v in snap.items() if k.startswith("edgekit_camera_reconnects_total{"))
        missed = sum(v for k, v in snap.items() if k.startswith("edgekit_frames_missed_total{"))
        outputs = []
        for o in d.cfg.outputs:
            errs = _num(snap, f"edgekit_output_errors_total{{output={o.name}}}")
            prev, since = self._out_errors.get(o.name, (0.0, None))
            if errs > prev:
                since = now_m
            self._out_errors[o.name] = (errs, since)
            recent_err = since is not None and now_m - since < 10.0
            outputs.append({"name": o.name, "type": o.type, "errors": int(errs),
                            "state": "error" if recent_err else "ok"})

        def mean_ms(stage: str) -> float | None:
            n = _num(snap, f"edgekit_stage_latency_seconds_count{{stage={stage}}}")
            return round(_num(snap, f"edgekit_stage_latency_seconds_sum{{stage={stage}}}") / n * 1e3, 2) if n else None

        model_id = pipe.backend.model_id if pipe is not None else None
        parts = t.parts
        rejects = t.counts.get("reject", 0)
        return {
            "version": t.version,
            "t": self.clock(),
            "run_id": d.run_id,
            "station": getattr(src, "name", src.type),
            "bundle": {"id": pipe.bundle.bundle_id if pipe else None, "method": pipe.bundle.method if pipe else None,
                       "model_id": model_id,
                       "precision": model_id.rsplit(":", 1)[-1] if model_id and ":" in model_id
                       else getattr(d.cfg.backend, "precision", None),
                       "backend": d.cfg.backend.type},
            "band": {"accept_edge": band.get("accept_edge"), "reject_edge": band.get("reject_edge"),
                     "source": band.get("source")},
            "counts": {"parts": parts, "accept": t.counts.get("accept", 0), "reject": rejects,
                       "review": t.counts.get("review", 0), "failsafe": sum(t.failsafe.values())},
            "failsafe_by_reason": dict(sorted(t.failsafe.items())),
            "parts_per_min": t.parts_per_min(),
            "reject_rate": round(rejects / parts, 4) if parts else None,
            "recent": list(t.recent),
            "line": {"running": started and not stopped, "stopped": stopped,
                     "ready": started and not stopped and bool(health.get("healthy")),
                     "heartbeat": bool(health.get("healthy")) and not stopped,
                     "fault": t.fault, "rejection_enabled": bool(getattr(d, "enabled", True)),
                     "pending": health.get("pending", 0)},
            "health": {
                "camera": {"name": getattr(src, "name", src.type), "type": src.type, "frames": int(frames),
                           "last_frame_s": last_frame_s, "reconnects": int(reconnects), "missed": int(missed),
                           "state": "stopped" if stopped else "waiting for frames" if not frames
                           else "ok" if last_frame_s is not None and last_frame_s < 5 else "idle"},
                "backend": {"type": d.cfg.backend.type, "model_id": model_id, "infer_ms_mean": mean_ms("infer"),
                            "e2e_ms_mean": mean_ms("e2e"), "errors": int(t.failsafe.get("backend_error", 0)),
                            "state": "error" if t.failsafe.get("backend_error", 0) else "ok"},
                "outputs": outputs,
            },
            "rejects": self._archive(),
            "histogram": self._histogram(band, now_m, final),
            "notes": list(t.notes)[:8],
            "actions": {"token_required": True},
        }
