"""The page served by a real daemon on the simulated line, read as an SSE client (no browser):
the last pushed state equals the checker's report, actions go through Daemon.control."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the [ui] extra (starlette, uvicorn) is not installed")

from edgekit.config.run import parse_run_config  # noqa: E402
from edgekit.sim.bundles import write_intensity_bundle, write_intensity_dataset  # noqa: E402
from edgekit.sim.run import prepare_config, simulate_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pushed_state_follows_the_daemon(tmp_path: Path) -> None:
    bundle = write_intensity_bundle(tmp_path / "bundle", size=32)
    data = write_intensity_dataset(tmp_path / "data", n_good=6, n_defect=6)
    port = free_port()
    cfg = prepare_config(parse_run_config({
        "bundle": str(bundle),
        "source": {"type": "sim", "dataset": str(data), "parts": 40, "spacing_mm": 10.0, "reject_distance_mm": 60.0,
                   "seed": 3, "faults": {"corrupt": [12]}},
        "encoder": {"type": "sim", "speed_mm_s": 100.0, "ticks_per_mm": 1.0},
        "scheduler": {"mode": "encoder", "pulse_ms": 8.0},
        "decision": {"deadline_ms": 300.0},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str(tmp_path / "events.db")},
        "archive": {"enabled": True, "dir": str(tmp_path / "archive")},
        "metrics": {"enabled": False},
        "line": {"jitter_probe_ms": 0},
        "ui": {"enabled": True, "port": port, "token": "tok", "refresh_ms": 100},
    }))
    report: dict[str, Any] = {}
    sim = threading.Thread(target=lambda: report.update(simulate_config(cfg)), daemon=True)
    sim.start()
    end = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/api/stream")
            resp = conn.getresponse()
            break
        except OSError:
            assert time.monotonic() < end, "the page never came up"
            time.sleep(0.05)
    states: list[dict[str, Any]] = []

    def read() -> None:
        try:
            for raw in resp:
                if raw.startswith(b"data: "):
                    states.append(json.loads(raw[6:]))
        except OSError:  # closed at shutdown
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # disable rejection through the page while the line runs, then enable it again
    while not states or not states[-1]["line"]["running"]:
        time.sleep(0.02)
    for action in ("disable", "enable"):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/control/{action}", method="POST", data=b"",
                                     headers={"X-Edgekit-Token": "tok"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["enabled"] is (action == "enable")
        # the page pushes the new state (wait for it rather than for a fixed time)
        until = time.monotonic() + 10
        while not any(st["line"]["rejection_enabled"] is (action == "enable") for st in states[-3:]):
            assert time.monotonic() < until, f"no pushed state after {action}"
            time.sleep(0.02)
    sim.join(120)
    reader.join(10)
    assert not sim.is_alive() and report
    last = states[-1]
    dec = report["decisions"]
    assert last["line"]["stopped"] and last["counts"]["parts"] == report["parts"] == 40
    assert (last["counts"]["accept"], last["counts"]["reject"]) == (dec.get("accept", 0), dec.get("reject", 0))
    assert last["failsafe_by_reason"] == report["failsafe"] == {"decode_error": 1}
    assert last["bundle"]["id"] == report["bundle_id"] and last["bundle"]["precision"] == "fp32"
    assert last["band"]["accept_edge"] == 0.4 and last["band"]["reject_edge"] == 0.5
    assert last["histogram"]["n"] == 39  # every scored part (the corrupt frame has no score)
    assert [d["part_id"] for d in last["recent"]] == list(range(40))[-len(last["recent"]):]
    assert any(s["line"]["rejection_enabled"] is False for s in states)
    assert [n["message"].split(" from ")[0] for n in reversed(last["notes"])] == ["disable", "enable"]
    rejects = last["rejects"]
    assert rejects and all(r["heat"] and r["heat"].endswith("_heat.jpg") for r in rejects if r["tag"] == "reject")
    assert last["health"]["camera"]["frames"] == 40 and last["health"]["outputs"][0]["errors"] == 0
    conn.close()
