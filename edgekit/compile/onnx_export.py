"""Export a trained AnomalyModel to ONNX with preprocessing and scoring fused in.

Graph contract: input ``image`` uint8 (N, S, S, 3) RGB → outputs ``anomaly_map`` float32
(N, 1, S, S) and ``score`` float32 (N,). Normalisation constants are initializers, so the
device feeds decoded camera tiles directly.

A distillation model with a patch memory (recipe ``score.memory``) exports its bank as one
(D, M) initializer (``−2 Cᵀ``) and the nearest-entry distance as MatMul + Add + ReduceMin on the
teacher features, inside the same graph; the branch starts with a Div, so INT8 keeps it in float
(``quantize.scoring_tail``). ``_check_memory`` verifies the bank survived simplification."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BundleError
from edgekit.methods.base import AnomalyModel

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


class ExportWrapper(nn.Module):
    """uint8 NHWC → normalised NCHW float → model → (map, score)."""

    def __init__(self, model: AnomalyModel, spec: PreprocessSpec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = image.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) * self.inv_std
        out = self.model(x)
        return out.map, out.score


def export_onnx(model: AnomalyModel, spec: PreprocessSpec, path: str | Path, opset: int = 17,
                dynamic_batch: bool = True, simplify: bool = True) -> Path:
    """Trace ``model`` (eval mode) into ``path``; returns the path. Shape-checked afterwards."""
    path = Path(path)
    wrapper = ExportWrapper(model.eval(), spec).eval()
    s = spec.size
    dummy = torch.zeros(1, s, s, 3, dtype=torch.uint8)
    axes = {INPUT_NAME: {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}} if dynamic_batch else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), buf, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if simplify:
        proto = _simplify(proto)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    _check_io(proto, s)
    _check_memory(proto, model)
    onnx.save(proto, str(path))
    return path


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError:  # optional: the unsimplified graph is valid, only slightly larger
        return proto
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def _check_io(proto: onnx.ModelProto, size: int) -> None:
    ins = {i.name: i for i in proto.graph.input}
    outs = [o.name for o in proto.graph.output]
    if INPUT_NAME not in ins or list(OUTPUT_NAMES) != outs:
        raise BundleError(f"exported graph has inputs {list(ins)} outputs {outs}; expected image → anomaly_map, score")
    dims = ins[INPUT_NAME].type.tensor_type.shape.dim
    if [d.dim_value for d in dims[1:]] != [size, size, 3]:
        raise BundleError(f"exported graph input shape {[d.dim_value or d.dim_param for d in dims]} != (N, {size}, {size}, 3)")


def _check_memory(proto: onnx.ModelProto, model: AnomalyModel) -> None:
    mem = model.patch_memory() if hasattr(model, "patch_memory") else None
    if mem is None:
        return
    want = (mem.dim, mem.size)
    banks = [t.name for t in proto.graph.initializer if tuple(t.dims) == want]
    users = [n for n in proto.graph.node if n.op_type == "MatMul" and any(i in banks for i in n.input)]
    if len(users) != 1 or "ReduceMin" not in {n.op_type for n in proto.graph.node}:
        raise BundleError(f"exported graph lost the patch memory (bank {want[0]}x{want[1]} → MatMul → ReduceMin); "
                          "export with simplify=False and report it")


def set_metadata(path: str | Path, props: dict[str, str]) -> None:
    """Write ``metadata_props`` (e.g. the bundle id) into an ONNX file."""
    proto = onnx.load(str(path))
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def ort_run(path: str | Path, tiles: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model in onnxruntime: tiles (N,S,S,3) uint8 → (maps (N,S,S), scores (N,))."""
    from edgekit.runtime.backends.ort import ort_session

    sess = ort_session(path, threads)
    m, s = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(tiles)})
    return m[:, 0], s
