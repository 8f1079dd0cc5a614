"""`edgekit build`: a trained run → a verified bundle directory.

Steps: load run → export FP32 ONNX (preprocessing + scoring fused) → parity check torch vs
onnxruntime on held-out good tiles → calibration.json + manifest.json with sha256 of every file."""

from __future__ import annotations

import hashlib
import platform
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.bundle.io import load_bundle, write_json_atomic, write_manifest
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION
from edgekit.errors import BundleError

PARITY_RTOL = 1e-4


def parity_tiles(run: Any, n: int = 8) -> np.ndarray:
    """Real held-out good tiles for parity checks (falls back to training images)."""
    from edgekit.train import load_tiles

    paths = [Path(p) for p in run.info["data"].get("val_images", [])][:n]
    if not paths:
        from edgekit.train import gather_training_images

        paths = gather_training_images(run.info["data"]["dirs"])[0][:n]
    tiles, _ = load_tiles(paths, run.spec)
    return tiles[:n]


def check_parity(run: Any, onnx_path: Path, tiles: np.ndarray) -> dict[str, float]:
    """Torch vs onnxruntime image scores on the same tiles; BundleError beyond PARITY_RTOL."""
    import torch

    from edgekit.compile.onnx_export import ort_run
    from edgekit.train import score_tiles_torch

    t_maps, t_scores = score_tiles_torch(run.model, tiles, run.spec, 8, torch.device("cpu"))
    o_maps, o_scores = ort_run(onnx_path, tiles)
    rel = np.abs(o_scores - t_scores) / np.maximum(np.abs(t_scores), 1e-12)
    result = {"n_tiles": int(len(tiles)), "max_rel_score_diff": float(rel.max(initial=0.0)),
              "max_abs_map_diff": float(np.abs(o_maps - t_maps).max(initial=0.0))}
    if result["max_rel_score_diff"] > PARITY_RTOL:
        raise BundleError(
            f"{onnx_path}: onnxruntime scores differ from torch by {result['max_rel_score_diff']:.2e} relative "
            f"(limit {PARITY_RTOL:.0e}); report this with the recipe — an op exports wrongly"
        )
    return result


def _hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_bundle(run_dir: str | Path, bundle_dir: str | Path, target: str = "cpu", quiet: bool = False) -> Path:
    """Compile a run into a bundle directory (replaced atomically if it exists)."""
    import onnx
    import torch

    from edgekit.compile.onnx_export import export_onnx, set_metadata
    from edgekit.train import load_run

    run = load_run(run_dir, "cpu")
    cal = run.info.get("calibration") or {}
    if cal.get("accept_edge") is None or cal.get("reject_edge") is None:
        raise BundleError(f"{run_dir}: run has no thresholds; run `edgekit calibrate {run_dir} --data DIR` first")
    out = Path(bundle_dir)
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bundle_id = uuid.uuid4().hex[:16]
    recipe_text = (Path(run_dir) / "recipe.yaml").read_text(encoding="utf-8")
    opset = run.recipe.build.opset
    onnx_path = export_onnx(run.model, run.spec, tmp / "model.onnx", opset=opset)
    set_metadata(onnx_path, {"edgekit.bundle_id": bundle_id, "edgekit.method": run.info["method"]})
    parity = check_parity(run, onnx_path, parity_tiles(run))
    if not quiet:
        print(f"exported model.onnx (opset {opset}); torch vs onnxruntime max rel score diff {parity['max_rel_score_diff']:.1e}")
    calibration = {**cal, "preprocess": run.spec.to_dict()}
    write_json_atomic(tmp / "calibration.json", calibration)
    s = run.spec.size
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "edgekit_version": __version__,
        "bundle_id": bundle_id, "method": run.info["method"], "backbone": run.info["backbone"],
        "recipe": run.recipe.model_dump(mode="json"), "recipe_hash": _hash_text(recipe_text),
        "preprocess": run.spec.to_dict(),
        "inputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", s, s, 3], "layout": "NHWC", "color": run.spec.color}],
        "outputs": [{"name": "anomaly_map", "dtype": "float32", "shape": ["batch", 1, s, s]},
                    {"name": "score", "dtype": "float32", "shape": ["batch"], "reduce_tiles": "max"}],
        "models": {"fp32": {"file": "model.onnx", "kind": "onnx", "precision": "fp32", "parity": parity}},
        "files": {"model.onnx": "", "calibration.json": ""},
        "thresholds": {k: cal.get(k) for k in ("threshold", "accept_edge", "reject_edge", "source")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "build": {"opset": opset, "onnx_version": onnx.__version__, "torch_version": torch.__version__,
                  "host": platform.node(), "machine": platform.machine(), "steps_pending": []},
        "run": {"data_hash": run.info["data"]["hash"], "epochs": run.info.get("epochs_done"),
                "method_facts": run.info.get("method_facts", {}), "train_time_s": run.info.get("train_time_s")},
        "export_info": run.model.export_info(),
    }
    if target == "jetson":
        manifest["build"]["steps_pending"].append(
            {"step": "build-on-device", "command": f"edgekit build {out} --target jetson --engine-only"}
        )
    write_manifest(tmp, manifest)
    load_bundle(tmp)  # read back exactly as the device will
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)
    if not quiet:
        print(f"bundle written to {out} (id {bundle_id}, target {target})")
    return out


def build_cli(model_dir: str, target: str = "cpu", bundle_dir: str | None = None) -> None:
    out = bundle_dir or str(Path(model_dir).with_name(Path(model_dir).name + "-bundle"))
    build_bundle(model_dir, out, target=target)
