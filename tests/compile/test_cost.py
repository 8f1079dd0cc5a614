"""Model cost from the ONNX graph: MACs and parameters against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compile.cost import model_cost


def _model(tmp_path: Path) -> Path:
    """image (N,3,32,32) → Conv 3→8 k3 s2 p1 (+bias) → depthwise Conv 8 k3 p1 → ConvTranspose 8→4
    k2 s2 → Flatten → MatMul (4096 → 10)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "w3"),
        numpy_helper.from_array(rng.standard_normal((4 * 32 * 32, 10)).astype(np.float32), "w4"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Conv", ["a", "w2"], ["b"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=8),
        helper.make_node("ConvTranspose", ["b", "w3"], ["c"], strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("Flatten", ["c"], ["d"]),
        helper.make_node("MatMul", ["d", "w4"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_macs_and_params_match_hand_count(tmp_path: Path) -> None:
    cost = model_cost(_model(tmp_path))
    conv1 = 8 * 16 * 16 * 3 * 9  # output elements × (Cin/group × k²)
    dw = 8 * 16 * 16 * 1 * 9
    convt = 8 * 16 * 16 * 4 * 4  # input elements × (Cout/group × k²)
    mm = 10 * 4096
    assert cost["macs_by_op"] == {"Conv": conv1 + dw, "ConvTranspose": convt, "MatMul": mm}
    assert cost["macs"] == conv1 + dw + convt + mm
    assert cost["params"] == 8 * 27 + 8 + 8 * 9 + 8 * 4 * 4 + 4096 * 10
