"""The demo's last step: a trained bundle on the simulated line (fake GPIO, SQLite log).

The line speed is chosen from a quick measurement of this machine's inference time so the
demo shows a line the model keeps up with (a 2-core laptop is not a Jetson)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.config.run import parse_run_config
from edgekit.sim.run import prepare_config, simulate_config


def measure_inference_s(bundle_dir: str | Path, data_dir: str | Path, n: int = 5, threads: int = 1) -> float:
    """Median seconds per image (preprocess + onnxruntime) for a few test images."""
    from edgekit.bundle.io import load_bundle
    from edgekit.data.dataset import scan_dataset
    from edgekit.data.images import read_image
    from edgekit.runtime.backends.ort import OrtBackend, OrtBackendConfig
    from edgekit.runtime.preprocess import Preprocessor
    from edgekit.runtime.types import Frame

    bundle = load_bundle(bundle_dir)
    be = OrtBackend(OrtBackendConfig(threads=threads))
    be.load(bundle)
    pre = Preprocessor(bundle.preprocess)
    samples = scan_dataset(data_dir, require_test=True).test[:n]
    times = []
    for i, s in enumerate(samples * 2):
        f = Frame(i, "probe", time.monotonic_ns(), read_image(s.path))
        t0 = time.perf_counter()
        be.infer(pre.run(f))
        times.append(time.perf_counter() - t0)
    be.close()
    return float(np.median(times[len(samples):]))  # second pass: warm


def ui_port(preferred: int = 8080) -> int | None:
    """A free loopback port for the demo's operator page (``preferred`` if free), or None when the
    ``[ui]`` extra (starlette, uvicorn) is not installed."""
    import importlib.util
    import socket

    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        return None
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    return None


def simulate_demo(bundle_dir: str | Path, data_dir: str | Path, out_dir: str | Path, n_parts: int = 200,
                  mode: str = "encoder", threads: int = 1, ui: bool = True) -> dict[str, Any]:
    """Run ``n_parts`` test images of ``data_dir`` through the daemon on a simulated conveyor;
    with ``ui`` (and the ``[ui]`` extra) the operator page is served on 127.0.0.1 meanwhile and
    its link printed.

    Returns:
        the checker's report (see ``edgekit.sim.checker.check_run``) with ``lines``: printable
        summary lines (parts, correct/missed/false/fail-safe rejects, placement error, latency).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infer_s = measure_inference_s(bundle_dir, data_dir, threads=threads)
    parts_per_s = float(min(30.0, max(1.0, 0.5 / max(infer_s, 1e-4))))  # keep inference ≤ half the pitch
    spacing_mm = 50.0
    speed = parts_per_s * spacing_mm
    deadline_ms = max(150.0, 8.0 * infer_s * 1e3)  # slack for a busy laptop: p99 ≫ median
    distance_mm = speed * (deadline_ms + 100.0) / 1e3
    data = {
        "bundle": str(Path(bundle_dir).resolve()),
        "source": {"type": "sim", "dataset": str(Path(data_dir).resolve()), "parts": n_parts,
                   "spacing_mm": spacing_mm, "reject_distance_mm": round(distance_mm, 3), "seed": 0},
        "encoder": {"type": "sim", "speed_mm_s": round(speed, 6), "ticks_per_mm": 1.0},
        "backend": {"type": "onnxruntime", "threads": threads},
        "decision": {"deadline_ms": round(deadline_ms, 1)},
        "scheduler": {"mode": mode, "pulse_ms": 10.0},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str((out / "events.db").resolve()), "synchronous": "FULL"},
        "metrics": {"enabled": False},
        "log": {"format": "text", "level": "warning"},
    }
    port = ui_port() if ui else None
    if port is not None:  # the page shows the rejected parts from the archive, with heat maps
        data["ui"] = {"enabled": True, "port": port}
        data["archive"] = {"enabled": True, "dir": str((out / "archive").resolve()), "quota_mb": 64}
        print(f"operator page (live while the line runs): http://127.0.0.1:{port}/", flush=True)
    elif ui:
        print("operator page: pip install 'edgekit[ui]' to watch the line in a browser", flush=True)
    cfg = prepare_config(parse_run_config(data, "demo line"))
    report = simulate_config(cfg)
    report["inference_ms_measured"] = round(infer_s * 1e3, 2)
    report["lines"].insert(1, f"inference {infer_s * 1e3:.1f} ms/image on this machine → line at "
                              f"{parts_per_s:.1f} parts/s, deadline {deadline_ms:.0f} ms")
    return report
