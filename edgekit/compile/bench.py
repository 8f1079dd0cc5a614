"""`edgekit bench`: latency and throughput of every backend/precision of a bundle (and torch eager
for a run), measured side by side in one process.

Rounds are interleaved (each round times every candidate in turn) so load from other processes
on a shared machine hits all candidates alike instead of biasing whichever ran during a spike."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compile.cost import model_cost
from edgekit.errors import BundleError


@dataclass
class Candidate:
    """One thing to time: ``run(tiles)`` scores (B, S, S, 3) uint8 tiles."""

    name: str
    backend: str
    precision: str
    run: Callable[[np.ndarray], Any]


def _ort_candidate(path: Path, precision: str, threads: int) -> Candidate:
    from edgekit.runtime.backends.ort import ort_session

    sess = ort_session(path, threads)
    return Candidate(f"onnxruntime-{precision}", "onnxruntime", precision,
                     lambda t: sess.run(["anomaly_map", "score"], {"image": t}))


def _torch_candidate(run_dir: Path, threads: int) -> Candidate:
    import torch

    from edgekit.train import load_run, normalise

    torch.set_num_threads(threads)
    run = load_run(run_dir, "cpu")
    model, spec = run.model.eval(), run.spec

    def go(t: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(normalise(torch.from_numpy(t), spec))

    return Candidate("torch-eager-fp32", "torch", "fp32", go)


def _trt_candidate(bundle: Any, key: str) -> Candidate:
    """A TensorRT engine through the runtime's backend (the same code path as the line)."""
    from edgekit.runtime.backends.trt import TrtBackend, TrtBackendConfig
    from edgekit.runtime.types import Batch, Frame

    precision = bundle.models[key]["precision"]
    backend = TrtBackend(TrtBackendConfig(precision=precision))
    backend.load(bundle)
    frame = Frame(part_id=0, source_id="bench", t_capture_ns=0, image=None)
    return Candidate(f"tensorrt-{precision}", "tensorrt", precision, lambda t: backend.infer(Batch(frame, t, {})))


def candidates_for(target: str | Path, threads: int, precisions: Sequence[str] | None = None,
                   with_torch: bool = True, tmp_dir: Path | None = None) -> tuple[list[Candidate], list[str], dict[str, Any]]:
    """Candidates for a bundle directory/archive or a run directory.

    Returns: candidates, skipped notes ("tensorrt-fp16: tensorrt not installed"), facts (input size, source)."""
    import importlib.util

    from edgekit.bundle.io import load_bundle

    p = Path(target)
    cands: list[Candidate] = []
    skipped: list[str] = []
    if (p / "run.json").is_file():  # a run: torch eager vs its FP32 ONNX export
        from edgekit.compile.onnx_export import export_onnx
        from edgekit.train import load_run

        run = load_run(p, "cpu")
        if tmp_dir is None:
            raise BundleError("bench of a run directory needs a scratch folder")
        onnx_path = export_onnx(run.model, run.spec, tmp_dir / "model.onnx", opset=run.recipe.build.opset)
        cands.append(_torch_candidate(p, threads))
        cands.append(_ort_candidate(onnx_path, "fp32", threads))
        return cands, ["build a bundle with --precision fp32,fp16,int8 to time reduced precisions"], {
            "source": str(p), "kind": "run", "input_size": run.spec.size, "model_cost": model_cost(onnx_path)}
    bundle = load_bundle(p)
    for key, entry in bundle.models.items():
        if precisions and entry.get("precision") not in precisions:
            continue
        if entry.get("kind") == "onnx":
            cands.append(_ort_candidate(bundle.model_path(key), entry["precision"], threads))
        elif entry.get("kind") == "tensorrt":
            if importlib.util.find_spec("tensorrt") is None:
                skipped.append(f"{key}: tensorrt is not installed here (bench it on the device)")
                continue
            cands.append(_trt_candidate(bundle, key))
    run_path = Path(bundle.manifest.get("run", {}).get("path") or "/nonexistent")
    if with_torch and (run_path / "run.json").is_file() and importlib.util.find_spec("torch") is not None:
        cands.insert(0, _torch_candidate(run_path, threads))
    elif with_torch:
        skipped.append("torch-eager: the run directory named in the manifest is not here (or torch is missing)")
    return cands, skipped, {"source": str(p), "kind": "bundle", "input_size": bundle.preprocess.size,
                            "bundle_id": bundle.bundle_id, "model_cost": model_cost(bundle.model_path("fp32"))}


def time_candidates(cands: Sequence[Candidate], size: int, batch: int, warmup: int = 5, rounds: int = 6,
                    iters_per_round: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Interleaved timing of every candidate on the same (batch, size, size, 3) uint8 input.

    Returns one row per candidate: latency_median_ms, latency_p99_ms, latency_mean_ms,
    throughput_tiles_per_s (batch / median latency), n (timed runs)."""
    tiles = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for c in cands:
        for _ in range(warmup):
            c.run(tiles)
    lat: dict[str, list[float]] = {c.name: [] for c in cands}
    for _ in range(rounds):
        for c in cands:
            for _ in range(iters_per_round):
                t0 = time.perf_counter()
                c.run(tiles)
                lat[c.name].append(time.perf_counter() - t0)
    rows = []
    for c in cands:
        a = np.asarray(lat[c.name]) * 1e3
        med = float(np.median(a))
        rows.append({"name": c.name, "backend": c.backend, "precision": c.precision, "batch": batch,
                     "latency_median_ms": med, "latency_p99_ms": float(np.percentile(a, 99)),
                     "latency_mean_ms": float(a.mean()), "throughput_tiles_per_s": batch / (med / 1e3), "n": int(a.size)})
    return rows


def bench(target: str | Path, threads: int = 2, batches: Sequence[int] = (1,), precisions: Sequence[str] | None = None,
          warmup: int = 5, rounds: int = 6, iters_per_round: int = 5, with_torch: bool = True) -> dict[str, Any]:
    """Time every backend/precision of ``target`` (bundle or run) for each batch size.

    Returns {"rows": [...], "speedup": {"int8_vs_fp32@b1": x, ...}, "threads", "skipped", ...}."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        cands, skipped, facts = candidates_for(target, threads, precisions, with_torch, Path(tmp))
        if not cands:
            raise BundleError(f"{target}: nothing to benchmark ({'; '.join(skipped) or 'no models'})")
        rows: list[dict[str, Any]] = []
        for b in batches:
            rows.extend(time_candidates(cands, facts["input_size"], b, warmup, rounds, iters_per_round))
    speedup = {}
    for b in batches:
        by = {r["name"]: r for r in rows if r["batch"] == b}
        base = by.get("onnxruntime-fp32")
        for r in by.values():
            if base and r["name"] != "onnxruntime-fp32":
                speedup[f"{r['name']}_vs_onnxruntime-fp32@b{b}"] = base["latency_median_ms"] / r["latency_median_ms"]
    return {**facts, "threads": threads, "batches": list(batches), "warmup": warmup, "rounds": rounds,
            "iters_per_round": iters_per_round, "onnxruntime_version": ort.__version__,
            "cpu": platform.processor() or platform.machine(), "rows": rows, "speedup": speedup, "skipped": skipped}


def format_table(result: dict[str, Any]) -> str:
    """Human-readable table of ``bench`` output."""
    lines = [f"{result['source']}  input {result['input_size']}²  threads {result['threads']}  "
             f"(interleaved: {result['rounds']} rounds x {result['iters_per_round']} runs, {result['warmup']} warm-up)",
             f"{'model':<22}{'batch':>6}{'median ms':>12}{'p99 ms':>10}{'tiles/s':>10}"]
    cost = result.get("model_cost")
    if cost:
        lines.insert(1, f"model: {cost['params'] / 1e6:.2f} M parameters, {cost['gmacs']:.3f} GMACs per tile "
                        "(conv/matmul of the exported graph)")
    for r in result["rows"]:
        lines.append(f"{r['name']:<22}{r['batch']:>6}{r['latency_median_ms']:>12.2f}{r['latency_p99_ms']:>10.2f}"
                     f"{r['throughput_tiles_per_s']:>10.1f}")
    for k, v in result["speedup"].items():
        lines.append(f"speedup {k}: {v:.2f}x")
    for s in result["skipped"]:
        lines.append(f"skipped {s}")
    return "\n".join(lines)
