"""The line benchmark of issue [F]: 10,000 parts at 30 parts/s through the real daemon
(onnxruntime, SQLite FULL, line process, fake GPIO chip). Encoder mode: placement error 0 ticks
(p99); time mode: p99 placement jitter ≤ 1 ms; no event lost, no part undecided.

Wall-clock placement depends on the machine, so the targets are asserted only where the
platform can keep them: the line process reports SCHED_FIFO granted and its startup wake-up
jitter p99 within ``scheduler.tolerance_ms``. On a VM whose host takes the vCPU away (measured:
a SCHED_FIFO busy loop on a 2-core AMD EPYC Firecracker VM loses 5–6 % of its time in stalls of
up to 17 ms, with no wait in the guest's run queue) the test still checks that every late pulse
is counted with its cause and none comes from a lost, wrong or unscheduled decision, and skips
the targets with the measured reason. Slow (two runs of ~6 minutes): ``pytest -m slow
tests/sim/test_benchmark.py``; EDGEKIT_BENCH_OUT=DIR keeps the JSON reports; the four-way figures
under load come from ``python -m benchmarks.placement``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgekit.config.run import parse_run_config
from edgekit.runtime.events import read_events
from edgekit.sim.checker import line_problems
from edgekit.sim.run import prepare_config, simulate_config

N_PARTS = int(os.environ.get("EDGEKIT_BENCH_PARTS", "10000"))


def _cfg(bundle: Path, data: Path, tmp: Path, mode: str) -> dict:
    return {
        "bundle": str(bundle),
        "source": {"type": "sim", "dataset": str(data), "parts": N_PARTS, "spacing_mm": 10.0,
                   "reject_distance_mm": 300.0, "seed": 7},
        "encoder": {"type": "sim", "speed_mm_s": 300.0, "ticks_per_mm": 1.0},  # 30 parts/s
        "scheduler": {"mode": mode, "pulse_ms": 10.0},
        "decision": {"deadline_ms": 250.0},
        "queues": {"frames": 8},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str(tmp / f"ev-{mode}.db"), "synchronous": "FULL"},
        "metrics": {"enabled": False},
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["encoder", "time"])
def test_10000_parts_at_30_per_s(sim_line, tmp_path, mode) -> None:
    bundle, data = sim_line
    r = simulate_config(prepare_config(parse_run_config(_cfg(bundle, data, tmp_path, mode))))
    out = Path(os.environ.get("EDGEKIT_BENCH_OUT", tmp_path)) / f"bench-{mode}.json"
    out.write_text(json.dumps({k: v for k, v in r.items() if k != "lines"}, indent=2, default=str))
    print("\n".join(r["lines"]))
    assert r["parts"] == N_PARTS and r["parts_per_s"] == 30.0
    assert r["lost_events"] == 0 and r["no_decision"] == 0 and r["events_logged"] == N_PARTS
    assert len(read_events(r["log_path"], r["run_id"])) == N_PARTS
    assert r["late_pulses_decision_after_target"] == 0  # every decision reached the line in time
    assert line_problems(r) == []
    line_late = r["late_pulses"] - r["late_pulses_decision_after_target"]
    assert sum(v for k, v in r["late_pulses_by_cause"].items() if k != "decision") == line_late
    assert r["missed_rejects"] + r["false_rejects"] + r["spurious_pulses"] <= line_late
    timer = r["timer"]
    tol_s = 1e-3
    if not timer.get("sched_fifo") or timer["jitter"]["p99_s"] > tol_s:
        pytest.skip(f"placement targets not asserted: SCHED_FIFO {'granted' if timer.get('sched_fifo') else 'refused'}, "
                    f"startup wake-up jitter p99 {timer['jitter']['p99_s'] * 1e3:.2f} ms > 1 ms "
                    f"(late pulses by cause {r['late_pulses_by_cause']})")
    assert line_late <= 0.005 * r["placement_error_ms"]["n"]
    if mode == "encoder":
        assert r["placement_error_ticks"]["p99"] == 0
    else:
        assert r["placement_error_ms"]["p99"] <= 1.0
