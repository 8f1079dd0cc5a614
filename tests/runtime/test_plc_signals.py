"""Every signal docs/plc.md documents is set by the code: fault codes for every fail-safe reason
and station fault, STATUS.ARCHIVE_FULL, CMD.ENABLE; the table is checked against the constants."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rt_helpers import PlcServer, wait_until

from edgekit.runtime.metrics import FAILSAFE_REASONS
from edgekit.runtime.outputs import modbus as M

DOC = (Path(__file__).resolve().parents[2] / "docs" / "plc.md").read_text(encoding="utf-8")


def _row(name: str) -> str:
    return next(line for line in DOC.splitlines() if line.startswith("| ") and f"| `{name}` |" in line)



def _wait(pred, timeout_s: float = 5.0) -> bool:
    return wait_until(pred, timeout_s)


def test_every_failsafe_reason_and_station_fault_has_its_documented_code() -> None:
    assert set(FAILSAFE_REASONS) <= set(M.FAULT_CODES)
    doc = dict((int(n), text.strip()) for n, text in re.findall(r"(\d) ([^;|]+)", _row("FAULT_CODE").split("|")[4]))
    for reason, code in M.FAULT_CODES.items():
        assert code in doc, (reason, code)
    assert "output" in doc[M.FAULT_OUTPUT] and "bundle" in doc[M.FAULT_BUNDLE_REFUSED]
    assert "disk" in doc[M.FAULT_DISK_FULL] and "clock" in doc[M.FAULT_CLOCK_UNSYNC]
    for reason in ("bad_frame", "decode_error"):
        assert reason in doc[1]


def test_status_bits_and_block_a_offsets_match_the_table() -> None:
    bits = dict((m[1], int(m[0])) for m in re.findall(r"bit (\d+) `([A-Z_]+)`", _row("STATUS")))
    for name in ("READY", "FAULT", "REVIEW_ENABLED", "ARCHIVE_FULL", "ACK_TIMEOUT"):
        assert 1 << bits[name] == getattr(M, name), name
    assert _row("TARGET_COUNT").startswith(f"| {M.OFF_TARGET_COUNT}–{M.OFF_TARGET_COUNT + 1} |")
    assert _row("PLC_HEARTBEAT").startswith(f"| {M.BLOCK_B_OFFSET} |")
    assert f"= **{M.MAP_VERSION}**" in _row("MAP_VERSION")
    cmd = dict((m[1], int(m[0])) for m in re.findall(r"bit (\d+) `([A-Z_]+)`", _row("CMD")))
    assert 1 << cmd["ENABLE"] == M.CMD_ENABLE and 1 << cmd["RESET_FAULT"] == M.CMD_RESET_FAULT


@pytest.fixture()
def plc():
    s = PlcServer().start()
    yield s
    s.stop()


def test_archive_full_decode_error_disk_full_and_cmd_enable_reach_the_plc(plc) -> None:
    out = M.ModbusOutput(M.ModbusOutputConfig(host="127.0.0.1", port=plc.port, ack_timeout_ms=2000))
    out.open()
    try:
        out.set_flag("archive_full", True)
        assert _wait(lambda: plc.hr(1)[0] & M.ARCHIVE_FULL)
        out.set_flag("archive_full", False)
        assert _wait(lambda: not plc.hr(1)[0] & M.ARCHIVE_FULL)
        now = time.monotonic_ns()
        out.publish_dict({"part_id": 1, "kind": "reject", "score": float("nan"), "failsafe": "decode_error",
                          "encoder_count": None, "target_count": None, "t_capture_ns": now, "t_decided_ns": now})
        assert _wait(lambda: plc.hr(12)[0] == 1 and plc.hr(1)[0] & M.FAULT)
        out.set_fault(M.FAULT_DISK_FULL)
        assert _wait(lambda: plc.hr(12)[0] == 6)
        controls: list[Any] = []

        beat = [False]

        def heartbeat() -> None:  # block B is read with the heartbeat writes
            beat[0] = not beat[0]
            out.set_line("heartbeat", beat[0])

        def beat_until(action: str) -> bool:
            def seen() -> bool:
                heartbeat()
                controls.extend(out.pop_controls())
                return any(c[0] == action for c in controls)
            return _wait(seen)

        # the first read of CMD (0) is the baseline, not an edge
        assert _wait(lambda: heartbeat() or out._cmd_seen) and out.pop_controls() == []
        plc.set_hr(M.BLOCK_B_OFFSET + 2, [M.CMD_ENABLE])
        assert beat_until("enable")
        plc.set_hr(M.BLOCK_B_OFFSET + 2, [0])
        assert beat_until("disable")
        assert [c[0] for c in controls] == ["enable", "disable"] and controls[0][1].startswith("modbus:")
    finally:
        out.close()


def test_archive_reports_rotation_at_its_quota(tmp_path) -> None:
    from types import SimpleNamespace

    from edgekit.runtime.archive import Archive
    from edgekit.runtime.types import Decision, Frame

    cfg = SimpleNamespace(dir=str(tmp_path / "a"), quota_mb=0.05, queue=8, format="png", heatmap=False)
    a = Archive(cfg)
    a.open()
    rng = np.random.default_rng(0)
    for i in range(4):  # ~30 KiB noise PNGs into a 50 KiB quota
        img = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
        a.submit(Decision(Frame(i, "cam", i, img), "reject", 9.0, "m", None, i, {}))
    a.close()
    assert a.deleted >= 1 and a.at_quota and not a.disk_full


def test_a_failing_output_line_sets_fault_code_4_on_the_others_once() -> None:
    from test_lineproc import RecordingOutput, ScriptedConn, _spec

    from edgekit.runtime.clock import VirtualClock
    from edgekit.runtime.lineproc import _LineLoop
    from edgekit.runtime.types import RejectCommand

    class Broken(RecordingOutput):
        name = "gpio"

        def set_line(self, role: str, active: bool) -> None:
            raise OSError(5, "Input/output error")

    clock = VirtualClock(10**9)
    ms = 1_000_000
    conn = ScriptedConn(clock, [(10**9, ("pulse", RejectCommand(1, "reject", 5.0, at_ns=10**9 + 20 * ms))),
                                (10**9, ("pulse", RejectCommand(2, "reject", 5.0, at_ns=10**9 + 60 * ms))),
                                (10**9 + ms, ("stop", 1.0))])
    plc_like = RecordingOutput(clock)
    loop = _LineLoop(conn, _spec(), [Broken(clock), plc_like], None, clock=clock)
    loop.run()
    assert plc_like.faults == [4] and loop.stats["errors"] >= 2
    assert plc_like.rising("reject") == [10**9 + 20 * ms, 10**9 + 60 * ms]  # the other output still pulses
