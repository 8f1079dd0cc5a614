"""Reduced-precision copies of a bundle's FP32 ONNX model: FP16 (converted, IO kept uint8 in /
float32 out) and INT8 with explicit Q/DQ nodes calibrated on real good images.

Explicit Q/DQ is the INT8 form TensorRT 10 expects (its implicit calibrators are deprecated)
and the same file runs in onnxruntime here. Two Q/DQ layouts (``INT8_FLAVORS``): one for the
onnxruntime CPU kernels, one for TensorRT (symmetric, zero point 0); weights are int8 symmetric
per output channel in both.

The scoring tail (cosine/normalisation, Resize, blur, ReduceMax) stays in float: it is cheap,
and quantizing a normalised distance or a Gaussian blur of the anomaly map moves scores near the
threshold, which is exactly where decisions flip."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.errors import BundleError

log = logging.getLogger(__name__)

# Ops that normalise features or turn them into scores; they and everything after them form the
# scoring tail, which stays float in INT8 (see module docstring).
TAIL_START_OPS = frozenset({
    "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean", "ReduceMax", "ReduceMin", "Sqrt", "Div",
    "LpNormalization", "Resize", "TopK", "ArgMin", "ArgMax", "Softmax",
})
# Ops quantized (Q/DQ around them); Clip/Relu after a quantized Conv are absorbed by the
# quantizer, element-wise ops in the feature network (residual Add) keep the chain in int8.
INT8_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                 "Concat")
# FP16: ops whose inputs/outputs stay float32. The scoring math (sums of squares over channels,
# sqrt, division) overflows or loses the small differences that decide scores in fp16.
FP16_BLOCK_OPS = ("ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceMean", "ReduceMax", "ReduceMin", "Sqrt", "Div",
                  "Resize", "Pad", "LpNormalization", "TopK", "ArgMin", "Softmax", "Cast", "Max", "Min")


# Element-wise ops that only prepare the tail's inputs (products of teacher and student features,
# squares) belong to the tail too: in fp16 the products of small feature values underflow.
TAIL_FEEDER_OPS = frozenset({"Mul", "Pow", "Sub", "Add", "Abs", "Neg", "Unsqueeze", "Squeeze", "Reshape",
                             "Flatten", "Transpose", "Concat"})


def scoring_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from the first normalisation/scoring op to the outputs, in graph order,
    plus the element-wise nodes that feed only those (feature products, squares)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers: dict[str, onnx.NodeProto] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producers[o] = n
    tail: set[str] = set()
    stack = [n for n in model.graph.node if n.op_type in TAIL_START_OPS]
    while stack:
        n = stack.pop()
        if n.name in tail:
            continue
        tail.add(n.name)
        for o in n.output:
            stack.extend(consumers.get(o, []))
    changed = True
    while changed:  # grow backwards over feeders whose every consumer is already in the tail
        changed = False
        for n in model.graph.node:
            if n.name in tail or n.op_type not in TAIL_FEEDER_OPS:
                continue
            users = [c for o in n.output for c in consumers.get(o, [])]
            if users and all(c.name in tail for c in users):
                tail.add(n.name)
                changed = True
    return [n.name for n in model.graph.node if n.name in tail]


def depthwise_nodes(model: onnx.ModelProto) -> list[str]:
    """Depthwise convolutions (``group`` = input channels > 1, one input channel per filter).

    They stay float in INT8 by default: each output sums only k² products of one channel, so the
    rounding of its per-channel weights and of its input does not average out, and a depthwise
    filter's weights span very different ranges. On ELPV poly (rd-mem-lite0, fp32 0.883) keeping
    only the teacher's depthwise convolutions float moved INT8 from 0.871 to 0.882 (Q/DQ emulated;
    TensorRT layout 0.870 → 0.885); on ELPV mono, held out (fp32 0.930): 0.921 → 0.928, TensorRT
    layout 0.926 → 0.931. Their cost on a 2-core x86 CPU: the INT8 model is about as fast as FP32
    (mono 18.9 against 17.4 ms; with them int8: 19.1 against 24.1 ms in another run, at −1 pt);
    what float depthwise layers cost in a TensorRT engine is not measured (no Jetson here). They
    stay float in onnxruntime only with its ``WeightBiasQuantization`` rewrite off, which every
    edgekit session does (``edgekit.runtime.backends.ort.ort_session``; benchmarks/README.md,
    2026-12-04 late)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        dims = list(inits[n.input[1]].dims)  # (C_out, C_in / group, kH, kW)
        if group > 1 and len(dims) == 4 and dims[1] == 1:
            out.append(n.name)
    return out


# INT8: nodes computing finer than this stride (relative to the input) stay float by default.
HIGH_RES_STRIDE = 8


def _input_side(model: onnx.ModelProto) -> int | None:
    """The smaller spatial side of the 4-D image input (NHWC or NCHW), None when not static."""
    if not model.graph.input:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return None
    hw = dims[1:3] if dims[3] in (1, 3, 4) else dims[2:4]
    return None if None in hw or 0 in hw else min(hw)  # type: ignore[type-var]


def high_resolution_nodes(model: onnx.ModelProto, max_stride: int = HIGH_RES_STRIDE) -> list[str]:
    """Nodes whose 4-D (N, C, H, W) output is finer than ``1/max_stride`` of the input side: the
    stem and the first blocks of the backbone (stride 2 and 4), and whatever else computes at that
    resolution (e.g. a decoder's last stage).

    They stay float in INT8 by default. These layers see the image almost pixel by pixel, with few
    channels, so one rounding step is large against what a thin defect changes; their error then
    propagates through every deeper feature, and a stride-4 teacher feature is itself a
    distillation target. Measured on rd-mem-lite0 (7-bit CPU layout, depthwise already float, exact
    Q/DQ arithmetic): ELPV mono image AUROC 0.927 → 0.932 (FP32 0.932); synthetic parts pixel
    AUROC 0.895 → 0.928 and PRO 0.900 → 0.923 (FP32 0.927 / 0.923); on a 2-core x86 CPU without
    VNNI the model also gets faster (parts 16.9 → 14.9 ms, FP32 15.7), because the float/int8
    boundaries move from the largest tensors to stride 8 (benchmarks/README.md, 2026-12-05).

    Shapes come from ONNX shape inference; nodes without a static 4-D output shape are left alone,
    and a model whose input side is not static has none."""
    side = _input_side(model)
    if side is None:
        return []
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    out = []
    for n in model.graph.node:
        dims = shapes.get(n.output[0]) if n.output else None
        if dims is None or len(dims) != 4 or dims[2] is None or dims[3] is None:
            continue
        if min(dims[2], dims[3]) * max_stride > side:
            out.append(n.name)
    return out


def stem_nodes(model: onnx.ModelProto) -> list[str]:
    """The first Conv fed (through preprocessing) by the graph input: the stem convolution."""
    for n in model.graph.node:
        if n.op_type == "Conv":
            return [n.name]
    return []


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes into initializers. The quantizer folds a Clip/ReLU6 into the uint8
    range (and onnxruntime fuses Clip→Q) only when Clip's min/max are initializers; torch's
    exporter emits them as Constant nodes."""
    keep = []
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _only_user_of(model: onnx.ModelProto) -> Callable[[str, str], onnx.NodeProto | None]:
    """``only_user(tensor, op)``: the node consuming ``tensor`` if it is its single consumer and
    of type ``op``, else None (pattern matching for the graph rewrites below)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_user(name: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    return only_user


def _input_norm_in_nhwc(model: onnx.ModelProto) -> bool:
    """Move the fused input normalisation ahead of the layout transpose, as full-size constants.

    The export computes ``Mul(Sub(Cast(Transpose(image)), mean), inv_std)`` with per-channel
    (1, C, 1, 1) constants. onnxruntime's int8 path runs the graph in NHWC, where those two
    broadcasts over a last axis of 3 took ~10 ms each at 256² (ORT profiling), a sixth of the
    int8 run time. ``Add(Mul(Cast(image), k), b)`` with k, b tiled to (1, S, S, C) is the same
    affine map (exact up to float rounding) and broadcasts only over the batch axis, which
    runs at memory speed; the Transpose then follows. Returns True if the pattern was found."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    only_user = _only_user_of(model)

    graph_in = model.graph.input[0]
    dims = [d.dim_value for d in graph_in.type.tensor_type.shape.dim]
    tr = only_user(graph_in.name, "Transpose")
    if tr is None or len(dims) != 4 or not all(dims[1:]):
        return False
    perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
    cast = only_user(tr.output[0], "Cast")
    sub = only_user(cast.output[0], "Sub") if cast is not None else None
    mul = only_user(sub.output[0], "Mul") if sub is not None else None
    if perm != [0, 3, 1, 2] or mul is None or sub.input[1] not in inits or mul.input[1] not in inits:
        return False
    mean = numpy_helper.to_array(inits[sub.input[1]]).astype(np.float32).reshape(-1)
    k = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float32).reshape(-1)
    _, h, w, c = dims
    if mean.size != c or k.size != c:
        return False
    k_full = np.broadcast_to(k, (1, h, w, c)).astype(np.float32)
    b_full = np.broadcast_to(-mean * k, (1, h, w, c)).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(k_full, "input_norm_scale_nhwc"),
                                    numpy_helper.from_array(b_full, "input_norm_bias_nhwc")])
    new_nodes = [
        helper.make_node("Cast", [graph_in.name], ["/input_norm/Cast_output_0"], name="/input_norm/Cast",
                         to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["/input_norm/Cast_output_0", "input_norm_scale_nhwc"], ["/input_norm/Mul_output_0"],
                         name="/input_norm/Mul"),
        helper.make_node("Add", ["/input_norm/Mul_output_0", "input_norm_bias_nhwc"], ["/input_norm/Add_output_0"],
                         name="/input_norm/Add"),
        helper.make_node("Transpose", ["/input_norm/Add_output_0"], [mul.output[0]], name="/input_norm/Transpose",
                         perm=[0, 3, 1, 2]),
    ]
    idx = list(model.graph.node).index(tr)
    for n in (tr, cast, sub, mul):
        model.graph.node.remove(n)
    for j, n in enumerate(new_nodes):
        model.graph.node.insert(idx + j, n)
    return True


def _fold_input_norm_into_stem(model: onnx.ModelProto) -> dict[str, Any] | None:
    """Fold the input normalisation into the stem convolution so that, once quantized, the stem
    reads the uint8 image itself.

    The export computes ``Conv(Mul(Sub(Cast(Transpose(image)), mean), inv_std), W, b)`` with
    per-channel (1, C, 1, 1) constants. The per-channel scale ``inv_std`` moves into the stem's
    weights (exact: padding stays zero); what is left is ``Mul(Sub(x, Z), s)`` with one integer
    zero point ``Z`` (the rounded mean) and one scale ``s``, which is exactly the dequantization
    of the raw pixel with (s, Z). The rest of the mean, ``mean - Z``, goes into the bias: exact
    inside the image, off by at most half a pixel level at padded border taps, less than the
    input quantization step it replaces. Means that do not round to one common integer (ImageNet
    statistics) would leave a larger border error, so a padded stem is then left alone (None).

    Rewrites ``model`` in place; ``_bypass_stem_input_qdq`` removes the float ops after
    quantization. Returns facts (scale, zero point, the stem input tensor), or None if the
    pattern is not there."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    only_user = _only_user_of(model)

    graph_in = model.graph.input[0]
    if graph_in.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        return None
    tr = only_user(graph_in.name, "Transpose")
    cast = only_user(tr.output[0], "Cast") if tr is not None else None
    sub = only_user(cast.output[0], "Sub") if cast is not None else None
    mul = only_user(sub.output[0], "Mul") if sub is not None else None
    conv = only_user(mul.output[0], "Conv") if mul is not None else None
    if conv is None or sub.input[1] not in inits or mul.input[1] not in inits or len(conv.input) < 2 \
            or conv.input[1] not in inits or (len(conv.input) > 2 and conv.input[2] not in inits):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("group", 1) != 1 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    c = w.shape[1]
    mean = numpy_helper.to_array(inits[sub.input[1]]).astype(np.float64).reshape(-1)
    k = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float64).reshape(-1)
    if mean.size == 1:
        mean = np.repeat(mean, c)
    if k.size == 1:
        k = np.repeat(k, c)
    if mean.size != c or k.size != c or np.any(k <= 0):
        return None
    zero_point = int(np.clip(np.round(mean.mean()), 0, 255))
    padded = any(attrs.get("pads", []))
    if padded and np.max(np.abs(mean - zero_point)) > 0.5 + 1e-6:
        return None
    scale = float(np.float32(np.exp(np.log(k).mean())))  # geometric mean: folded weights stay near W
    b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
    # Conv(W, (x - m)·k) = Conv(W·k/s, (x - Z)·s) + Σ W·k·(Z - m)
    w_new = w * (k / scale)[None, :, None, None]
    b_new = b + (w.sum(axis=(2, 3)) * k) @ (zero_point - mean)
    names = {"w": conv.input[1] + "_input_norm_folded", "b": conv.name + "_bias_input_norm_folded",
             "z": "input_norm_zero_point", "s": "input_norm_scale"}
    model.graph.initializer.extend([
        numpy_helper.from_array(w_new.astype(np.float32), names["w"]),
        numpy_helper.from_array(b_new.astype(np.float32), names["b"]),
        numpy_helper.from_array(np.array(zero_point, np.float32), names["z"]),
        numpy_helper.from_array(np.array(scale, np.float32), names["s"]),
    ])
    sub.input[1], mul.input[1] = names["z"], names["s"]
    conv.input[1] = names["w"]
    if len(conv.input) > 2:
        conv.input[2] = names["b"]
    else:
        conv.input.append(names["b"])
    for n, new_name in ((cast, "/input_norm/Cast"), (sub, "/input_norm/Sub"), (mul, "/input_norm/Mul")):
        n.name = new_name
    return {"stem": conv.name, "stem_input": mul.output[0], "pixels": tr.output[0], "scale": scale,
            "zero_point": zero_point, "max_border_error_levels": float(np.max(np.abs(mean - zero_point))) if padded else 0.0}


def _bypass_stem_input_qdq(model: onnx.ModelProto, fold: dict[str, Any]) -> None:
    """After quantization: feed the uint8 pixels straight into the stem's DequantizeLinear and
    drop Cast → Sub → Mul → QuantizeLinear, which map every pixel to itself (the quantizer was
    told the stem input's scale and zero point, see ``_fold_input_norm_into_stem``)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == fold["stem_input"]), None)
    if q is None or len(q.input) < 3:
        raise BundleError("int8: the quantizer left the stem input unquantized; rebuild without --int8-quantize-high-resolution (the stem then stays float)")
    s = float(numpy_helper.to_array(inits[q.input[1]]))
    z = numpy_helper.to_array(inits[q.input[2]])
    if z.dtype != np.uint8 or int(z) != fold["zero_point"] or not np.isclose(s, fold["scale"], rtol=1e-6):
        raise BundleError(f"int8: stem input quantized with scale {s}, zero point {z} instead of the folded "
                          f"{fold['scale']}, {fold['zero_point']}; report this")
    for n in model.graph.node:
        for j, i in enumerate(n.input):
            if i == q.output[0]:
                if n.op_type != "DequantizeLinear":
                    raise BundleError(f"int8: {n.name} reads the stem input's quantized pixels; report this")
                n.input[j] = fold["pixels"]
    mul = producers[q.input[0]]
    sub = producers[mul.input[0]]
    cast = producers[sub.input[0]]
    for n in (q, mul, sub, cast):
        model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    dead = [t for t in model.graph.initializer if t.name not in used]
    for t in dead:
        model.graph.initializer.remove(t)


def _ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """nodes_to_exclude works by name; give unnamed nodes a stable one."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    return model


def convert_fp16(src: str | Path, dst: str | Path, block_ops: Sequence[str] = FP16_BLOCK_OPS) -> dict[str, Any]:
    """Write an FP16 copy of ``src``: weights and activations fp16, IO unchanged (uint8 in,
    float32 out), ``block_ops`` kept in float32 with Casts at the borders.

    The scoring tail (``scoring_tail``) stays float32 as well.

    Returns facts for the manifest (blocked op types, number of fp32 nodes)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = _ensure_node_names(onnx.load(str(src)))
    tail = scoring_tail(model)  # cheap, and where fp16 rounding would move scores
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(block_ops), node_block_list=tail)
    removed = _fold_cast_pairs(fp16.graph)
    _toposort(fp16.graph)  # the converter appends its border Casts out of order
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))
    kept = [n.name for n in model.graph.node if n.op_type in set(block_ops)]
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True,
            "fp32_op_types": sorted(set(block_ops)), "fp32_nodes": len(set(kept) | set(tail)),
            "fp32_scoring_tail": len(tail), "fp16_round_trips_removed": removed}


def _fold_cast_pairs(graph: onnx.GraphProto) -> int:
    """Remove fp32→fp16→fp32 Cast round trips between two blocked (fp32) nodes.

    The converter casts every blocked node's output to fp16 and back, even when the next node
    is blocked too; in the cosine tail ``|a|²·|b|²`` reaches ~1e7 and overflows fp16 (max
    65504) on the way, so the round trip is not harmless. Returns the number removed."""
    from onnx import TensorProto

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for a in graph.node:
        if a.op_type != "Cast" or a.attribute[0].i != TensorProto.FLOAT16 or a.output[0] in outputs:
            continue
        users = consumers.get(a.output[0], [])
        if not users or not all(u.op_type == "Cast" and u.attribute[0].i == TensorProto.FLOAT for u in users):
            continue
        drop.add(id(a))
        for b in users:
            if b.output[0] in outputs:  # keep a Cast that produces a graph output, fed directly
                b.input[0] = a.input[0]
                continue
            drop.add(id(b))
            rename[b.output[0]] = a.input[0]
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i in rename:
                n.input[k] = rename[i]
    kept = [n for n in graph.node if id(n) not in drop]
    n_removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    return n_removed // 2


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise BundleError("fp16 conversion produced a graph with a cycle or a dangling input; report this")
        nodes = rest
    del graph.node[:]
    graph.node.extend(ordered)


class TileReader:
    """onnxruntime CalibrationDataReader over uint8 tiles (T, S, S, 3), ``batch`` at a time."""

    def __init__(self, tiles: np.ndarray, batch: int = 8, input_name: str = "image", progress: bool = True) -> None:
        self.tiles = tiles
        self.batch = batch
        self.input_name = input_name
        self.progress = progress
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        starts = range(0, len(self.tiles), self.batch)
        for i in tqdm(starts, desc="calibrate int8", unit="batch", leave=False, disable=not self.progress):
            yield {self.input_name: np.ascontiguousarray(self.tiles[i : i + self.batch])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def calibration_tiles(paths: Sequence[Path], spec: Any, max_tiles: int = 96, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode good images, tile them with the run's spec and keep a seeded subset.

    Returns: tiles (T, S, S, 3) uint8 with T ≤ max_tiles, and facts for the manifest (image and
    tile counts, sha256 over the chosen image paths + sizes)."""
    from edgekit.data.images import read_image
    from edgekit.data.preprocess import make_tiles
    from edgekit.errors import DataError

    if not paths:
        raise BundleError("no calibration images; pass --calib-data DIR with good images (train/good or a folder)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    tiles: list[np.ndarray] = []
    used: list[Path] = []
    for k in order:
        p = Path(paths[int(k)])
        try:
            t, _ = make_tiles(read_image(p), spec)
        except DataError as exc:
            log.warning("calibration: skipping %s", exc)
            continue
        tiles.append(t)
        used.append(p)
        if sum(len(x) for x in tiles) >= max_tiles:
            break
    if not tiles:
        raise BundleError("no readable calibration images; check --calib-data")
    arr = np.concatenate(tiles)[:max_tiles]
    h = hashlib.sha256()
    for p in sorted(used):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    return arr, {"n_images": len(used), "n_tiles": int(len(arr)), "hash": h.hexdigest(), "seed": seed}


CALIB_BATCH = 8


def _flush_every(n_batches: int) -> int:
    """Calibration keeps at most this many batches of activations in memory (bounded at 256²).
    onnxruntime's calibrator fails with "No data is collected" when the batch count is an exact
    multiple of it (the last flush leaves nothing), so pick a value that does not divide it."""
    for k in range(8, 2, -1):
        if n_batches < k or n_batches % k:
            return k
    return n_batches + 1


# Q/DQ layouts. "onnxruntime" (target cpu): uint8 asymmetric activations with Q/DQ on every
# quantized op's output, so ReLU/ReLU6 fold into the zero point and onnxruntime fuses
# DQ→Conv→Q into QLinearConv (u8s8 kernels). "tensorrt" (target jetson): symmetric int8
# activations (TensorRT only accepts zero point 0) with Q/DQ on the inputs of weighted ops only,
# as TensorRT's explicit-quantization guide recommends; TensorRT then fuses Conv+BN+ReLU before
# requantizing. Symmetric Q/DQ on conv outputs would quantize pre-activation tensors (EfficientNet
# depthwise outputs reach ±70) with a wasted sign bit, which cost 7 AUROC points on ELPV.
INT8_FLAVORS = ("onnxruntime", "tensorrt")


def quantize_int8(src: str | Path, dst: str | Path, calib_tiles: np.ndarray, exclude_stem: bool = False,
                  extra_exclude: Sequence[str] = (), method: str = "minmax", progress: bool = True,
                  flavor: str = "onnxruntime", reduce_range: bool | None = None,
                  float_depthwise: bool = True, float_high_resolution: bool = True) -> dict[str, Any]:
    """Write an explicit Q/DQ INT8 copy of ``src`` calibrated on ``calib_tiles``.

    Args:
        calib_tiles: (T, S, S, 3) uint8 good tiles.
        exclude_stem: keep the stem convolution in float (it sees raw normalised pixels).
        extra_exclude: further node names to keep in float.
        float_depthwise: keep depthwise convolutions in float (see ``depthwise_nodes``).
        float_high_resolution: keep the nodes computing finer than stride ``HIGH_RES_STRIDE`` in
            float, the stem included (see ``high_resolution_nodes``).
        method: "minmax" or "percentile" (clips activation outliers at 99.999 %).
        flavor: "onnxruntime" (CPU) or "tensorrt" (symmetric, inputs only); see INT8_FLAVORS.
        reduce_range: 7-bit weights. Default: on for the onnxruntime layout, because x86 CPUs
            without VNNI multiply u8·s8 pairs into saturating int16 (pmaddubsw); on ELPV that
            saturation alone cost 2.3 AUROC points. TensorRT computes in int32: off.
    Returns: facts for the manifest (quantized op types, nodes kept float, calibration method)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = flavor == "onnxruntime"
    if flavor not in INT8_FLAVORS:
        raise BundleError(f"int8 flavor {flavor!r} unknown; use one of {', '.join(INT8_FLAVORS)}")
    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # shape inference + basic fusions (BN folding) so the quantizer sees Conv→Clip chains
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = _ensure_node_names(_constants_to_initializers(onnx.load(str(pre))))
        hires = high_resolution_nodes(model) if float_high_resolution else []
        stem = stem_nodes(model)
        exclude_stem = exclude_stem or bool(stem and stem[0] in hires)
        # onnxruntime layout: the int8 stem reads the uint8 image (asymmetric, so the mean fits the
        # zero point); TensorRT's symmetric layout and a float stem keep a float normalisation
        fold = _fold_input_norm_into_stem(model) if flavor == "onnxruntime" and not exclude_stem else None
        input_nhwc = fold is None and _input_norm_in_nhwc(model)
        onnx.save(model, str(pre))
        tail = scoring_tail(model)
        # the input normalisation stays float (quantizing its Add would round the pixels)
        excluded = list(dict.fromkeys([*tail, *[n.name for n in model.graph.node if n.name.startswith("/input_norm/")], *(stem if exclude_stem else []),
                                         *(depthwise_nodes(model) if float_depthwise else []), *hires, *extra_exclude]))
        calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
        extra: dict[str, Any] = {
            "WeightSymmetric": True,
            "CalibMaxIntermediateOutputs": _flush_every(-(-len(calib_tiles) // CALIB_BATCH)),
        }
        op_types = list(INT8_OP_TYPES)
        if flavor == "tensorrt":
            extra["ActivationSymmetric"] = True  # TensorRT: zero point must be 0
            extra["OpTypesToExcludeOutputQuantization"] = list(INT8_OP_TYPES)
            act = QuantType.QInt8
        else:
            op_types += ["Clip", "Relu"]  # listed so the quantizer removes them into the uint8 range
            act = QuantType.QUInt8
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        if fold is not None:  # (x - Z)·s quantized with (s, Z) is the pixel itself
            extra["TensorQuantOverrides"] = {fold["stem_input"]: [
                {"scale": np.array(fold["scale"], np.float32), "zero_point": np.array(fold["zero_point"], np.uint8)}]}
        quantize_static(
            str(pre), str(dst), TileReader(calib_tiles, CALIB_BATCH, progress=progress), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types, per_channel=True, reduce_range=reduce_range,
            activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method=calib, extra_options=extra,
        )
    q = onnx.load(str(dst))
    if fold is not None:
        _bypass_stem_input_qdq(q, fold)
        onnx.checker.check_model(q)
        onnx.save(q, str(dst))
        present = {n.name for n in q.graph.node}
        excluded = [n for n in excluded if n in present]  # the float normalisation is gone
    counts = qdq_counts(q)
    if counts["QuantizeLinear"] == 0:
        raise BundleError(f"{dst}: quantizer inserted no Q/DQ nodes; the graph has no quantizable ops")
    float_compute = [n.name for n in q.graph.node if n.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm")
                     and not _computes_in_int8(q, n)]
    from edgekit.runtime.backends.ort import DISABLED_OPTIMIZERS

    return {
        "format": "QDQ", "flavor": flavor, "tool": "onnxruntime.quantization.quantize_static", "per_channel": True,
        "activation_type": "int8-symmetric" if flavor == "tensorrt" else "uint8-asymmetric",
        "weight_type": "int7-symmetric-per-channel" if reduce_range else "int8-symmetric-per-channel",
        "reduce_range": reduce_range, "calibration_method": method,
        "op_types": op_types, "qdq_nodes": counts, "excluded_nodes": excluded,
        "float_compute_nodes": float_compute, "exclude_stem": exclude_stem, "float_depthwise": float_depthwise,
        "float_high_resolution": float_high_resolution, "high_resolution_stride": HIGH_RES_STRIDE,
        "high_resolution_nodes": len(hires),
        "input_norm": "folded-into-stem" if fold else "float-nhwc" if input_nhwc else "float",
        # what a session must turn off to run the float-compute nodes in float (another runtime
        # than edgekit's, e.g. a plant's own onnxruntime integration, needs the same)
        "onnxruntime_disabled_optimizers": list(DISABLED_OPTIMIZERS),
        "n_calibration_tiles": int(len(calib_tiles)),
        **({"input_norm_fold": {k: fold[k] for k in ("scale", "zero_point", "max_border_error_levels")}} if fold else {}),
    }


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of QuantizeLinear / DequantizeLinear nodes in ``model``."""
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def _computes_in_int8(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    """Whether a Conv/MatMul/Gemm computes on int8: its input and its weights both dequantized
    (a float depthwise conv reads a dequantized activation but float weights: float compute)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    srcs = [producers.get(i) for i in node.input[:2]]
    return len(srcs) == 2 and all(s is not None and s.op_type == "DequantizeLinear" for s in srcs)
