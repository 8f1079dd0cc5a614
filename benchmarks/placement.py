"""Reject placement of the line process under a defined load (issue [K], point 2).

    python -m benchmarks.placement [--parts 10000] [--rate 100] [--out results/placement.json]

What runs: the real line process (``edgekit.runtime.lineproc.LineProcess``: its own process,
SCHED_FIFO when granted, a fake GPIO chip recording every edge with ``time.monotonic_ns``) gets one
reject command per part, sent ~150 ms before the part reaches the reject station as a decision
would be; the belt is the simulated encoder at the demo's resolution (1 tick = 0.667 ms at
1500 ticks/s). Background load for the whole run: onnxruntime FP32 inference of a small conv net
with one intra-op thread per core, in a loop (what the daemon does at full line rate), plus one
unrelated CPU-bound process. Four runs: encoder and time mode, each with and without SCHED_FIFO.

Reported per run: placement error (rising edge minus the target: time, and ticks for encoder mode)
p50/p99/max, late pulses (> tolerance) by cause (runqueue / hypervisor / timer), the startup jitter
probe, and the CPU's share of steal time during the run. Everything is printed side by side and
written as JSON. Figures depend on the machine: say which (``lscpu``) when quoting them."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

MS = 1_000_000


def _conv_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, ch = [], [], "x", 3
    for i in range(4):
        w = numpy_helper.from_array((rng.standard_normal((32, ch, 3, 3)) * 0.1).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, ch = f"r{i}", 32
    nodes.append(helper.make_node("ReduceMean", [prev], ["y"], keepdims=0))
    g = helper.make_graph(nodes, "load", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 160, 160])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _ort_load(model: str, stop: Any, counter: Any) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 160, 160), dtype=np.float32)
    while not stop.is_set():
        sess.run(None, {"x": x})
        with counter.get_lock():
            counter.value += 1


def _cpu_hog(stop: Any) -> None:
    v = 0
    while not stop.is_set():
        for i in range(100_000):
            v ^= i


def _steal_share() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return vals[7], sum(vals)


def run_once(mode: str, fifo: bool, parts: int, rate: float, busy_us: float) -> dict[str, Any]:
    from edgekit.runtime.encoder import SimEncoder, SimEncoderConfig
    from edgekit.runtime.lineproc import LineProcess
    from edgekit.runtime.types import RejectCommand

    chip = f"bench-{os.getpid()}-{mode}-{int(fifo)}"
    enc_cfg = {"type": "sim", "speed_mm_s": 1500.0, "ticks_per_mm": 1.0}
    fired: list[tuple[Any, ...]] = []
    spec = {"outputs": [{"type": "fake_gpio", "chip": chip}], "encoder": enc_cfg, "overlap": "merge",
            "heartbeat_period_ms": 500.0, "alive_timeout_ms": 5000.0, "rt_priority": 50 if fifo else None,
            "busy_wait_us": busy_us, "jitter_probe_ms": 300.0, "tolerance_ms": 1.0, "trigger": None}
    line = LineProcess(spec, lambda m: fired.append(m) if m[0] == "fired" else None)
    line.start()
    rx = threading.Thread(target=line.receive_loop, daemon=True)
    rx.start()
    enc = SimEncoder(SimEncoderConfig(**{k: v for k, v in enc_cfg.items() if k != "type"}))
    t0 = time.monotonic_ns() + 50 * MS
    enc.t0_ns = t0
    line.set_encoder_origin(t0)
    pitch_ns = int(1e9 / rate)
    lead_ns = 150 * MS  # the decision reaches the line this long before the part reaches the station
    targets: list[tuple[int, int | None]] = []  # (target ns, target count)
    s0 = _steal_share()
    next_alive = 0
    for k in range(parts):
        t_station = t0 + 200 * MS + k * pitch_ns
        if mode == "encoder":
            count = enc.count_at(t_station)
            t_target = enc.time_of_count(count)
            cmd = RejectCommand(k, "reject", 3.0, at_count=count)
        else:
            count, t_target = None, t_station
            cmd = RejectCommand(k, "reject", 3.0, at_ns=t_station)
        targets.append((t_target, count))
        while True:
            now = time.monotonic_ns()
            if now >= t_target - lead_ns:
                break
            time.sleep(min(0.005, (t_target - lead_ns - now) / 1e9))
        line.schedule(cmd)
        if now >= next_alive:
            line.alive(True)
            next_alive = now + 200 * MS
    time.sleep(0.3)
    line.stop(2.0)
    s1 = _steal_share()
    edges = [e for e in line.edges.get(chip, []) if e.offset == 17 and e.active]
    # pair by part id: the line process reports each pulse start (part, drive time, count)
    starts = {m[1]: m for m in fired if m[2] == "reject"}
    err_ns, ticks = [], []
    for k, (t, c) in enumerate(targets):
        m = starts.get(k)
        if m is None:
            continue
        err_ns.append(m[3] - t)
        if c is not None:
            ticks.append(abs(enc.count_at(m[3]) - c))
    res: dict[str, Any] = {"mode": mode, "sched_fifo_requested": fifo, "parts": parts, "pulses": len(starts),
                           "chip_rising_edges": len(edges),
                           "timer": line.info, "late_by_cause": line.stats.get("late_by_cause"),
                           "late": line.stats.get("late"),
                           "steal_share": round((s1[0] - s0[0]) / max(1, s1[1] - s0[1]), 4)}
    a = np.abs(np.array(err_ns, dtype=np.float64)) / 1e6
    res["placement_ms"] = {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
                           "max": round(float(a.max()), 3), "signed_mean": round(float(np.mean(err_ns)) / 1e6, 4)}
    if ticks:
        tk = np.array(ticks)
        res["placement_ticks"] = {"p50": int(np.percentile(tk, 50)), "p99": int(np.percentile(tk, 99)),
                                  "max": int(tk.max())}
    res["meets_target"] = bool(res["placement_ms"]["p99"] <= 0.667 and res["placement_ms"]["max"] <= 2.0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=100.0, help="parts per second (one reject pulse each)")
    ap.add_argument("--busy-us", type=float, default=1000.0, help="line.busy_wait_us")
    ap.add_argument("--no-load", action="store_true", help="skip the background load")
    ap.add_argument("--runs", default="encoder:fifo,encoder:cfs,time:fifo,time:cfs")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    stop = mp.Event()
    counter = mp.Value("l", 0)
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "load.onnx"
        _conv_model(model)
        if not a.no_load:
            procs = [mp.Process(target=_ort_load, args=(str(model), stop, counter), daemon=True),
                     mp.Process(target=_cpu_hog, args=(stop,), daemon=True)]
            for p in procs:
                p.start()
            time.sleep(1.0)
        results = []
        try:
            for r in a.runs.split(","):
                mode, sched = r.split(":")
                c0, t_start = counter.value, time.monotonic()
                res = run_once(mode, sched == "fifo", a.parts, a.rate, a.busy_us)
                res["load_inferences_per_s"] = round((counter.value - c0) / (time.monotonic() - t_start), 1)
                results.append(res)
                pm, pt = res["placement_ms"], res.get("placement_ticks")
                print(f"{mode:7s} {'SCHED_FIFO' if res['timer'].get('sched_fifo') else 'CFS (no FIFO)':13s} "
                      f"placement ms p50/p99/max {pm['p50']}/{pm['p99']}/{pm['max']}"
                      + (f"  ticks {pt['p50']}/{pt['p99']}/{pt['max']}" if pt else "")
                      + f"  late {res['late']} {res['late_by_cause']}  steal {res['steal_share']:.1%}"
                      f"  load {res['load_inferences_per_s']} inf/s  startup jitter p99 "
                      f"{res['timer'].get('jitter', {}).get('p99_s', 0) * 1e3:.2f} ms", flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join(5)
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rate": a.rate,
              "busy_wait_us": a.busy_us, "load": not a.no_load, "runs": results}
    try:
        report["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"cpu_model": report.get("cpu_model"), "all_meet_target": all(r["meets_target"] for r in results)}))


if __name__ == "__main__":
    main()
