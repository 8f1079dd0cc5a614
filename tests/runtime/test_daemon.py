"""End-to-end daemon runs with the real onnxruntime backend, SQLite log and fake GPIO chip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rt_helpers import LEVELS, expected_kind

from edgekit.errors import ConfigError
from edgekit.runtime.daemon import replay
from edgekit.runtime.events import read_events
from edgekit.runtime.outputs.gpio import FakeGpioChip

ROOT = Path(__file__).resolve().parents[2]


def test_replay_folder_decides_every_frame_and_fires_rejects(intensity_bundle, level_folder, tmp_path) -> None:
    s = replay(intensity_bundle, level_folder, out_dir=tmp_path / "out", rate_hz=50,
               overrides={"decision.deadline_ms": 3000, "scheduler.delay_ms": 3050})  # loaded CI: no fail-safe
    want = [expected_kind(v) for v in LEVELS]
    assert s["frames"] == len(LEVELS)
    assert s["decisions"] == {k: want.count(k) for k in set(want)}
    assert s["rejects_fired"] == want.count("reject") and s["reviews_fired"] == want.count("review")
    assert s["failsafe"] == {}
    for stage in ("preprocess", "infer", "score", "e2e"):
        assert s["latency"][stage]["n"] == len(LEVELS) and s["latency"][stage]["p99_ms"] >= s["latency"][stage]["median_ms"]
    rows = read_events(s["log_path"])
    assert [r["decision"] for r in rows] == want
    assert all(abs(r["score"] - v / 255) < 1e-6 for r, v in zip(rows, LEVELS))
    assert {r["model_id"] for r in rows} == {f"{s['bundle_id']}:fp32"}
    # the fake chip saw one clean pulse per rejected frame, then the safe (inactive) state
    edges = FakeGpioChip.get(s["fake_chip"]).edges_for(17)
    rising = [e for e in edges if e.active]
    assert len(rising) == want.count("reject") and not edges[-1].active
    widths = [(b.t_ns - a.t_ns) / 1e6 for a, b in zip(edges[1::2], edges[2::2])]
    assert all(4.5 <= w < 50 for w in widths)


def test_replay_video(intensity_bundle, tmp_path) -> None:
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    levels = [30, 240, 30, 240, 240, 30]
    for v in levels:
        vw.write(np.full((48, 64, 3), v, np.uint8))
    vw.release()
    s = replay(intensity_bundle, path, out_dir=tmp_path / "out", rate_hz=None,
               overrides={"decision.deadline_ms": 3000, "scheduler.delay_ms": 3050})  # loaded CI: no fail-safe
    assert s["frames"] == 6 and s["decisions"] == {"accept": 3, "reject": 3} and s["rejects_fired"] == 3
    rows = read_events(s["log_path"])
    assert [r["part_id"] for r in rows] == list(range(6))


def test_replay_missing_source_is_one_line_error(intensity_bundle, tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        replay(intensity_bundle, tmp_path / "nope.mp4")


def _write_config(tmp_path: Path, bundle: Path, folder: Path, **extra) -> Path:
    cfg = {
        "bundle": str(bundle),
        "source": {"type": "folder", "path": str(folder), "rate_hz": 20, "loop": True},
        "outputs": [{"type": "fake_gpio", "chip": "sigterm"}],
        "decision": {"deadline_ms": 400},
        "scheduler": {"mode": "time", "delay_ms": 450, "pulse_ms": 5},
        "events": {"path": str(tmp_path / "ev.db")},
        "metrics": {"enabled": False},
        "log": {"format": "json", "decisions": True},
    }
    cfg.update(extra)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_sigterm_finishes_in_flight_and_flushes(intensity_bundle, level_folder, tmp_path) -> None:
    cfg = _write_config(tmp_path, intensity_bundle, level_folder)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    seen = []
    t_end = time.monotonic() + 30
    while len(seen) < 12 and time.monotonic() < t_end:
        line = proc.stdout.readline()
        if line.startswith("{") and json.loads(line)["event"] == "decision":
            seen.append(json.loads(line)["part_id"])
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads([ln for ln in out.splitlines() if '"summary"' in ln][-1])
    rows = read_events(tmp_path / "ev.db")
    assert len(rows) == summary["frames"] == summary["events_committed"] >= 12
    assert set(seen) <= {r["part_id"] for r in rows}
    assert not (tmp_path / "ev.db-wal").exists() or (tmp_path / "ev.db-wal").stat().st_size == 0


def test_run_check_validates(intensity_bundle, level_folder, tmp_path) -> None:
    cfg = _write_config(tmp_path, intensity_bundle, level_folder)
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", "--check", str(cfg)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    bad = _write_config(tmp_path, intensity_bundle, level_folder, scheduler={"pulse_ms": -5, "mode": "time"})
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", "--check", str(bad)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "scheduler.pulse_ms: -5" in r.stderr and "greater than 0" in r.stderr
