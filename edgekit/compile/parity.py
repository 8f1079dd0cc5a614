"""Compare a bundle's models against a reference (FP32 ONNX or the torch checkpoint) on the same
images: the build's accuracy gate and ``edgekit verify`` use the same numbers.

Per model: max abs / rel image-score difference, Spearman rank correlation of image scores,
image AUROC when labels are known, and how many accept/review/reject decisions flip under the
bundle's band."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import BundleError, DataError

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Images cut into tiles, scored by every model the same way.

    Args:
        tiles: (T, S, S, 3) uint8.
        image_of_tile: (T,) int index of the image each tile came from (sorted ascending).
        labels: (I,) int 0/1 per image, or None when the images are unlabelled.
        names: I image file names.
        source: where the images came from (for reports).
    """

    tiles: np.ndarray
    image_of_tile: np.ndarray
    labels: np.ndarray | None
    names: list[str]
    source: str

    @property
    def n_images(self) -> int:
        return len(self.names)

    def image_scores(self, tile_scores: np.ndarray) -> np.ndarray:
        """(T,) tile scores → (I,) image scores (max over each image's tiles, as on the line)."""
        starts = np.flatnonzero(np.r_[True, self.image_of_tile[1:] != self.image_of_tile[:-1]])
        return np.maximum.reduceat(tile_scores.astype(np.float64), starts).astype(np.float32)


def load_eval_set(paths: Sequence[Path], spec: Any, labels: Sequence[int] | None = None, source: str = "",
                  max_images: int | None = None, seed: int = 0) -> EvalSet:
    """Decode and tile ``paths`` (unreadable files skipped with a warning).

    Args:
        labels: 0/1 per path, or None.
        max_images: keep a seeded, class-stratified subset of this many images (None = all)."""
    from edgekit.data.images import read_image
    from edgekit.data.preprocess import make_tiles

    idx = np.arange(len(paths))
    if max_images is not None and len(paths) > max_images:
        rng = np.random.default_rng(seed)
        if labels is not None:
            lab = np.asarray(labels)
            keep = []
            for c in (0, 1):
                members = idx[lab == c]
                k = round(max_images * len(members) / len(paths))
                keep.extend(rng.choice(members, size=min(len(members), max(k, 1)), replace=False).tolist())
            idx = np.sort(np.asarray(keep, dtype=int))
        else:
            idx = np.sort(rng.choice(idx, size=max_images, replace=False))
    tiles, owner, names, kept_labels = [], [], [], []
    for i in idx:
        p = Path(paths[int(i)])
        try:
            t, _ = make_tiles(read_image(p), spec)
        except DataError as exc:
            log.warning("skipping %s", exc)
            continue
        owner.extend([len(names)] * len(t))
        tiles.append(t)
        names.append(p.name)
        if labels is not None:
            kept_labels.append(int(labels[int(i)]))
    if not tiles:
        raise DataError(f"{source or 'evaluation set'}: no readable images; pass a folder with images")
    return EvalSet(np.concatenate(tiles), np.asarray(owner, dtype=np.int64),
                   np.asarray(kept_labels, dtype=np.int64) if labels is not None else None, names, source)


def eval_set_from_dir(data_dir: str | Path, spec: Any, max_images: int | None = None) -> EvalSet:
    """A labelled dataset (MVTec layout with test/) → its test images with labels; a plain folder
    of images → unlabelled."""
    from edgekit.data.dataset import list_images, scan_dataset

    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: data folder not found; pass a dataset (with test/) or a folder of images")
    if (d / "test").is_dir():
        idx = scan_dataset(d)
        return load_eval_set([s.path for s in idx.test], spec, [s.label for s in idx.test], str(d), max_images)
    paths = list_images(d)
    if not paths:
        raise DataError(f"{d}: no images found; pass a dataset (with test/) or a folder of images")
    return load_eval_set(paths, spec, None, str(d), max_images)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 for fewer than 2 or constant inputs."""
    from edgekit.evaluate.metrics import average_ranks

    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size < 2:
        return 1.0
    ra, rb = average_ranks(a), average_ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def decisions(scores: np.ndarray, accept_edge: float, reject_edge: float) -> np.ndarray:
    """(N,) scores → (N,) int8 decisions: 0 accept, 1 review, 2 reject (the manifest's band rule)."""
    s = np.asarray(scores)
    return np.where(s < accept_edge, 0, np.where(s >= reject_edge, 2, 1)).astype(np.int8)


def compare(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None, band: dict[str, Any] | None) -> dict[str, Any]:
    """Image scores of one model vs the reference's.

    Args:
        ref, test: (I,) float image scores.
        labels: (I,) 0/1 or None.
        band: manifest thresholds (accept_edge/reject_edge) or None.
    Returns: max_abs_diff, max_rel_diff, spearman, auroc (None without labels), flips."""
    from edgekit.evaluate.metrics import image_auroc

    diff = np.abs(test.astype(np.float64) - ref.astype(np.float64))
    out: dict[str, Any] = {
        "n_images": int(ref.size),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0)),
        "spearman": spearman(ref, test),
        "auroc": image_auroc(labels, test) if labels is not None else None,
    }
    if band and band.get("accept_edge") is not None and band.get("reject_edge") is not None:
        d0 = decisions(ref, band["accept_edge"], band["reject_edge"])
        d1 = decisions(test, band["accept_edge"], band["reject_edge"])
        out["decision_flips"] = int(np.sum(d0 != d1))
        out["flips_accept_reject"] = int(np.sum(np.abs(d0.astype(int) - d1.astype(int)) == 2))
    return out


def own_band(ref: np.ndarray, test: np.ndarray, band: dict[str, Any], good: np.ndarray,
             provisional: bool) -> dict[str, Any]:
    """A precision's own accept/reject edges, recalibrated on the same held-out images.

    ``provisional`` (the FP32 band is the max held-out good score): the same rule on this
    precision's scores of the good images. Otherwise (a rate-based band from ``edgekit
    calibrate``): FP32's edges mapped through a least-squares line of this precision's scores on
    FP32's (the two are near-linear where the gate passes spearman)."""
    a, r = float(band["accept_edge"]), float(band["reject_edge"])
    if provisional and good.any():
        top = float(np.max(test[good]))
        return {"accept_edge": top + (a - float(np.max(ref[good]))), "reject_edge": top + (r - float(np.max(ref[good]))),
                "rule": "max held-out good score, on this precision's scores"}
    x, y = ref.astype(np.float64), test.astype(np.float64)
    slope, icpt = (np.polyfit(x, y, 1) if np.ptp(x) > 0 else (1.0, float(np.mean(y - x))))
    if not np.isfinite(slope) or slope <= 0:
        slope, icpt = 1.0, float(np.median(y - x))
    return {"accept_edge": float(slope * a + icpt), "reject_edge": float(slope * r + icpt),
            "rule": f"fp32 edges through the line {slope:.4g}·s + {icpt:.4g} fitted on the held-out images"}


def decision_check(ref: np.ndarray, test: np.ndarray, labels: np.ndarray | None, band: dict[str, Any],
                   own: dict[str, Any]) -> dict[str, Any]:
    """Decisions of FP32 at the bundle band vs this precision at the shared band and at its own.
    ``harmful``: at its own band, good images FP32 accepts that it rejects, plus defects FP32
    rejects that it accepts (what the line would do differently)."""
    d_ref = decisions(ref, band["accept_edge"], band["reject_edge"])
    d_shared = decisions(test, band["accept_edge"], band["reject_edge"])
    d_own = decisions(test, own["accept_edge"], own["reject_edge"])
    good = np.ones(ref.shape, bool) if labels is None else labels == 0
    new_fr = int(np.sum(good & (d_ref == 0) & (d_own == 2)))
    new_fa = int(np.sum(~good & (d_ref == 2) & (d_own == 0))) if labels is not None else 0
    harm = new_fr + new_fa
    return {"n_good": int(good.sum()), "n_defect": int((~good).sum()),
            "new_false_rejects": new_fr, "new_false_accepts": new_fa,
            "flips_shared_band": int(np.sum(d_ref != d_shared)), "flips_own_band": int(np.sum(d_ref != d_own)),
            "harmful_flips_own_band": harm,
            "false_rejects": {"fp32": int(np.sum(good & (d_ref == 2))), "shared_band": int(np.sum(good & (d_shared == 2))),
                              "own_band": int(np.sum(good & (d_own == 2)))}}


def exact_scoring_reason(qinfo: dict[str, Any], int8_dot: bool | None = None) -> str | None:
    """Why an INT8 model must be scored on this host as its graph's exact arithmetic (the build's
    gate, ``edgekit verify``), or None.

    With 8-bit weights (the TensorRT layout, or ``--no-int8-reduce-range``) onnxruntime's u8·s8
    kernels on an x86 host without VNNI saturate their int16 pair sums: the host would measure its
    own overflow, not the target's int32 arithmetic (ELPV mono, rd-mem-lite0, TensorRT layout:
    0.813 in onnxruntime here, 0.931 exact, FP32 0.932; benchmarks/README.md, 2026-12-04 late)."""
    if qinfo.get("reduce_range") is not False:
        return None
    if int8_dot is None:
        from edgekit.runtime.backends.ort import cpu_int8_dot

        int8_dot = cpu_int8_dot()
    if int8_dot is True:
        return None
    target = "TensorRT on the Jetson" if qinfo.get("flavor") == "tensorrt" else "a CPU with VNNI"
    cpu = "this host has no VNNI" if int8_dot is False else "this host's int8 dot products are unknown"
    return f"8-bit weights, and {cpu}: its int8 kernels would saturate; {target} accumulates in int32"


def scored_as(exact_reason: str | None) -> str:
    """How a model was scored, for the manifest and ``verify`` (see ``exact_scoring_reason``)."""
    if exact_reason:
        return f"the Q/DQ graph's exact arithmetic (onnxruntime graph optimisations off): {exact_reason}"
    return "onnxruntime on this host, as it runs here"


class OnnxModel:
    """One ONNX file in onnxruntime (CPU), scoring tiles in batches.

    Args:
        exact: run the graph as written (graph optimisations off: every DequantizeLinear → float
            op → QuantizeLinear computed in float, i.e. int32-accumulation arithmetic) instead of
            onnxruntime's fused integer kernels. For an INT8 model with 8-bit weights on a host
            without VNNI, whose kernels saturate: what a Jetson's TensorRT or a VNNI CPU computes.
    """

    def __init__(self, path: str | Path, threads: int = 0, batch: int = 8, exact: bool = False) -> None:
        import onnxruntime as ort

        from edgekit.runtime.backends.ort import ort_session, session_options

        self.path = Path(path)
        self.batch = batch
        self.exact = exact
        so = session_options(threads)
        if exact:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort_session(path, options=so)
        except Exception as exc:  # onnxruntime's own exception types
            raise BundleError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]}); rebuild the bundle") from None

    def score_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """(T, S, S, 3) uint8 → (T,) float32 tile scores."""
        out = [self.session.run(["score"], {"image": np.ascontiguousarray(tiles[i : i + self.batch])})[0]
               for i in range(0, len(tiles), self.batch)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), np.float32)


def accuracy_gate(results: dict[str, dict[str, Any]], ref_auroc: float | None, tolerance_pt: float,
                  allow_degraded: bool) -> list[str]:
    """Refuse a precision whose image AUROC is more than ``tolerance_pt`` points below FP32.

    Args:
        results: precision → ``compare`` output.
        ref_auroc: FP32 AUROC (None without labels: then only rank correlation is reported).
    Returns: warning lines for precisions kept under ``allow_degraded`` (recorded in the manifest).
    Raises: BundleError naming the precision, the drop and ``--allow-degraded``."""
    warnings: list[str] = []
    for key, r in results.items():
        if ref_auroc is None or r.get("auroc") is None:
            continue
        drop_pt = (ref_auroc - r["auroc"]) * 100.0
        r["auroc_drop_pt"] = drop_pt
        if drop_pt > tolerance_pt:
            msg = (f"{key}: image AUROC {r['auroc'] * 100:.2f} is {drop_pt:.2f} pt below fp32 ({ref_auroc * 100:.2f}); "
                   f"tolerance {tolerance_pt:g} pt (recipe build.accuracy_tolerance_pt)")
            if not allow_degraded:
                raise BundleError(f"{msg}; drop {key} from --precision, or pass --allow-degraded to keep it anyway")
            warnings.append(msg + "; kept because of --allow-degraded")
    return warnings


class TorchRunModel:
    """The training checkpoint in torch (the reference when it is available)."""

    def __init__(self, run_dir: str | Path, batch: int = 8) -> None:
        from edgekit.train import load_run

        self.run = load_run(run_dir, "cpu")
        self.batch = batch

    def score_tiles(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        from edgekit.train import score_tiles_torch

        return score_tiles_torch(self.run.model, tiles, self.run.spec, self.batch, torch.device("cpu"))[1]


class EngineModel:
    """A bundle's TensorRT engine through the runtime's backend (needs tensorrt + a GPU)."""

    def __init__(self, bundle: Any, key: str) -> None:
        from edgekit.runtime.backends.trt import TrtBackend, TrtBackendConfig

        self.backend = TrtBackend(TrtBackendConfig(precision=bundle.models[key]["precision"], maps=False))
        self.backend.load(bundle)

    def score_tiles(self, tiles: np.ndarray) -> np.ndarray:
        from edgekit.runtime.types import Batch, Frame

        frame = Frame(part_id=0, source_id="verify", t_capture_ns=0, image=None)
        return np.asarray(self.backend.infer(Batch(frame, np.ascontiguousarray(tiles), {})).tile_scores, np.float32)


def verify_bundle(bundle_dir: str | Path, data_dir: str | Path, max_images: int | None = None,
                  use_torch: bool = True, threads: int = 0) -> dict[str, Any]:
    """Score ``data_dir`` with every model of the bundle and compare with the reference.

    Reference: the torch checkpoint when the run named in the manifest is here and torch
    imports, else the FP32 ONNX model. Returns {"reference", "models": {key: compare(...)},
    "skipped": [...], ...}."""
    import importlib.util

    from edgekit.bundle.io import load_bundle
    from edgekit.evaluate.metrics import image_auroc

    bundle = load_bundle(bundle_dir)
    es = eval_set_from_dir(data_dir, bundle.preprocess, max_images)
    skipped: list[str] = []
    run_path = Path(bundle.manifest.get("run", {}).get("path") or "/nonexistent")
    ref_name = "onnx-fp32"
    ref_model: Any = None
    if use_torch and importlib.util.find_spec("torch") is not None and (run_path / "run.json").is_file():
        ref_model, ref_name = TorchRunModel(run_path), "torch"
    elif use_torch:
        skipped.append("torch: the training run named in the manifest is not here or torch is missing; "
                       "reference is the FP32 ONNX model")
    if ref_model is None:
        ref_model = OnnxModel(bundle.model_path("fp32"), threads)
    ref = es.image_scores(ref_model.score_tiles(es.tiles))
    results: dict[str, Any] = {}
    for key, entry in bundle.models.items():
        if ref_name == "onnx-fp32" and key == "fp32":
            continue
        why = None
        if entry.get("kind") == "onnx":
            why = exact_scoring_reason(entry.get("quantization") or {})
            model: Any = OnnxModel(bundle.model_path(key), threads, exact=why is not None)
        elif entry.get("kind") == "tensorrt":
            if importlib.util.find_spec("tensorrt") is None:
                skipped.append(f"{key}: tensorrt is not installed here (run verify on the device)")
                continue
            model = EngineModel(bundle, key)
        else:
            skipped.append(f"{key}: unknown model kind {entry.get('kind')!r}")
            continue
        results[key] = compare(ref, es.image_scores(model.score_tiles(es.tiles)), es.labels, bundle.thresholds)
        if entry.get("kind") == "onnx":
            results[key]["scored_as"] = scored_as(why)
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "data": es.source, "n_images": es.n_images,
            "n_tiles": int(len(es.tiles)), "labelled": es.labels is not None, "reference": ref_name,
            "reference_auroc": image_auroc(es.labels, ref) if es.labels is not None else None,
            "band": {k: bundle.thresholds.get(k) for k in ("accept_edge", "reject_edge")},
            "models": results, "skipped": skipped}


def format_verify(result: dict[str, Any]) -> str:
    """Human-readable table of ``verify_bundle`` output."""
    ra = result["reference_auroc"]
    lines = [f"{result['bundle']} on {result['n_images']} images ({result['data']}); reference {result['reference']}"
             + (f" AUROC {ra * 100:.2f}" if ra is not None else ""),
             f"{'model':<12}{'max abs diff':>14}{'max rel diff':>14}{'spearman':>10}{'AUROC':>8}{'flips':>7}"]
    for key, r in result["models"].items():
        auroc = f"{r['auroc'] * 100:.2f}" if r.get("auroc") is not None else "-"
        lines.append(f"{key:<12}{r['max_abs_diff']:>14.3g}{r['max_rel_diff']:>14.3g}{r['spearman']:>10.4f}{auroc:>8}"
                     f"{r.get('decision_flips', '-'):>7}")
    lines.extend(f"{key}: scored as {r['scored_as']}" for key, r in result["models"].items()
                 if str(r.get("scored_as", "")).startswith("the Q/DQ graph's exact"))
    lines.extend(f"skipped {s}" for s in result["skipped"])
    return "\n".join(lines)
