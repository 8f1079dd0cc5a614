"""Daemon.control: the actions a PLC, an OPC UA client or the operator page may ask for, applied
by the daemon and recorded in the event log."""

from __future__ import annotations

import sqlite3
import sys

from rt_helpers import LEVELS, expected_kind

from edgekit.config.run import parse_run_config
from edgekit.runtime.daemon import Daemon
from edgekit.runtime.events import read_events
from edgekit.runtime.logs import setup_logging
from edgekit.runtime.outputs.gpio import FakeGpioChip


def _daemon(bundle, folder, tmp_path, chip: str) -> Daemon:
    cfg = parse_run_config({
        "bundle": str(bundle), "source": {"type": "folder", "path": str(folder), "rate_hz": 50},
        "outputs": [{"type": "fake_gpio", "chip": chip}],
        "decision": {"deadline_ms": 3000.0}, "scheduler": {"mode": "time", "delay_ms": 3050.0, "pulse_ms": 5.0},
        "events": {"path": str(tmp_path / "ev.db"), "synchronous": "NORMAL"}, "metrics": {"enabled": False},
        "line": {"jitter_probe_ms": 0}, "log": {"format": "text", "level": "error"}})
    return Daemon(cfg, logger=setup_logging("text", "error", stream=sys.stderr))


def test_disabled_station_logs_and_reports_rejects_without_pulsing(intensity_bundle, level_folder, tmp_path) -> None:
    d = _daemon(intensity_bundle, level_folder, tmp_path, "ctl-disabled")
    r = d.control("Disable", "operator")
    assert r == {"ok": True, "action": "disable", "source": "operator",
                 "message": "disabled: rejects are logged, not pulsed", "enabled": False}
    assert d.control("disable", "operator")["message"] == "already disabled: rejects are logged, not pulsed"
    bad = d.control("restart", "operator")
    assert not bad["ok"] and bad["message"] == ("unknown control action 'restart'; use one of reset_fault, enable, "
                                                "disable, trigger")
    trig = d.control("TRIGGER", "plc")
    assert not trig["ok"] and "camera folder is not triggered" in trig["message"]
    d.start()
    d.wait()
    s = d.summary()
    want = [expected_kind(v) for v in LEVELS]
    assert s["decisions"].get("reject") == want.count("reject") > 0  # still decided and logged
    assert s["rejects_fired"] == 0 and s["pulses_suppressed_disabled"] == {"reject": want.count("reject"),
                                                                           "review": want.count("review")}
    assert not [e for e in FakeGpioChip.get("ctl-disabled").edges_for(17) if e.active]
    assert [row["decision"] for row in read_events(s["log_path"])] == want
    con = sqlite3.connect(s["log_path"])
    notes = [m for (m,) in con.execute("SELECT message FROM notes WHERE kind = 'control' ORDER BY rowid")]
    con.close()
    assert notes[0] == "disable from operator: ok: disabled: rejects are logged, not pulsed"
    assert notes[2].startswith("restart from operator: refused: unknown control action")
    assert notes[3].startswith("trigger from plc: refused: software trigger refused")
    assert len(notes) == 4
