"""anomalib side of benchmarks/compare.py. Runs in anomalib's own venv (never edgekit's): no
edgekit import here.

    /work/anomalib-venv/bin/python benchmarks/anomalib_side.py --tiles work/tiles.npz \
        --weights tf_efficientnet_lite0.timm.pth --out work/anomalib --threads 2 \
        --models patchcore,padim,stfpm,reverse_distillation [--feature-ref work/features_ref.npz]

Input ``tiles.npz``: ``train`` (N, S, S, 3) uint8 good tiles, ``test`` (T, S, S, 3) uint8 tiles
(decoded and tiled by edgekit, so both sides see identical pixels), ``mean``/``std`` (RGB, 0..1
scale: the normalisation the lite0 weights were trained with).

anomalib's torch models are used directly (model hubs are offline, so no Engine / datamodule):
each is built with ``tf_efficientnet_lite0`` and ``pre_trained=False``, then the offline weights
(a timm-format state dict written by edgekit) are loaded into its ``TimmFeatureExtractor``. Every
model is wrapped with the edgekit I/O contract (uint8 NHWC ``image`` → ``anomaly_map``
(N, 1, S, S), ``score`` (N,)) so both sides are timed and exported the same way.

Per model writes ``OUT/<model>.npz`` (``scores`` (T,), ``maps`` (T, S, S) float32 from torch),
``OUT/<model>.onnx`` and an entry in ``OUT/summary.json`` (train time, eager latency, config).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # fail fast instead of retrying an unreachable hub

import numpy as np
import torch
from torch import nn

BACKBONE = "tf_efficientnet_lite0"
# lite0 feature stage → timm module name (what anomalib's layer names refer to)
STAGE_MODULE = {0: "blocks.0", 1: "blocks.1", 2: "blocks.2", 3: "blocks.4", 4: "blocks.6"}
# anomalib's default layers, translated stride for stride from ResNet (layer1 = stride 4 ...)
LAYERS = {
    "patchcore": ["blocks.2", "blocks.4"],  # layer2, layer3
    "padim": ["blocks.1", "blocks.2", "blocks.4"],  # layer1..3
    "stfpm": ["blocks.1", "blocks.2", "blocks.4"],
    "reverse_distillation": ["blocks.1", "blocks.2", "blocks.4"],
}


def latency_stats(times_s: list[float]) -> dict[str, float]:
    t = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {"median_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
            "mean_ms": round(float(t.mean()), 3), "n": int(t.size)}


def time_callable(fn: Any, warmup: int, iters: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return latency_stats(times)


@contextlib.contextmanager
def offline_timm() -> Any:
    """Force ``pretrained=False`` in every timm.create_model call anomalib makes (STFPM and RD
    hard-code a pretrained teacher; the hub is unreachable). The weights are loaded afterwards."""
    import timm

    orig = timm.create_model

    def create(*a: Any, **kw: Any) -> nn.Module:
        kw["pretrained"] = False
        return orig(*a, **kw)

    timm.create_model = create
    try:
        yield
    finally:
        timm.create_model = orig


def load_backbone(extractor: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load the timm-format lite0 state dict into an anomalib ``TimmFeatureExtractor`` strictly
    (every tensor of its timm features model must come from the file)."""
    body = extractor.feature_extractor
    own = body.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"weights file lacks {len(missing)} extractor keys, e.g. {missing[:3]}")
    body.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)


def feature_check(state: dict[str, torch.Tensor], ref_path: Path) -> dict[str, Any]:
    """anomalib's extractor vs edgekit's backbone on the same input: max abs difference per stage."""
    from anomalib.models.components import TimmFeatureExtractor

    ref = np.load(ref_path)
    stages = [int(i) for i in ref["layers"]]
    with offline_timm():
        fe = TimmFeatureExtractor(BACKBONE, layers=[STAGE_MODULE[i] for i in stages], pre_trained=False).eval()
    load_backbone(fe, state)
    with torch.no_grad():
        out = fe(torch.from_numpy(ref["x"]))
    diffs = {}
    ok = True
    for i in stages:
        a = out[STAGE_MODULE[i]].numpy()
        b = ref[f"f{i}"]
        diffs[f"stage{i}"] = float(np.abs(a - b).max()) if a.shape == b.shape else f"shape {a.shape} vs {b.shape}"
        ok = ok and a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-4))
    return {"allclose": ok, "max_abs_diff": diffs, "rtol": 1e-4, "atol": 1e-4}


class ContractWrapper(nn.Module):
    """uint8 NHWC → normalised NCHW → anomalib torch model → (anomaly_map (N,1,S,S), score (N,))."""

    def __init__(self, model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (image.permute(0, 3, 1, 2).to(torch.float32) - self.mean) * self.inv_std
        out = self.model(x)
        amap = out.anomaly_map
        n, s = x.shape[0], x.shape[-1]
        return amap.reshape(n, 1, s, s), out.pred_score.reshape(n)


def batches(tiles: np.ndarray, size: int, shuffle: bool = False, rng: np.random.Generator | None = None) -> Any:
    order = rng.permutation(len(tiles)) if shuffle and rng is not None else np.arange(len(tiles))
    for i in range(0, len(tiles), size):
        yield torch.from_numpy(np.ascontiguousarray(tiles[order[i : i + size]]))


def normalise(u8: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = u8.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)


# ----------------------------------------------------------------------------- models
def build_patchcore(args: argparse.Namespace, state: dict, train: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[nn.Module, dict]:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    with offline_timm():
        model = PatchcoreModel(layers=LAYERS["patchcore"], backbone=BACKBONE, pre_trained=False, num_neighbors=9)
    load_backbone(model.feature_extractor, state)
    model.train()  # training mode: forward appends patch embeddings to the memory bank
    embeddings = []
    with torch.no_grad():
        for b in batches(train, args.batch):
            e = model(normalise(b, mean, std))
            embeddings.append(e)
    n_patches = int(model.memory_bank.shape[0]) if model.memory_bank.numel() else int(sum(len(e) for e in embeddings))
    if model.memory_bank.numel() == 0:  # older anomalib: the caller keeps the embeddings
        model.memory_bank = torch.vstack(embeddings)
    t0 = time.perf_counter()
    model.subsample_embedding(args.coreset_ratio)
    coreset_s = time.perf_counter() - t0
    model.eval()
    return model, {"layers": LAYERS["patchcore"], "num_neighbors": 9, "coreset_ratio": args.coreset_ratio,
                   "patches": n_patches, "memory_bank": list(model.memory_bank.shape),
                   "coreset_s": round(coreset_s, 1)}


def build_padim(args: argparse.Namespace, state: dict, train: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[nn.Module, dict]:
    from anomalib.models.image.padim.torch_model import PadimModel

    with offline_timm():
        model = PadimModel(backbone=BACKBONE, layers=LAYERS["padim"], pre_trained=False, n_features=args.padim_features)
    load_backbone(model.feature_extractor, state)
    model.train()  # training mode: forward appends embeddings to model.memory_bank
    with torch.no_grad():
        for b in batches(train, args.batch):
            model(normalise(b, mean, std))
    model.fit()  # per-position Gaussian (mean, inverse covariance); clears the memory bank
    model.eval()
    return model, {"layers": LAYERS["padim"], "n_features": args.padim_features}


def _train_student(args: argparse.Namespace, model: nn.Module, params: Any, loss_fn: Any, train: np.ndarray,
                   mean: np.ndarray, std: np.ndarray, opt: torch.optim.Optimizer) -> list[float]:
    rng = np.random.default_rng(0)
    history = []
    for _ in range(args.epochs):
        model.train()
        total, n = 0.0, 0
        for b in batches(train, args.batch, shuffle=True, rng=rng):
            out = model(normalise(b, mean, std))
            loss = loss_fn(*out) if isinstance(out, tuple) else loss_fn(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
        history.append(round(total / max(1, n), 5))
    model.eval()
    return history


def build_stfpm(args: argparse.Namespace, state: dict, train: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[nn.Module, dict]:
    from anomalib.models.image.stfpm.loss import STFPMLoss
    from anomalib.models.image.stfpm.torch_model import STFPMModel

    with offline_timm():
        model = STFPMModel(layers=LAYERS["stfpm"], backbone=BACKBONE)
    load_backbone(model.teacher_model, state)  # student stays randomly initialised (as in STFPM)
    params = [p for p in model.student_model.parameters() if p.requires_grad]
    # anomalib's Stfpm.configure_optimizers: SGD lr 0.4, momentum 0.9, weight decay 1e-3
    opt = torch.optim.SGD(params, lr=0.4, momentum=0.9, dampening=0.0, weight_decay=0.001)
    loss = STFPMLoss()
    history = _train_student(args, model, params, lambda t, s: loss(t, s), train, mean, std, opt)
    return model, {"layers": LAYERS["stfpm"], "epochs": args.epochs, "batch": args.batch, "optimizer": "SGD lr 0.4",
                   "loss_history": history}


def build_reverse_distillation(args: argparse.Namespace, state: dict, train: np.ndarray, mean: np.ndarray,
                               std: np.ndarray) -> tuple[nn.Module, dict]:
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    size = int(train.shape[1])
    with offline_timm():
        model = ReverseDistillationModel(backbone=BACKBONE, input_size=(size, size), layers=LAYERS["reverse_distillation"],
                                         anomaly_map_mode=AnomalyMapGenerationMode.ADD, pre_trained=False)
    load_backbone(model.encoder, state)
    params = [*model.decoder.parameters(), *model.bottleneck.parameters()]
    # anomalib's ReverseDistillation.configure_optimizers: Adam lr 0.005, betas (0.5, 0.99)
    opt = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.99))
    loss = ReverseDistillationLoss()
    history = _train_student(args, model, params, lambda e, d: loss(e, d), train, mean, std, opt)
    return model, {"layers": LAYERS["reverse_distillation"], "epochs": args.epochs, "loss_history": history}


BUILDERS = {"patchcore": build_patchcore, "padim": build_padim, "stfpm": build_stfpm,
            "reverse_distillation": build_reverse_distillation}


def run_model(name: str, args: argparse.Namespace, state: dict, data: Any) -> dict[str, Any]:
    train, test, mean, std = data["train"], data["test"], data["mean"], data["std"]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, config = BUILDERS[name](args, state, train, mean, std)
    train_s = time.perf_counter() - t0
    wrapper = ContractWrapper(model.eval(), mean, std).eval()
    x = torch.from_numpy(np.ascontiguousarray(test[:1]))
    info: dict[str, Any] = {"train_time_s": round(train_s, 1), "config": config, "epochs": config.get("epochs"),
                            "notes": []}
    onnx_path = args.out / f"{name}.onnx"
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, (x,), str(onnx_path), input_names=["image"],
                              output_names=["anomaly_map", "score"],
                              dynamic_axes={"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
                              opset_version=17, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # record why; the torch numbers still count
        onnx_path.unlink(missing_ok=True)
        info["onnx_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    t0 = time.perf_counter()
    if onnx_path.is_file():
        # score the test set with the exported model (like edgekit's side, which evaluates its
        # bundle in onnxruntime): much faster than torch eager on a loaded CPU; parity below
        maps, scores = score_onnx(onnx_path, test, args.threads, args.batch)
        with torch.inference_mode():
            m_ref, s_ref = wrapper(torch.from_numpy(np.ascontiguousarray(test[: args.batch])))
        scale = float(s_ref.abs().max()) or 1.0
        info["torch_vs_onnx"] = {"n_tiles": int(len(s_ref)),
                                 "max_rel_score_diff": float((torch.from_numpy(scores[: len(s_ref)]) - s_ref).abs().max() / scale),
                                 "max_abs_map_diff": float((torch.from_numpy(maps[: len(s_ref)]) - m_ref[:, 0]).abs().max())}
        info["scored_with"] = "onnxruntime (exported model)"
    else:
        maps_l, scores_l = [], []
        with torch.inference_mode():
            for b in batches(test, args.batch):
                m, s = wrapper(b)
                maps_l.append(m[:, 0].float().numpy())
                scores_l.append(s.float().numpy())
        maps, scores = np.concatenate(maps_l), np.concatenate(scores_l)
        info["scored_with"] = "torch eager"
    info["test_time_s"] = round(time.perf_counter() - t0, 1)
    np.savez(args.out / f"{name}.npz", maps=maps.astype(np.float32), scores=scores.astype(np.float32))
    with torch.inference_mode():
        info["eager"] = time_callable(lambda: wrapper(x), min(args.warmup, 2), args.eager_iters)
    return info


def score_onnx(path: Path, tiles: np.ndarray, threads: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, S, S, 3) uint8 → maps (T, S, S) float32, scores (T,) float32 with onnxruntime."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    maps, scores = [], []
    for i in range(0, len(tiles), batch):
        m, s = sess.run(["anomaly_map", "score"], {"image": np.ascontiguousarray(tiles[i : i + batch])})
        maps.append(m[:, 0])
        scores.append(s.reshape(-1))
    return np.concatenate(maps), np.concatenate(scores)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", required=True, type=Path)
    p.add_argument("--weights", required=True, type=Path, help="timm-format tf_efficientnet_lite0 state dict")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", default="patchcore,padim,stfpm,reverse_distillation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10, help="STFPM / RD training epochs")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--coreset-ratio", type=float, default=0.01)
    p.add_argument("--padim-features", type=int, default=100)
    p.add_argument("--feature-ref", type=Path, default=None)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--eager-iters", type=int, default=20, help="timed torch-eager calls (batch 1)")
    p.add_argument("--resume", action="store_true", help="Keep models already in summary.json.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if args.resume and summary_path.is_file() else {}
    summary.setdefault("models", {})
    import anomalib

    summary["anomalib_version"] = anomalib.__version__
    summary["torch_version"] = torch.__version__
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    if args.feature_ref is not None:
        summary["feature_check"] = feature_check(state, args.feature_ref)
        print(f"feature check: {summary['feature_check']}", flush=True)
        if not summary["feature_check"]["allclose"]:
            raise SystemExit("anomalib's extractor does not reproduce edgekit's backbone features; refusing to compare")
    data = dict(np.load(args.tiles))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if args.resume and name in summary["models"] and (args.out / f"{name}.npz").is_file():
            print(f"{name}: kept from an earlier run", flush=True)
            continue
        print(f"{name}: building on {len(data['train'])} train tiles", flush=True)
        try:
            summary["models"][name] = run_model(name, args, state, data)
            print(f"{name}: {json.dumps(summary['models'][name], default=str)[:400]}", flush=True)
        except Exception as exc:  # e.g. RD has no decoder for this backbone: record, go on
            traceback.print_exc()
            summary["models"][name] = {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
    summary_path.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
