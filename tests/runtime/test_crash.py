"""kill -9 of the daemon mid-run: every decision it reported is in the log, the database opens
clean, the line process notices and drives its lines safe, and a restart continues the log."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rt_helpers import write_levels

from edgekit.runtime.events import EventLog, read_events

ROOT = Path(__file__).resolve().parents[2]


def _start(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _read_until(proc: subprocess.Popen, n_decisions: int, timeout_s: float = 60.0) -> tuple[dict, list[int]]:
    started, seen = {}, []
    end = time.monotonic() + timeout_s
    while len(seen) < n_decisions and time.monotonic() < end:
        line = proc.stdout.readline()
        if not line.startswith("{"):
            continue
        ev = json.loads(line)
        if ev["event"] == "started":
            started = ev
        elif ev["event"] == "decision":
            seen.append(ev["part_id"])
    return started, seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_kill_9_keeps_every_reported_decision(intensity_bundle, tmp_path) -> None:
    write_levels(tmp_path / "frames", [20, 200, 110, 240, 60, 130] * 3)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "bundle": str(intensity_bundle),
        "source": {"type": "folder", "path": str(tmp_path / "frames"), "rate_hz": 40, "loop": True},
        "outputs": [{"type": "fake_gpio", "chip": f"crash-{os.getpid()}"}],
        "decision": {"deadline_ms": 300},
        "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
        "events": {"path": str(tmp_path / "ev.db"), "synchronous": "FULL"},
        "metrics": {"enabled": False},
        "log": {"format": "json", "decisions": True},
    }))
    proc = _start(cfg)
    started, seen = _read_until(proc, 60)
    assert len(seen) == 60, "daemon did not report decisions"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # the orphaned line process sees its pipe close, drives lines inactive and exits
    end = time.monotonic() + 10
    while _alive(started["line_pid"]) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(started["line_pid"])
    conn = sqlite3.connect(tmp_path / "ev.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    rows = read_events(tmp_path / "ev.db", started["run_id"])
    logged = {r["part_id"] for r in rows}
    assert set(seen) <= logged
    assert [r["part_id"] for r in rows] == sorted(logged)  # no gaps, no duplicates
    assert logged == set(range(len(logged)))
    # the log is writable again, and a restart continues it
    log = EventLog(tmp_path / "ev.db")
    log.open()
    log.close()
    proc2 = _start(cfg)
    started2, seen2 = _read_until(proc2, 10)
    proc2.send_signal(signal.SIGTERM)
    proc2.communicate(timeout=30)
    assert proc2.returncode == 0 and len(seen2) == 10
    assert started2["run_id"] != started["run_id"]
    assert {r["part_id"] for r in read_events(tmp_path / "ev.db", started["run_id"])} == logged
    assert len(read_events(tmp_path / "ev.db", started2["run_id"])) >= 10
