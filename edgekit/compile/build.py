"""`edgekit build`: a trained run → a verified bundle directory (optionally a `.edgekit` archive).

Steps: load run → export FP32 ONNX (preprocessing + scoring fused) → parity check torch vs
onnxruntime on held-out good tiles → FP16 / INT8 (Q/DQ, calibrated on real good images) copies →
accuracy gate of every precision against FP32 on held-out images → TensorRT engines on the device
(or a recorded ``build-on-device`` step) → calibration.json + manifest.json with sha256 of every
file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import __version__
from edgekit.bundle.io import load_bundle, write_json_atomic, write_manifest
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION
from edgekit.errors import BundleError, ConfigError

log = logging.getLogger(__name__)

PARITY_RTOL = 1e-4


def parity_tiles(run: Any, n: int = 8) -> np.ndarray:
    """Real held-out good tiles for parity checks (falls back to training images)."""
    from edgekit.train import load_tiles, run_val_images

    paths = run_val_images(run.info, run.path)[:n]
    if not paths:
        from edgekit.train import gather_training_images

        paths = gather_training_images(run.info["data"]["dirs"])[0][:n]
    tiles, _ = load_tiles(paths, run.spec) if paths else (np.zeros((0,)), None)
    if len(tiles) == 0:  # a check over nothing is not a pass
        raise BundleError(f"{run.path}: no held-out or training image of the run is readable here (looked for "
                          f"{len(run.info['data'].get('val_images', []))} held-out images and in "
                          f"{', '.join(run.info['data'].get('dirs', []))}), so torch vs onnxruntime parity cannot "
                          "be checked; build where the training data is reachable")
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



PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
ENGINE_FILES = {"fp32": "model.fp32.engine", "fp16": "model.fp16.engine", "int8": "model.int8.engine"}


def parse_precisions(text: str | Sequence[str]) -> list[str]:
    """"fp32,int8" → ["fp32", "int8"] (fp32 always first: it is the reference); ConfigError otherwise."""
    items = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in items if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"--precision: unknown {', '.join(bad)} (valid: {', '.join(PRECISIONS)})")
    return ["fp32", *[p for p in PRECISIONS[1:] if p in items]]


def _image_paths(data_dir: str | Path) -> list[Path]:
    """A dataset (train/good) or a plain folder of images → good image paths."""
    from edgekit.data.dataset import list_images, scan_dataset

    d = Path(data_dir)
    if not d.is_dir():
        raise BundleError(f"--calib-data {d}: folder not found; pass a folder of good images or a dataset with train/good")
    if (d / "train").is_dir():
        return list(scan_dataset(d).train_good)
    return list_images(d)


def _on_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def _tensorrt_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def _gate(run: Any, tmp: Path, keys: list[str], eval_data: str | Path | None, thresholds: dict[str, Any],
          allow_degraded: bool, eval_max_images: int | None, quiet: bool,
          exact: dict[str, str] | None = None) -> dict[str, Any]:
    """Score every precision and FP32 on the same held-out images; refuse beyond the tolerance.

    ``exact``: precision → why it is scored as its Q/DQ graph's own arithmetic (``OnnxModel(exact=
    True)``) rather than by this host's onnxruntime kernels (see ``parity.exact_scoring_reason``)."""
    from edgekit.compile.parity import (
        OnnxModel,
        accuracy_gate,
        compare,
        decision_check,
        eval_set_from_dir,
        load_eval_set,
        own_band,
        scored_as,
    )

    if eval_data is not None:
        es = eval_set_from_dir(eval_data, run.spec, eval_max_images)
    else:
        # held-out good images of the run: no labels, so rank correlation and score diffs only
        from edgekit.train import run_val_images

        val = run_val_images(run.info, run.path)
        if not val:
            from edgekit.train import gather_training_images

            val = gather_training_images(run.info["data"]["dirs"])[0][:32]
        es = load_eval_set(val, run.spec, None, "run validation images (good only)", eval_max_images)
    ref = es.image_scores(OnnxModel(tmp / MODEL_FILES["fp32"]).score_tiles(es.tiles))
    from edgekit.evaluate.metrics import image_auroc

    ref_auroc = image_auroc(es.labels, ref) if es.labels is not None else None
    results = {}
    labelled = es.labels is not None
    have_band = thresholds.get("accept_edge") is not None and thresholds.get("reject_edge") is not None
    good = np.ones(ref.shape, bool) if not labelled else es.labels == 0
    provisional = str(thresholds.get("source", "")).startswith("provisional") and eval_data is None
    refused = []
    exact = exact or {}
    for key in keys:
        scores = es.image_scores(OnnxModel(tmp / MODEL_FILES[key], exact=key in exact).score_tiles(es.tiles))
        results[key] = r = compare(ref, scores, es.labels, thresholds)
        r["scored_as"] = scored_as(exact.get(key))
        if have_band:  # decisions are checked always, labelled data or not
            own = own_band(ref, scores, thresholds, good, provisional)
            r["band"] = {**own, "n_images": es.n_images}
            r["decisions"] = dc = decision_check(ref, scores, es.labels, thresholds, own)
            if dc["harmful_flips_own_band"]:
                refused.append(f"{key}: {dc['harmful_flips_own_band']} decision(s) worse than fp32's even at its own "
                               f"band ({dc['new_false_rejects']} good image(s) fp32 accepts that {key} rejects, "
                               f"{dc['new_false_accepts']} defect(s) fp32 rejects that {key} accepts)")
        if not quiet:
            auroc = (f"AUROC {r['auroc'] * 100:.2f} vs fp32 {ref_auroc * 100:.2f}" if r["auroc"] is not None
                     else "not accuracy-gated: no labelled data (pass --eval-data DIR with test/good and defects)")
            print(f"{key} vs fp32 on {es.n_images} images ({es.source}): {auroc}; spearman {r['spearman']:.4f}, "
                  f"max abs score diff {r['max_abs_diff']:.3g}")
            if have_band:
                dc = r["decisions"]
                what = f"{dc['n_good']} good" + (f" + {dc['n_defect']} defect" if dc["n_defect"] else "") + " images"
                print(f"  decisions checked on {what}: {dc['flips_shared_band']} flip(s) at fp32's band, "
                      f"{dc['flips_own_band']} at its own band (accept < {r['band']['accept_edge']:.4g}, reject >= "
                      f"{r['band']['reject_edge']:.4g}; {r['band']['rule']})")
            else:
                print("  decisions not checked: the run has no band yet (run `edgekit calibrate`)")
    for msg in refused:
        if not allow_degraded:
            raise BundleError(f"{msg}; drop it from --precision, or pass --allow-degraded to keep it anyway")
    tolerance = float(run.recipe.build.accuracy_tolerance_pt)
    warnings = accuracy_gate(results, ref_auroc, tolerance, allow_degraded)
    warnings += [m + "; kept because of --allow-degraded" for m in refused]
    for w in warnings:
        log.warning(w)
        if not quiet:
            print(f"warning: {w}")
    return {"reference": "fp32", "eval_source": es.source, "n_images": es.n_images, "n_tiles": int(len(es.tiles)),
            "labelled": labelled, "accuracy_gated": labelled, "decisions_checked": have_band,
            "fp32_auroc": ref_auroc, "tolerance_pt": tolerance,
            "results": results, "degraded": warnings, "allow_degraded": allow_degraded}


def build_bundle(run_dir: str | Path, bundle_dir: str | Path, target: str = "cpu", quiet: bool = False,
                 precisions: Sequence[str] = ("fp32",), calib_data: str | Path | None = None,
                 eval_data: str | Path | None = None, allow_degraded: bool = False, archive: bool = False,
                 calib_max_tiles: int = 96, eval_max_images: int | None = None, int8_exclude_stem: bool = False,
                 int8_reduce_range: bool | None = None, trt: Any = None, cudart: Any = None,
                 sign_key: str | Path | None = None, int8_float_depthwise: bool = True,
                 int8_float_high_resolution: bool = True) -> Path:
    """Compile a run into a bundle directory (replaced atomically if it exists).

    Args:
        precisions: any of fp32 (always built: the reference), fp16, int8.
        calib_data: good images for INT8 calibration (default: the run's training images).
        eval_data: labelled dataset (test/good, test/<defect>) for the AUROC gate; default: the
            run's held-out good images (rank correlation and score differences only).
        allow_degraded: keep a precision whose AUROC drops more than the recipe's tolerance
            (warned and recorded in the manifest) instead of refusing the build.
        int8_reduce_range: 7-bit int8 weights (see ``quantize_int8``); None: for the cpu target,
            on unless the build host has VNNI (or is ARM); recorded with its reason.
        int8_float_depthwise: keep depthwise convolutions float in INT8 (``quantize.depthwise_nodes``).
        int8_float_high_resolution: keep the layers finer than stride 8 float in INT8
            (``quantize.high_resolution_nodes``).
        archive: also write ``<bundle_dir>.edgekit`` (single-file tar, manifest first).
        sign_key: Ed25519 private key file (``edgekit keys new``): ``manifest.sig`` is written
            over the final manifest before the bundle appears (``edgekit.bundle.signing``).
        trt / cudart: tensorrt and cuda-python runtime modules for ``--target jetson`` on the
            device (default: imported there; tests pass fakes).
    Returns: the bundle directory."""
    from edgekit.train import load_run

    keys = parse_precisions(precisions)
    out = Path(bundle_dir)
    signer = _signer(sign_key, out)  # a bad key is refused before minutes of building
    run = load_run(run_dir, "cpu")
    cal = run.info.get("calibration") or {}
    if cal.get("accept_edge") is None or cal.get("reject_edge") is None:
        raise BundleError(f"{run_dir}: run has no thresholds; run `edgekit calibrate {run_dir} --data DIR` first")
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = _build_into(run, Path(run_dir), tmp, out, target, keys, calib_data, eval_data, allow_degraded,
                               calib_max_tiles, eval_max_images, int8_exclude_stem, int8_reduce_range, trt, cudart, quiet,
                               cal, int8_float_depthwise, int8_float_high_resolution)
        if signer is not None:  # over the manifest just written and read back; before the bundle appears
            from edgekit.bundle.signing import sign_bundle

            sig = sign_bundle(tmp, signer)
            if not quiet:
                print(f"signed manifest.json with key {sig['key_id']} ({sign_key}) -> manifest.sig")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a refused build leaves no half bundle behind
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(out)
    if archive:
        from edgekit.bundle.archive import pack_archive

        arc = pack_archive(out, out.with_name(out.name + ".edgekit"))
        if not quiet:
            print(f"archive written to {arc}")
    if not quiet:
        print(f"bundle written to {out} (id {manifest['bundle_id']}, target {target}, models {', '.join(manifest['models'])})")
    return out


def _signer(sign_key: str | Path | None, out: Path) -> Any:
    """The private key for ``--sign`` (None without it); refused when it lies inside the bundle
    being written (it would be shipped, or deleted with the old bundle)."""
    if sign_key is None:
        return None
    from edgekit.bundle.signing import load_private_key

    k = Path(sign_key).resolve()
    if k == out.resolve() or out.resolve() in k.parents:
        raise ConfigError(f"--sign {sign_key}: the private key lies inside the bundle directory {out}; keep it "
                          "outside (a private key must never travel with a bundle)")
    return load_private_key(k)


def _build_into(run: Any, run_dir: Path, tmp: Path, out: Path, target: str, keys: list[str], calib_data: Any,
                eval_data: Any, allow_degraded: bool, calib_max_tiles: int, eval_max_images: int | None,
                int8_exclude_stem: bool, int8_reduce_range: bool | None, trt: Any, cudart: Any, quiet: bool,
                cal: dict[str, Any], int8_float_depthwise: bool = True,
                int8_float_high_resolution: bool = True) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from edgekit.compile.onnx_export import export_onnx, set_metadata
    from edgekit.compile.quantize import calibration_tiles, convert_fp16, quantize_int8

    bundle_id = uuid.uuid4().hex[:16]
    recipe_text = (run_dir / "recipe.yaml").read_text(encoding="utf-8")
    opset = run.recipe.build.opset
    onnx_path = export_onnx(run.model, run.spec, tmp / "model.onnx", opset=opset)
    meta = {"edgekit.bundle_id": bundle_id, "edgekit.method": run.info["method"]}
    set_metadata(onnx_path, meta)
    parity = check_parity(run, onnx_path, parity_tiles(run))
    if not quiet:
        print(f"exported model.onnx (opset {opset}); torch vs onnxruntime max rel score diff {parity['max_rel_score_diff']:.1e}")
    models: dict[str, dict[str, Any]] = {"fp32": {"file": "model.onnx", "kind": "onnx", "precision": "fp32", "parity": parity}}
    files = ["model.onnx", "calibration.json"]
    build: dict[str, Any] = {"opset": opset, "onnx_version": onnx.__version__, "torch_version": torch.__version__,
                             "host": platform.node(), "machine": platform.machine(), "precisions": keys,
                             "steps_pending": []}
    build["onnxruntime_version"] = onnxruntime.__version__
    if "fp16" in keys:
        info = convert_fp16(onnx_path, tmp / MODEL_FILES["fp16"])
        set_metadata(tmp / MODEL_FILES["fp16"], {**meta, "edgekit.precision": "fp16"})
        models["fp16"] = {"file": MODEL_FILES["fp16"], "kind": "onnx", "precision": "fp16", "conversion": info}
        files.append(MODEL_FILES["fp16"])
        if not quiet:
            print(f"converted {MODEL_FILES['fp16']} ({info['fp32_nodes']} nodes kept fp32)")
    if "int8" in keys:
        from edgekit.train import gather_training_images

        paths = _image_paths(calib_data) if calib_data is not None else gather_training_images(run.info["data"]["dirs"])[0]
        tiles, cinfo = calibration_tiles(paths, run.spec, calib_max_tiles, seed=run.recipe.train.seed)
        cinfo["source"] = str(Path(calib_data).resolve()) if calib_data is not None else "run training images"
        # the Q/DQ layout follows the runtime that will execute it (see quantize.INT8_FLAVORS)
        flavor = "tensorrt" if target == "jetson" else "onnxruntime"
        reduce_range, rr_reason = int8_reduce_range, "given (--int8-reduce-range option)"
        if reduce_range is None and flavor == "tensorrt":
            reduce_range, rr_reason = False, "TensorRT layout: 8-bit weights (int32 accumulation on the GPU)"
        elif reduce_range is None:
            from edgekit.runtime.backends.ort import cpu_int8_dot

            # 7-bit weights cost accuracy (ELPV mono, cse-lite0: int8 AUROC 83.8 with, 89.3 without;
            # fp32 87.8) but are needed on x86 without VNNI; default to what the build host can run
            # and say so (the runtime warns when a bundle lands on a CPU that lacks VNNI)
            dot = cpu_int8_dot()
            reduce_range = dot is not True
            rr_reason = ("build host has VNNI/ARM int8 dot products: 8-bit weights" if dot
                         else "build host lacks VNNI (or unknown): 7-bit weights")
            if not quiet:
                print(f"int8: {rr_reason} (override with --int8-reduce-range / --no-int8-reduce-range)")
        qinfo = quantize_int8(onnx_path, tmp / MODEL_FILES["int8"], tiles, exclude_stem=int8_exclude_stem,
                              progress=not quiet, flavor=flavor, reduce_range=reduce_range,
                              float_depthwise=int8_float_depthwise, float_high_resolution=int8_float_high_resolution)
        qinfo["reduce_range_reason"] = rr_reason
        set_metadata(tmp / MODEL_FILES["int8"], {**meta, "edgekit.precision": "int8"})
        models["int8"] = {"file": MODEL_FILES["int8"], "kind": "onnx", "precision": "int8", "quantization": qinfo,
                          "calibration_data": cinfo}
        build["calibration_data"] = cinfo
        files.append(MODEL_FILES["int8"])
        if not quiet:
            print(f"quantized {MODEL_FILES['int8']} ({flavor} Q/DQ layout) on {cinfo['n_tiles']} tiles from {cinfo['n_images']} images "
                  f"({qinfo['qdq_nodes']['QuantizeLinear']} Q nodes, {len(qinfo['excluded_nodes'])} nodes kept float)")
    thresholds = {k: cal.get(k) for k in ("threshold", "accept_edge", "reject_edge", "source")}
    if len(keys) > 1:
        from edgekit.compile.parity import exact_scoring_reason

        exact = {k: why for k in keys[1:] if (why := exact_scoring_reason(models[k].get("quantization") or {}))}
        for key, why in exact.items():
            if not quiet:
                print(f"{key} gate: scored as the Q/DQ graph's exact arithmetic ({why})")
        gate = _gate(run, tmp, keys[1:], eval_data, thresholds, allow_degraded, eval_max_images, quiet, exact)
        for key in keys[1:]:
            models[key]["accuracy"] = gate["results"][key]
            if "band" in gate["results"][key]:  # its own edges: the runtime uses them (Band.resolve)
                models[key]["band"] = gate["results"][key]["band"]
        build["accuracy_gate"] = {k: v for k, v in gate.items() if k != "results"}
        if gate["degraded"]:
            build["degraded"] = gate["degraded"]
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
        "models": models,
        "files": {f: "" for f in files},
        "thresholds": thresholds,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "build": build,
        "run": {"path": str(run_dir.resolve()), "data_hash": run.info["data"]["hash"], "epochs": run.info.get("epochs_done"),
                "method_facts": run.info.get("method_facts", {}), "train_time_s": run.info.get("train_time_s")},
        "export_info": run.model.export_info(),
    }
    if target == "jetson":
        # the command runs on the Jetson, where this workstation's path does not exist: it names
        # the bundle folder relative to wherever it is copied
        name = shlex.quote(Path(out).name)
        step = {"step": "build-on-device", "command": f"edgekit build {name} --target jetson --engine-only",
                "precisions": ["fp16", *(["int8"] if "int8" in keys else [])]}
        if trt is not None or (_on_jetson() and _tensorrt_importable()):
            write_manifest(tmp, manifest)
            manifest = build_engines_in(tmp, step["precisions"], trt=trt, cudart=cudart, quiet=quiet, staged=False)
        else:
            build["steps_pending"].append(step)
            if not quiet:
                print(f"TensorRT engines must be built on the Jetson: copy the bundle there (e.g. "
                      f"`scp -r {shlex.quote(str(out))} JETSON:`), then in the folder you copied it to run "
                      f"`{step['command']}`")
    write_manifest(tmp, manifest)
    load_bundle(tmp)  # read back exactly as the device will
    return manifest


def build_engines_in(bundle_dir: str | Path, precisions: Sequence[str] | None = None, trt: Any = None,
                     cudart: Any = None, batch_max: int = 8, workspace_mib: int = 1024, quiet: bool = False,
                     staged: bool = True) -> dict[str, Any]:
    """Build TensorRT engines inside an existing bundle and rewrite its manifest (re-hashed).

    ``staged``: build in a copy next to the bundle and swap it in only when engines, timing cache
    and manifest are all written, so a failed or interrupted build never leaves a half-updated
    bundle (the swap is two renames; ``BUNDLE.old`` is removed after).

    Args:
        precisions: engine precisions (fp32/fp16/int8); default: the pending ``build-on-device``
            step's list, else fp16 plus int8 when the bundle has a Q/DQ model.
        trt / cudart: tensorrt and cuda-python runtime modules (tests pass fakes).
    Returns: the new manifest."""
    from edgekit.compile.trt_build import TIMING_CACHE, EngineSpec, build_engine, device_info, import_tensorrt

    trt = trt or import_tensorrt()
    if staged:
        final = Path(bundle_dir).resolve()
        load_bundle(final)  # refuse a broken bundle before copying it
        work = final.with_name(f".{final.name}.building-{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(final, work, symlinks=True)
        try:
            build_engines_in(work, precisions, trt, cudart, batch_max, workspace_mib, quiet, staged=False)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
        return load_bundle(final).manifest
    bundle = load_bundle(bundle_dir)
    manifest = json.loads(json.dumps(bundle.manifest))  # deep copy
    pending = [s for s in manifest["build"].get("steps_pending", []) if s.get("step") == "build-on-device"]
    if precisions is None:
        precisions = pending[0].get("precisions") if pending else ["fp16", *(["int8"] if "int8" in bundle.models else [])]
    dev = device_info(cudart)
    size = int(bundle.preprocess.size)
    engines: dict[str, Any] = {}
    for p in precisions:
        src_key = "int8" if p == "int8" else "fp32"
        if src_key not in bundle.models:
            raise BundleError(f"{bundle.path}: no {src_key} ONNX model to build a TensorRT {p} engine from; "
                              "rebuild the bundle with --precision fp32,int8")
        import onnx

        from edgekit.compile.quantize import scoring_tail

        tail = tuple(scoring_tail(onnx.load(str(bundle.model_path(src_key)), load_external_data=False)))
        spec = EngineSpec(p, bundle.model_path(src_key), bundle.path / ENGINE_FILES[p], size, 1, 1, batch_max,
                          workspace_mib, bundle.path / TIMING_CACHE, fp32_layers=tail)
        info = build_engine(spec, trt)
        info.update(dev)
        manifest["models"][f"trt-{p}"] = {"file": ENGINE_FILES[p], "kind": "tensorrt", **info}
        manifest["files"][ENGINE_FILES[p]] = ""
        engines[p] = info
        if not quiet:
            print(f"built TensorRT {p} engine {ENGINE_FILES[p]} (TensorRT {info['tensorrt_version']}, {dev['gpu']})")
    manifest["files"][TIMING_CACHE] = ""
    manifest["build"]["tensorrt"] = {"version": str(trt.__version__), **dev, "timing_cache": TIMING_CACHE,
                                     "engines": sorted(engines)}
    manifest["build"]["tensorrt_version"] = str(trt.__version__)
    manifest["build"]["steps_pending"] = [s for s in manifest["build"].get("steps_pending", [])
                                          if s.get("step") != "build-on-device"]
    write_manifest(bundle.path, manifest)
    return load_bundle(bundle.path).manifest


def build_cli(model_dir: str, target: str = "cpu", bundle_dir: str | None = None, precision: str = "fp32",
              calib_data: str | None = None, eval_data: str | None = None, allow_degraded: bool = False,
              engine_only: bool = False, archive: bool = False, int8_reduce_range: bool | None = None,
              sign: str | None = None, int8_float_depthwise: bool = True, int8_float_high_resolution: bool = True) -> None:
    """`edgekit build`: a run directory → bundle; with ``--engine-only`` a bundle → its engines.
    ``sign``: private key file; the bundle's manifest is signed (``manifest.sig``)."""
    if engine_only:
        if target != "jetson":
            raise ConfigError("--engine-only builds TensorRT engines: pass --target jetson (on the device)")
        if not (Path(model_dir) / "manifest.json").is_file():
            raise BundleError(f"{model_dir}: --engine-only needs a bundle directory (with manifest.json)")
        precisions = None if precision == "fp32" else [p for p in parse_precisions(precision) if p != "fp32"] or None
        signer = _signer(sign, Path(model_dir))
        had_sig = (Path(model_dir) / "manifest.sig").is_file()
        build_engines_in(model_dir, precisions)
        if signer is not None:
            from edgekit.bundle.signing import sign_bundle

            print(f"signed manifest.json with key {sign_bundle(model_dir, signer)['key_id']} -> manifest.sig")
        elif had_sig:
            print(f"note: the manifest changed, so its old signature was removed; sign it again with "
                  f"`edgekit keys sign {model_dir} --key KEY` (a station with a trust list refuses it unsigned)")
        if archive:
            from edgekit.bundle.archive import pack_archive

            print(f"archive written to {pack_archive(model_dir, Path(model_dir).with_name(Path(model_dir).name + '.edgekit'))}")
        return
    if (Path(model_dir) / "manifest.json").is_file():
        raise BundleError(f"{model_dir} is a bundle; pass the run directory, or --target jetson --engine-only to add engines")
    out = bundle_dir or str(Path(model_dir).with_name(Path(model_dir).name + "-bundle"))
    if bundle_dir is None:
        print(f"no --out given: writing the bundle to {out} (beside the run)")
    build_bundle(model_dir, out, target=target, precisions=parse_precisions(precision), calib_data=calib_data,
                 eval_data=eval_data, allow_degraded=allow_degraded, archive=archive,
                 int8_reduce_range=int8_reduce_range, sign_key=sign, int8_float_depthwise=int8_float_depthwise,
                 int8_float_high_resolution=int8_float_high_resolution)
