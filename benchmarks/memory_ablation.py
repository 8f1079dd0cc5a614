"""rd-lite0 vs rd-lite0 + patch memory (recipe ``score.memory``) at several bank sizes, same
student weights, side by side in one run (issue [I]).

    python -m benchmarks.memory_ablation --data DIR --out results/mem [--max-train 300]
        [--epochs 10] [--sizes 1024,2048,4096] [--fit coreset] [--threads 2]

One rd-lite0 run is trained (seeded); every memory variant loads *its* weights, fits its bank
and the per-position statistics (of all maps, memory included) on the same training tiles, and
is exported to FP32 ONNX. Metrics: ``edgekit.evaluate.metrics.compute_metrics`` on the ONNX
outputs stitched like ``edgekit evaluate``; latency: onnxruntime batch 1, ``--threads``
intra-op threads, interleaved rounds (``benchmarks.compare.ort_latency_interleaved``). A
"memory only" row (distillation maps weighted 0) shows what the memory term sees by itself.
Writes ``OUT/<dataset>/results.json`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _score_onnx(path: Path, tiles: np.ndarray, threads: int, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    from benchmarks.compare import ort_session

    sess = ort_session(path, threads)
    maps, scores = [], []
    for i in range(0, len(tiles), batch):
        m, s = sess.run(["anomaly_map", "score"], {"image": np.ascontiguousarray(tiles[i : i + batch])})
        maps.append(m[:, 0])
        scores.append(s)
    return np.concatenate(maps), np.concatenate(scores)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parent.parent / "recipes" / "rd-lite0.yaml")
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--fit", default="coreset", choices=["coreset", "kmeans"])
    ap.add_argument("--patches-per-tile", type=int, default=128)
    ap.add_argument("--weight", type=float, default=1.0, help="score.memory.weight of the memory map")
    ap.add_argument("--memory-only-size", type=int, default=None, help="bank size of the memory-only row (default: middle)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--reuse-run", type=Path, default=None)
    args = ap.parse_args(argv)

    from benchmarks.compare import _pin_threads

    _pin_threads(args.threads)
    import torch
    import yaml

    from benchmarks.compare import (
        load_test_set,
        metrics_from_tiles,
        ort_latency_interleaved,
        prepare_subset,
        summarise,
    )
    from edgekit.compile.onnx_export import export_onnx
    from edgekit.config.recipe import recipe_from_dict
    from edgekit.train import (
        _batches,
        build_model,
        load_run,
        load_tiles,
        normalise,
        train_run,
        training_split,
    )

    data = args.data.resolve()
    out = args.out / data.name
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    sub = prepare_subset(data, work / "data", args.max_train, None, seed=args.seed) if args.max_train else data
    run_dir = args.reuse_run or work / "run-rd"
    t0 = time.perf_counter()
    if args.reuse_run is None:
        train_run(args.recipe, sub, run_dir, epochs=args.epochs, seed=args.seed, quiet=True)
    train_s = time.perf_counter() - t0
    base = load_run(run_dir)
    spec, info = base.spec, base.info
    train_paths, _, _ = training_split(info["data"]["dirs"], base.recipe.train)
    train_tiles, _ = load_tiles(train_paths, spec, "decode train")
    ts = load_test_set(sub, spec)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)["model"]
    models: dict[str, Path] = {"rd": export_onnx(base.model, spec, work / "rd.onnx")}
    rows: dict[str, dict[str, Any]] = {"rd": {"bank": 0, "fit_s": 0.0}}
    sizes = [int(s) for s in args.sizes.split(",") if s]
    mem_only = args.memory_only_size or sizes[len(sizes) // 2]
    variants = [(f"rd-mem{s}", s, False) for s in sizes] + [(f"mem-only{mem_only}", mem_only, True)]
    bs = base.recipe.train.batch_size
    for name, size, only in variants:
        d = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        d = copy.deepcopy(d)
        d["score"]["memory"] = {"size": size, "fit": args.fit, "patches_per_tile": args.patches_per_tile,
                              "weight": args.weight}
        recipe = recipe_from_dict(d, name)
        model = build_model(recipe, weights="none")
        # the student's weights; the scorer's statistics (3 maps there, 4 here) are refitted below
        weights = {k: v for k, v in state.items() if not k.startswith("scorer.")}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected and all(k.startswith(("memory.", "scorer.")) for k in missing), (missing, unexpected)
        model.eval()
        t1 = time.perf_counter()
        facts = model.after_training(normalise(b, spec) for b in _batches(train_tiles, bs, False, None))
        fit_s = time.perf_counter() - t1
        if only:
            model.scorer.weights = [0.0] * (model.scorer.n_layers - 1) + [1.0]
        model.fit_score_normalisation((normalise(b, spec) for b in _batches(train_tiles, bs, False, None)),
                                      recipe.score.layer_norm)
        models[name] = export_onnx(model, spec, work / f"{name}.onnx")
        rows[name] = {"bank": facts["memory"]["size"], "fit_s": round(fit_s, 1), "memory": facts["memory"]}
        print(f"{name}: bank {facts['memory']['size']} fitted in {fit_s:.1f} s", flush=True)
    for name, path in models.items():
        t1 = time.perf_counter()
        maps, scores = _score_onnx(path, ts.tiles, args.threads)
        rows[name]["metrics"] = summarise(metrics_from_tiles(ts, maps, scores, name))
        rows[name]["score_s"] = round(time.perf_counter() - t1, 1)
        print(f"{name}: {rows[name]['metrics']}", flush=True)
    lat = ort_latency_interleaved(models, ts.tiles[0], args.threads, warmup=5, iters=args.iters)
    for name in rows:
        rows[name]["ort_fp32_b1"] = lat[name]
    res = {"dataset": str(data), "subset": str(sub), "n_train_tiles": int(len(train_tiles)),
           "n_test_images": len(ts.images), "epochs": info["epochs_done"], "seed": args.seed,
           "train_s": round(train_s, 1), "fit": args.fit, "threads": args.threads, "rows": rows}
    (out / "results.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    lines = ["| model | bank | image AUROC | pixel AUROC | PRO | coverage | ORT FP32 b1 median / p99 ms | bank fit s |",
             "|---|---|---|---|---|---|---|---|"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for name, r in rows.items():
        m, lt = r["metrics"], r["ort_fp32_b1"]
        lines.append(f"| {name} | {r['bank']} | {f(m['image_auroc'])} | {f(m['pixel_auroc'])} | {f(m['pro'])} | "
                     f"{f(m['coverage'])} | {lt['median_ms']:.1f} / {lt['p99_ms']:.1f} | {r['fit_s']} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return res


if __name__ == "__main__":
    main()
