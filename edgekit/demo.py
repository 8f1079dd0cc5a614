"""`edgekit demo`: the whole chain on built-in synthetic data, end to end:
synthesize fabric → train rd-lite0 → build a cpu bundle → evaluate it → replay the test images
through the daemon on a simulated line with a fake GPIO chip → print decisions and metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).resolve().parent / "recipes" / "rd-lite0.yaml"  # package data


def _recipe_path() -> Path:
    if RECIPE.is_file():
        return RECIPE
    from edgekit.errors import ConfigError

    raise ConfigError(f"{RECIPE}: demo recipe not found in the installed package; reinstall edgekit")


def _step(title: str) -> float:
    print(f"\n=== {title}")
    return time.perf_counter()


def write_line_video(data: Path, path: Path, fps: float = 10.0) -> Path:
    """The test images (good and defect, interleaved in name order) as an MP4 the way a line
    camera would record them: ``edgekit run recipes/deploy/replay-fake-gpio.yaml`` replays it."""
    import cv2

    from edgekit.data.dataset import list_images

    frames = sorted((p for d in sorted((data / "test").iterdir()) if d.is_dir() for p in list_images(d)),
                    key=lambda p: (p.name, p.parent.name))
    if not frames:
        return path
    first = cv2.imread(str(frames[0]), cv2.IMREAD_COLOR)
    h, w = first.shape[:2]
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is not None:
            vw.write(cv2.resize(img, (w, h)) if img.shape[:2] != (h, w) else img)
    vw.release()
    tmp.replace(path)
    return path


def run_demo(out_dir: str | Path, epochs: int | None = 10, n_parts: int = 200) -> dict[str, Any]:
    from edgekit.compile.build import build_bundle
    from edgekit.data.synth import write_synthetic_dataset
    from edgekit.evaluate.run import evaluate_cli
    from edgekit.train import train_run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    data, run, bundle = out / "data" / "fabric", out / "run-rd-lite0", out / "bundle-rd-lite0"

    t = _step("1/5 synthesize a woven-fabric dataset (good + holes, stains, broken/missing yarns, knots)")
    if not (data / "train" / "good").is_dir():
        print(write_synthetic_dataset(data, kind="fabric", seed=0, n_train=160, n_test_good=40, n_test_defect=60, size=256))
    else:
        print(f"reusing {data}")
    print(f"({time.perf_counter() - t:.1f} s)")

    t = _step("2/5 train rd-lite0 (EfficientNet-Lite0 teacher, offline ImageNet weights)")
    train_run(_recipe_path(), data, run, epochs=epochs, resume=True)  # None: the recipe's 30 epochs
    print(f"({time.perf_counter() - t:.1f} s)")

    t = _step("3/5 build a cpu bundle (ONNX with preprocessing + scoring fused, manifest, sha256)")
    build_bundle(run, bundle, target="cpu")
    print(f"({time.perf_counter() - t:.1f} s)")

    write_line_video(data, out / "line.mp4")  # what recipes/deploy/replay-fake-gpio.yaml replays
    t = _step("4/5 evaluate the bundle (onnxruntime, as on the device) on the test split")
    metrics = evaluate_cli(str(bundle), str(data), json_path=str(out / "eval.json"), report_path=str(out / "report.html"))
    print(f"({time.perf_counter() - t:.1f} s)")

    t = _step(f"5/5 simulated line: {n_parts} parts through the daemon, fake GPIO reject line")
    from edgekit.sim.demo import simulate_demo

    sim = simulate_demo(bundle, data, out / "line", n_parts=n_parts)
    print(f"({time.perf_counter() - t:.1f} s)")

    print("\n=== summary")
    print(f"image AUROC (bundle in onnxruntime, test split): {metrics['image_auroc']:.4f}")
    if metrics.get("pixel_auroc") is not None:
        print(f"pixel AUROC: {metrics['pixel_auroc']:.4f}")
    for line in sim.get("lines", []):
        print(line)
    print(f"total demo time: {time.perf_counter() - t_all:.0f} s; outputs in {out}")
    return {"metrics": metrics, "sim": sim}
