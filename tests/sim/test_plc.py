"""PLC-timed rejection (scheduler.mode: plc): the daemon sends each result with its latched encoder
count and target count to a simulated PLC (a real pymodbus server on loopback running a
shift-register program); the PLC fires the ejector at the target count."""

from __future__ import annotations

import pytest

from edgekit.config.run import parse_run_config
from edgekit.errors import ConfigError
from edgekit.runtime.outputs import modbus as mb
from edgekit.sim.checker import line_problems
from edgekit.sim.plc import (
    OFF_DECISION,
    OFF_ENCODER_COUNT,
    OFF_PART_ID,
    OFF_RESULT_SEQ,
    OFF_TARGET_COUNT,
    ShiftRegisterPlc,
    ShiftRegisterProgram,
)
from edgekit.sim.run import prepare_config, simulate_config
from tests.sim.test_simulate import sim_config


def _result(seq: int, part: int, decision: int, enc: int, target: int) -> list[int]:
    regs = [0] * mb.BLOCK_A
    regs[OFF_RESULT_SEQ] = seq
    regs[OFF_PART_ID:OFF_PART_ID + 2] = [part >> 16, part & 0xFFFF]
    regs[OFF_DECISION] = decision
    regs[OFF_ENCODER_COUNT:OFF_ENCODER_COUNT + 2] = [enc >> 16, enc & 0xFFFF]
    if OFF_TARGET_COUNT is not None:
        regs[OFF_TARGET_COUNT:OFF_TARGET_COUNT + 2] = [target >> 16, target & 0xFFFF]
    return regs


def test_shift_register_program_fires_at_the_target_count_exactly() -> None:
    prog = ShiftRegisterProgram(pulse_ms=0.005, distance_counts=300)  # 5 µs pulses on the virtual time axis
    assert prog.scan(0, 1000, _result(1, 70000, mb.DECISION_CODES["reject"], 1000, 1300)) == 1  # acknowledged
    assert prog.scan(1, 1010, _result(2, 70001, mb.DECISION_CODES["accept"], 1010, 1310)) == 2
    assert prog.scan(2, 1020, _result(3, 70002, mb.FAILSAFE_CODE, 1020, 1320)) == 3
    last = _result(3, 70002, mb.FAILSAFE_CODE, 1020, 1320)
    for count in (1299, 1300, 1319, 1320):
        assert prog.scan(count * 1000, count, last) is None  # the same result is read once
    assert [(e.part_id, e.target_count, e.count) for e in prog.ejections] == [(70000, 1300, 1300), (70002, 1320, 1320)]
    assert [r["target_count"] for r in prog.results] == [1300, 1310, 1320] and prog.missed_results == 0
    assert [(e.active, e.t_ns) for e in prog.edges] == [(True, 1300_000), (False, 1319_000), (True, 1320_000)]
    assert prog.pending() == 0


def test_result_seq_jump_counts_missed_results() -> None:
    prog = ShiftRegisterProgram(distance_counts=10)
    prog.scan(0, 0, _result(1, 1, 1, 0, 10))
    prog.scan(1, 0, _result(4, 4, 1, 0, 10))
    assert prog.missed_results == 2


def test_plc_mode_simulated_line(sim_line, tmp_path) -> None:
    bundle, data = sim_line
    port = ShiftRegisterPlc.free_port()
    cfg = sim_config(bundle, data, tmp_path, "plc", parts=45,
                     outputs=[{"type": "fake_gpio"},
                              {"type": "modbus", "host": "127.0.0.1", "port": port, "retry_initial_s": 0.05,
                               "ack_timeout_ms": 2000}])
    r = simulate_config(prepare_config(parse_run_config(cfg)))
    assert r["mode"] == "plc" and r["pulses_fired"] > 0
    assert r["decisions"].get("reject", 0) > 0
    # every result reached the PLC once, in order, with the part's exact station count as target
    assert r["plc_results_read"] == 45 and r["plc_results_missed"] == 0 and r["plc_results_in_order"]
    assert r["plc_target_mismatches"] == 0
    # the PLC fired for every defect and for no good part (timing-independent), never before its target
    assert line_problems(r) == []
    assert r["plc_fire_after_target_ticks"]["min"] >= 0
    assert any("PLC-timed" in ln for ln in r["lines"])


def test_plc_mode_needs_a_modbus_output(sim_line, tmp_path) -> None:
    bundle, data = sim_line
    with pytest.raises(ConfigError, match="scheduler.mode 'plc' needs a Modbus output"):
        parse_run_config(sim_config(bundle, data, tmp_path, "plc", parts=5))
