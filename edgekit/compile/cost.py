"""Model cost from the exported ONNX graph: parameters and multiply-accumulates (MACs) of the
compute-heavy ops, read off the shape-inferred graph, so the figure is the cost of what runs on
the device (teacher cut at its deepest used stage, student, fused scoring), not of a torch
module. No torch needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# input positions of (weight, bias) per convolution op
_CONV_WEIGHT_BIAS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "QLinearConv": (3, 8)}


def _dims(vi: Any) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(1)  # a symbolic dimension (the batch): cost is reported per batch item
    return out


def model_cost(path: str | Path) -> dict[str, Any]:
    """Parameters and MACs per image of an ONNX model (batch dimension taken as 1).

    Counts Conv and ConvTranspose (kernel × in/group × output elements), MatMul and Gemm; the
    elementwise and resize ops of the scoring tail are cheap by comparison and are left out.

    Returns:
        {"params": int, "macs": int, "gmacs": float, "macs_by_op": {op: int}}: params are the
        weights and biases of those ops (int8 models: their quantized weights, so the count
        matches the float model's).
    """
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    shapes: dict[str, list[int] | None] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        shapes[vi.name] = _dims(vi)
    inits = {t.name: tuple(t.dims) for t in g.initializer}

    def shape(name: str) -> list[int] | None:
        if name in inits:
            return list(inits[name])
        return shapes.get(name)

    # weights behind a DequantizeLinear (Q/DQ models) have the initializer's shape
    dq_src = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    by_op: dict[str, int] = {}
    params = 0
    for n in g.node:
        op = n.op_type
        macs = 0
        if op in _CONV_WEIGHT_BIAS:
            wi, bi = _CONV_WEIGHT_BIAS[op]
            w = shape(dq_src.get(n.input[wi], n.input[wi]))
            y = shape(n.output[0])
            x = shape(n.input[0])
            if not w or not y or not x:
                continue
            b_name = n.input[bi] if len(n.input) > bi else ""
            b = shape(dq_src.get(b_name, b_name)) if b_name else None
            params += int(np.prod(w)) + (int(np.prod(b)) if b else 0)
            k = int(np.prod(w[2:])) if len(w) > 2 else 1
            if op == "ConvTranspose":  # w: (Cin, Cout/group, k...): every input element scatters
                macs = int(np.prod(x)) * w[1] * k
            else:  # w: (Cout, Cin/group, k...)
                macs = int(np.prod(y)) * w[1] * k
        elif op in ("MatMul", "Gemm"):
            a, y = shape(n.input[0]), shape(n.output[0])
            w_name = n.input[1]
            if w_name in inits or w_name in dq_src:
                params += int(np.prod(shape(dq_src.get(w_name, w_name)) or [0]))
            if a and y:
                macs = int(np.prod(y)) * a[-1]
        if macs:
            by_op[op] = by_op.get(op, 0) + macs
    total = int(sum(by_op.values()))
    return {"params": params, "macs": total, "gmacs": round(total / 1e9, 3), "macs_by_op": by_op}
