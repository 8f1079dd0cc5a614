"""``edgekit simulate CONFIG.yaml --parts N``: the real daemon on a virtual conveyor.

The run config's source must be ``type: sim`` (dataset images with known labels) with a ``sim``
encoder (belt speed, ticks/mm). Unless the config sets them, the reject scheduler's
``distance_counts`` / ``delay_ms`` are derived from the simulated geometry (camera → reject
station distance). Fake GPIO chips start fresh; the checker then reads what the chip recorded."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.config.run import RunConfig, load_run_config
from edgekit.errors import ConfigError, DeviceError
from edgekit.runtime.daemon import Daemon
from edgekit.runtime.events import read_events
from edgekit.runtime.logs import setup_logging
from edgekit.runtime.outputs.gpio import FakeGpioChip, FakeGpioOutput
from edgekit.sim.camera import SimCamera
from edgekit.sim.checker import check_run


def prepare_config(cfg: RunConfig, parts: int | None = None) -> RunConfig:
    """Apply ``parts`` and derive the scheduler geometry from the simulated line when unset;
    every fake chip gets a fresh unique name (edges of this run only)."""
    if cfg.source.type != "sim":
        raise ConfigError("simulate needs source.type: sim (dataset, spacing_mm, reject_distance_mm)")
    src = cfg.source
    if parts is not None:
        src = src.model_copy(update={"parts": parts})
    enc = cfg.encoder
    sched = cfg.scheduler
    upd: dict[str, Any] = {}
    if "distance_counts" not in sched.model_fields_set:
        upd["distance_counts"] = int(round(src.reject_distance_mm * enc.ticks_per_mm))
    if "delay_ms" not in sched.model_fields_set:
        upd["delay_ms"] = src.reject_distance_mm / enc.speed_mm_s * 1e3
    outputs = [o.model_copy(update={"chip": f"sim-{uuid.uuid4().hex[:8]}"}) if o.type == "fake_gpio" else o
               for o in cfg.outputs]
    new = cfg.model_copy(update={"source": src, "scheduler": sched.model_copy(update=upd), "outputs": outputs})
    # re-validate the combination (deadline vs delay) after the derived values
    return RunConfig.model_validate(new.model_dump())


def simulate_config(cfg: RunConfig, logger: logging.Logger | None = None,
                    daemon_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the daemon on the simulated line and check the result (see ``check_run``)."""
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the line thread must get the GIL quickly for pulse timing
    decisions: dict[int, Any] = {}
    plc_mode = cfg.scheduler.mode == "plc"
    plc = None
    try:
        daemon = Daemon(cfg, logger=logger, on_decision=lambda d: decisions.__setitem__(d.part_id, d),
                        **(daemon_kwargs or {}))
        cam = daemon.camera
        if not isinstance(cam, SimCamera):
            raise ConfigError("simulate needs source.type: sim")
        if plc_mode:
            plc = _start_plc(cfg, cam)
        t0 = time.monotonic()
        daemon.start()
        daemon.wait()
        if plc is not None:  # parts decided but still on their way to the PLC's ejector
            s = cfg.scheduler
            deadline = time.monotonic() + s.distance_counts / cam.encoder.ticks_per_s + 2.0
            while plc.pending() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep((s.pulse_ms + 5.0) / 1e3)
        wall_s = time.monotonic() - t0
    finally:
        sys.setswitchinterval(old_switch)
        if plc is not None:
            plc.stop()
    if daemon.fatal is not None:
        raise DeviceError(f"simulation stopped: {daemon.fatal!r}")
    logged = {r["part_id"] for r in read_events(cfg.events.path, daemon.run_id)}
    pitch_ns = int(1e9 / cam.parts_per_s)
    if plc is not None:
        report = check_run(cam.truth, decisions, plc.edges, cam.encoder.count_at, pitch_ns, logged,
                           time.monotonic_ns(),
                           fired=[(e.part_id, "reject", None, e.t_ns, e.count, e.merged, None) for e in plc.ejections])
        report.update(plc_report(plc, cam.truth))
    else:
        fake = [o for o in daemon.output_specs if isinstance(o, FakeGpioOutput)]
        if not fake or fake[0].cfg.lines.reject is None:
            raise ConfigError("simulate needs a fake_gpio output with a reject line (the checker reads its edges)")
        chip = FakeGpioChip.get(fake[0].cfg.chip)
        lines = fake[0].cfg.lines
        report = check_run(cam.truth, decisions, chip.edges_for(lines.reject), cam.encoder.count_at, pitch_ns, logged,
                           time.monotonic_ns(),
                           review_edges=chip.edges_for(lines.review) if lines.review is not None else None,
                           fired=list(daemon.pulse_timing))
    summary = daemon.summary()
    report.update({
        "mode": cfg.scheduler.mode,
        "parts_per_s": round(cam.parts_per_s, 3),
        "tick_ms": round(1e3 / cam.encoder.ticks_per_s, 4),
        "distance_counts": cfg.scheduler.distance_counts,
        "delay_ms": round(cfg.scheduler.delay_ms, 3),
        "wall_s": round(wall_s, 2),
        "events_logged": len(logged),
        "decisions": summary["decisions"],
        "failsafe": summary["failsafe"],
        "late_pulses": summary["late_pulses"],
        "late_pulses_decision_after_target": summary["late_pulses_decision_after_target"],
        "late_pulses_by_cause": summary["late_pulses_by_cause"],
        "timer": summary["timer"],
        "output_errors": summary["output_errors"],
        "camera_reconnects": summary["camera_reconnects"],
        "frames_missed": summary["frames_missed"],
        "metrics": daemon.metrics.snapshot(),
        "stage_latency": summary["latency"],
        "log_path": summary["log_path"],
        "run_id": daemon.run_id,
        "bundle_id": summary["bundle_id"],
    })
    report["lines"] = format_report(report)
    return report


def _start_plc(cfg: RunConfig, cam: SimCamera) -> Any:
    """The simulated PLC of PLC-timed mode, serving the port the Modbus output writes to."""
    from edgekit.sim.plc import ShiftRegisterPlc

    mods = [o for o in cfg.outputs if o.type == "modbus"]
    if not mods or mods[0].host not in ("127.0.0.1", "localhost"):
        raise ConfigError("simulate with scheduler.mode: plc needs a modbus output with host 127.0.0.1 "
                          "(the simulated PLC listens there)")
    m = mods[0]
    return ShiftRegisterPlc(cam.encoder, m.port, base_address=m.base_address, pulse_ms=cfg.scheduler.pulse_ms,
                            distance_counts=cfg.scheduler.distance_counts).start()


def plc_report(plc: Any, truth: list[Any]) -> dict[str, Any]:
    """What the PLC side did: results read (each once, in order), targets against the truth,
    where the ejector fired relative to its target count."""
    station = {p.part_id: p.station_count for p in truth}
    seqs = [r["seq"] for r in plc.results]
    mism = [r["part_id"] for r in plc.results if r["part_id"] in station and r["target_count"] != station[r["part_id"]]]
    fire = [e.count - e.target_count for e in plc.ejections]
    return {"plc_results_read": len(plc.results), "plc_results_missed": plc.missed_results,
            "plc_results_in_order": seqs == sorted(seqs) and len(set(seqs)) == len(seqs),
            "plc_target_mismatches": len(mism), "plc_target_mismatch_ids": mism[:20],
            "plc_ejections": len(plc.ejections), "plc_scan_errors": plc.scan_errors,
            "plc_fire_after_target_ticks": {"max": max(fire) if fire else None, "min": min(fire) if fire else None}}


def format_report(r: dict[str, Any]) -> list[str]:
    """Human-readable summary lines."""
    pt, pm, e2e = r["placement_error_ticks"], r["placement_error_ms"], r["e2e_latency_ms"]
    out = [
        f"simulated line: {r['parts']} parts at {r['parts_per_s']} parts/s, {r['mode']} mode "
        f"(1 tick = {r['tick_ms']} ms), {r['wall_s']} s",
        f"defective parts: {r['defective']}; correct rejects: {r['correct_rejects']}, missed: {r['missed_rejects']}, "
        f"false: {r['false_rejects']}, fail-safe: {r['failsafe_rejects']}, review: {r['reviews']}",
        f"reject placement error |ticks| p50/p99/max: {pt['p50']}/{pt['p99']}/{pt['max']}; "
        f"|ms| p50/p99/max: {pm['p50']}/{pm['p99']}/{pm['max']} (n={pm['n']})",
        f"end-to-end latency (capture → decision) p50/p99: {e2e['p50']}/{e2e['p99']} ms",
        f"decisions: {r['decisions']}; fail-safe reasons: {r['failsafe'] or 'none'}",
        f"event log: {r['events_logged']} rows, lost: {r['lost_events']}, undecided parts: {r['no_decision']} "
        f"({r['log_path']})",
    ]
    if "plc_results_read" in r:
        f = r["plc_fire_after_target_ticks"]
        out.append(f"PLC-timed: the PLC read {r['plc_results_read']} results (missed {r['plc_results_missed']}), "
                   f"target count ≠ the part's station count: {r['plc_target_mismatches']}, failed scans: "
                   f"{r['plc_scan_errors']}; ejector fired "
                   f"{r['plc_ejections']} times, {f['min']}–{f['max']} ticks after its target (PLC scan)")
    else:
        out.append(late_pulse_line(r))
    if r.get("stage_latency"):
        st = r["stage_latency"]
        out.append("per-stage latency median/p99 ms: " + ", ".join(
            f"{k} {v['median_ms']}/{v['p99_ms']}" for k, v in st.items() if k != "e2e"))
    return out


def late_pulse_line(r: dict[str, Any]) -> str:
    """``late pulses: N (line process late X: runqueue a, ...; decision late Y)`` and the line
    process's scheduling and startup jitter: one counted summary instead of a line per pulse."""
    causes = dict(r.get("late_pulses_by_cause") or {})
    decision = causes.pop("decision", 0)
    line_late = sum(causes.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(causes.items()) if v)
    out = (f"late pulses (> scheduler.tolerance_ms after target): {r.get('late_pulses', 0)} "
           f"(line process late {line_late}{': ' + detail if detail else ''}, decision late {decision})")
    t = r.get("timer") or {}
    if t.get("jitter"):
        from edgekit.runtime.lineproc import describe_jitter

        out += f"; line process at startup: {describe_jitter(t['jitter'], t.get('sched_fifo'))}"
    elif t:
        out += f"; line process SCHED_FIFO {'granted' if t.get('sched_fifo') else 'not granted'}"
    return out


def simulate(config: str | Path, parts: int | None = None, overrides: dict[str, Any] | None = None,
             quiet: bool = True) -> dict[str, Any]:
    """Load CONFIG.yaml (source type sim), run ``parts`` parts, return the checker's report."""
    cfg = prepare_config(load_run_config(config, overrides), parts)
    log = setup_logging(cfg.log.format, "warning" if quiet else cfg.log.level, stream=sys.stderr)
    return simulate_config(cfg, logger=log)
