"""A tiny bundle whose score is a known function of the image, for the simulator, tests and
smoke runs without a trained model: score = mean intensity in [0, 1], anomaly map = per-pixel
intensity. It satisfies the model contract (input ``image`` uint8 (N, S, S, 3) RGB, outputs
``anomaly_map`` float32 (N, 1, S, S) and ``score`` float32 (N,)) and is written with
``write_manifest`` like a real build, so it goes through the same hash checks."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from edgekit.bundle.io import write_manifest
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION
from edgekit.data.preprocess import PreprocessSpec


def intensity_model(size: int, nan_below: float | None = None, bundle_id: str = "") -> Any:
    """ONNX model: score = mean(image)/255; with ``nan_below`` the score is NaN for images
    darker than that (0 * sqrt(mean - nan_below) is 0 above, NaN below)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["x", "c255"], ["xn"]),
        helper.make_node("ReduceMean", ["xn", "ax3"], ["m_nhw1"], keepdims=1),
        helper.make_node("Transpose", ["m_nhw1"], ["anomaly_map"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["anomaly_map", "ax123"], ["mean"], keepdims=0),
    ]
    inits = [
        helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("ax3", TensorProto.INT64, [1], [3]),
        helper.make_tensor("ax123", TensorProto.INT64, [3], [1, 2, 3]),
    ]
    if nan_below is None:
        nodes.append(helper.make_node("Identity", ["mean"], ["score"]))
    else:
        nodes += [
            helper.make_node("Sub", ["mean", "nan_below"], ["d"]),
            helper.make_node("Sqrt", ["d"], ["r"]),
            helper.make_node("Mul", ["r", "zero"], ["z"]),
            helper.make_node("Add", ["mean", "z"], ["score"]),
        ]
        inits += [helper.make_tensor("nan_below", TensorProto.FLOAT, [], [float(nan_below)]),
                  helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(
        nodes, "intensity",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgekit-sim")
    model.ir_version = 8
    helper.set_model_props(model, {"bundle_id": bundle_id})
    onnx.checker.check_model(model)
    return model


def write_intensity_bundle(out_dir: str | Path, size: int = 32, accept_edge: float = 0.4, reject_edge: float = 0.5,
                           nan_below: float | None = None, fit: str = "resize") -> Path:
    """Write a bundle scoring mean intensity to ``out_dir`` and return its path."""
    import onnx

    from edgekit import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_id = f"sim-intensity-{uuid.uuid4().hex[:8]}"
    onnx.save(intensity_model(size, nan_below, bundle_id), str(out / "model.onnx"))
    spec = PreprocessSpec(size=size, fit=fit)
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "edgekit_version": __version__,
        "bundle_id": bundle_id, "method": "sim-intensity", "backbone": "none",
        "preprocess": spec.to_dict(),
        "inputs": {"image": {"dtype": "uint8", "shape": ["N", size, size, 3], "layout": "NHWC", "color": "RGB"}},
        "outputs": {"anomaly_map": {"dtype": "float32", "shape": ["N", 1, size, size]},
                    "score": {"dtype": "float32", "shape": ["N"]}},
        "models": {"fp32": {"file": "model.onnx", "kind": "onnx", "precision": "fp32"}},
        "files": {"model.onnx": ""},
        "thresholds": {"threshold": reject_edge, "accept_edge": accept_edge, "reject_edge": reject_edge,
                       "source": "synthetic: score is mean intensity"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_manifest(out, manifest)
    return out


def write_intensity_dataset(out_dir: str | Path, n_good: int = 8, n_defect: int = 8, size: int = 48,
                            seed: int = 0) -> Path:
    """MVTec-layout dataset matching the intensity bundle: good parts are dark (score < 0.35),
    defective parts bright (score > 0.6), each with a little texture noise."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    for sub, n, lo, hi in (("train/good", n_good, 30, 80), ("test/good", n_good, 30, 80),
                           ("test/bright", n_defect, 170, 230)):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = int(rng.integers(lo, hi))
            img = np.clip(base + rng.integers(-10, 11, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(d / f"{i:03d}.png"), img)
    return root
