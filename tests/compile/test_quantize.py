"""FP16 conversion and INT8 Q/DQ quantization of the exported model (edgekit/compile/quantize.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from edgekit.bundle.io import load_bundle
from edgekit.compile.onnx_export import ort_run
from edgekit.compile.quantize import (
    TileReader,
    calibration_tiles,
    convert_fp16,
    depthwise_nodes,
    high_resolution_nodes,
    qdq_counts,
    quantize_int8,
    scoring_tail,
    stem_nodes,
)
from edgekit.errors import BundleError


def _tiles(bundle: Path, dataset: Path, n: int = 8) -> np.ndarray:
    from edgekit.data.dataset import scan_dataset

    spec = load_bundle(bundle).preprocess
    tiles, _ = calibration_tiles(scan_dataset(dataset).train_good, spec, max_tiles=n)
    return tiles


def test_int8_model_has_qdq_nodes_and_float_tail(tiny_multi_bundle: Path) -> None:
    b = load_bundle(tiny_multi_bundle)
    q = onnx.load(str(b.model_path("int8")))
    counts = qdq_counts(q)
    assert counts["QuantizeLinear"] > 10 and counts["DequantizeLinear"] >= counts["QuantizeLinear"]
    # every Conv of the feature network reads a dequantized activation and a dequantized weight
    producers = {o: n for n in q.graph.node for o in n.output}
    tail = set(b.models["int8"]["quantization"]["excluded_nodes"])
    convs = [n for n in q.graph.node if n.op_type == "Conv" and n.name not in tail]
    assert convs
    for n in convs:
        assert producers[n.input[0]].op_type == "DequantizeLinear", n.name
        assert producers[n.input[1]].op_type == "DequantizeLinear", n.name
    # symmetric int8 for TensorRT: every zero point is int8 zero
    inits = {t.name: t for t in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2:
            zp = onnx.numpy_helper.to_array(inits[n.input[2]])
            assert zp.dtype == np.int8 and not zp.any()
    # the scoring tail (cosine, resize, blur, max) stays float: nothing quantized feeds the score
    score_node = next(n for n in q.graph.node if "score" in n.output)
    assert score_node.op_type == "ReduceMax" and score_node.name in tail
    assert b.models["int8"]["quantization"]["float_compute_nodes"]  # the blur convs, recorded


def test_int8_scores_close_to_fp32(tiny_multi_bundle: Path, tiny_dataset: Path) -> None:
    tiles = _tiles(tiny_multi_bundle, tiny_dataset)
    b = load_bundle(tiny_multi_bundle)
    _, s32 = ort_run(b.model_path("fp32"), tiles)
    maps8, s8 = ort_run(b.model_path("int8"), tiles)
    assert maps8.dtype == np.float32 and s8.shape == s32.shape
    # scores are standardised per position (z-like, small offset), so judge the int8 error
    # against the spread of the fp32 scores, and the ranking, not against the score's size
    spread = float(np.ptp(s32))
    assert np.max(np.abs(s8 - s32)) < 0.5 * spread
    r32, r8 = np.argsort(np.argsort(s32)), np.argsort(np.argsort(s8))
    assert np.corrcoef(r32, r8)[0, 1] >= 0.8


def test_fp16_keeps_io_types_and_matches(tiny_multi_bundle: Path, tiny_dataset: Path) -> None:
    b = load_bundle(tiny_multi_bundle)
    m = onnx.load(str(b.model_path("fp16")))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in m.graph.output)
    n16 = sum(1 for t in m.graph.initializer if t.data_type == TensorProto.FLOAT16)
    assert n16 > 20  # conv weights are half precision
    tiles = _tiles(tiny_multi_bundle, tiny_dataset)
    _, s32 = ort_run(b.model_path("fp32"), tiles)
    _, s16 = ort_run(b.model_path("fp16"), tiles)
    assert np.max(np.abs(s16 - s32)) < 1e-2 * np.max(np.abs(s32))


def test_onnxruntime_flavor_folds_activations(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    src = load_bundle(tiny_bundle).model_path("fp32")
    tiles = _tiles(tiny_bundle, tiny_dataset, 8)
    info = quantize_int8(src, tmp_path / "ort.onnx", tiles, progress=False, flavor="onnxruntime")
    trt = quantize_int8(src, tmp_path / "trt.onnx", tiles, progress=False, flavor="tensorrt")
    assert info["flavor"] == "onnxruntime" and info["activation_type"] == "uint8-asymmetric"
    q = onnx.load(str(tmp_path / "ort.onnx"))
    zps = [numpy_helper.to_array(t) for t in q.graph.initializer if t.name.endswith("_zero_point")]
    assert any(z.dtype == np.uint8 for z in zps)
    # ReLU6 after a quantized conv is absorbed into the uint8 range; the TensorRT layout keeps it
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    assert ops(q).count("Clip") < ops(onnx.load(str(tmp_path / "trt.onnx"))).count("Clip")
    assert trt["qdq_nodes"]["QuantizeLinear"] > 0
    with pytest.raises(BundleError, match="flavor"):
        quantize_int8(src, tmp_path / "x.onnx", tiles, progress=False, flavor="tflite")


def test_exclude_stem_keeps_first_conv_float(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    src = load_bundle(tiny_bundle).model_path("fp32")
    info = quantize_int8(src, tmp_path / "q.onnx", _tiles(tiny_bundle, tiny_dataset, 4), exclude_stem=True, progress=False)
    q = onnx.load(str(tmp_path / "q.onnx"))
    stem = stem_nodes(q)[0]
    assert stem in info["excluded_nodes"] and stem in info["float_compute_nodes"]


def test_depthwise_convs_stay_float_unless_asked(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    src = load_bundle(tiny_bundle).model_path("fp32")
    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    dw = depthwise_nodes(m)
    # lite0's MBConv blocks: one 3x3/5x5 filter per channel; the stem and pointwise convs are not
    assert dw and all(inits[n.input[1]].dims[1] == 1 for n in m.graph.node if n.name in dw)
    assert stem_nodes(m)[0] not in dw
    tiles = _tiles(tiny_bundle, tiny_dataset, 4)
    # high-resolution layers int8 on both sides, so that only the depthwise choice differs
    kept = quantize_int8(src, tmp_path / "f.onnx", tiles, progress=False, float_high_resolution=False)
    asked = quantize_int8(src, tmp_path / "q.onnx", tiles, progress=False, float_depthwise=False,
                          float_high_resolution=False)
    assert kept["float_depthwise"] is True and asked["float_depthwise"] is False

    def grouped(path: Path) -> dict[str, bool]:  # depthwise conv → whether its weights are dequantized int8
        q = onnx.load(str(path))
        producers = {o: n.op_type for n in q.graph.node for o in n.output}
        return {n.name: producers.get(n.input[1]) == "DequantizeLinear" for n in q.graph.node
                if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}

    f, i = grouped(tmp_path / "f.onnx"), grouped(tmp_path / "q.onnx")
    assert len(f) == len(i) == len(dw)
    assert not any(f.values()) and all(i.values())
    assert set(f) <= set(kept["float_compute_nodes"]) and not set(i) & set(asked["float_compute_nodes"])
    # nothing else changed: the same number of other convs run in float either way
    assert len(kept["float_compute_nodes"]) - len(f) == len(asked["float_compute_nodes"])


def _shapes(m: onnx.ModelProto) -> dict[str, list[int]]:
    g = onnx.shape_inference.infer_shapes(m).graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*g.value_info, *g.output]}


def test_high_resolution_layers_stay_float_unless_asked(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    src = load_bundle(tiny_bundle).model_path("fp32")
    m = onnx.load(str(src))
    side = m.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    hires = high_resolution_nodes(m)
    shapes = _shapes(m)
    # exactly the nodes with a 4-D output finer than stride 8: the stem, the stride-2/4 blocks
    finer = [n.name for n in m.graph.node if len(shapes.get(n.output[0], [])) == 4
             and min(shapes[n.output[0]][2:]) * 8 > side]
    assert hires == finer and stem_nodes(m)[0] in hires
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n.name in hires]
    assert convs and any(shapes[n.output[0]][2] * 4 == side for n in convs)  # stride 4 is included
    assert any(n.op_type == "Conv" and n.name not in hires for n in m.graph.node)  # stride 8 on is not

    tiles = _tiles(tiny_bundle, tiny_dataset, 4)
    kept = quantize_int8(src, tmp_path / "f.onnx", tiles, progress=False)
    asked = quantize_int8(src, tmp_path / "q.onnx", tiles, progress=False, float_high_resolution=False)
    assert kept["float_high_resolution"] is True and kept["high_resolution_stride"] == 8
    assert kept["high_resolution_nodes"] == len(hires) and asked["high_resolution_nodes"] == 0
    # the stem is float, so the input normalisation stays float too (nothing folds into an int8 stem)
    assert kept["exclude_stem"] is True and kept["input_norm"] != "folded-into-stem"
    assert asked["exclude_stem"] is False and asked["input_norm"] == "folded-into-stem"
    tail = set(scoring_tail(m))  # the blur convs of the map: float anyway
    pointwise = {n.name for n in convs} - set(depthwise_nodes(m)) - tail
    assert stem_nodes(m)[0] in pointwise  # the stem and the stride-2/4 expansions and projections
    assert pointwise <= set(kept["float_compute_nodes"])
    assert not pointwise & set(asked["float_compute_nodes"])
    # every conv at stride 8 and coarser computes in int8 either way, except the depthwise ones
    q = onnx.load(str(tmp_path / "f.onnx"))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    coarse = [n for n in q.graph.node if n.op_type == "Conv" and n.name not in hires and n.name not in tail
              and n.name not in depthwise_nodes(m)]
    assert coarse and all(producers.get(n.input[1]) == "DequantizeLinear" for n in coarse)


def test_high_resolution_needs_a_static_input_side() -> None:
    from onnx import helper

    def graph(h: int | str) -> onnx.ModelProto:
        w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="/c1", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]),
                 helper.make_node("Conv", ["y", "w2"], ["z"], name="/c2", kernel_shape=[1, 1], strides=[8, 8])]
        w2 = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2")
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, h])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w, w2])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    assert high_resolution_nodes(graph(32)) == ["/c1"]  # 16² of 32² is stride 2; c2 is stride 16
    assert high_resolution_nodes(graph(32), max_stride=32) == ["/c1", "/c2"]
    assert high_resolution_nodes(graph("h")) == []  # dynamic side: nothing to compare with


def test_scoring_tail_starts_at_normalisation(tiny_bundle: Path) -> None:
    m = onnx.load(str(load_bundle(tiny_bundle).model_path("fp32")))
    tail = scoring_tail(m)
    ops = {n.name: n.op_type for n in m.graph.node}
    assert {ops[t] for t in tail} >= {"ReduceSum", "Sqrt", "Div", "Resize", "ReduceMax"}
    assert not any("teacher" in t for t in tail)  # the backbone is not part of the tail


def test_tile_reader_rewinds() -> None:
    r = TileReader(np.zeros((5, 4, 4, 3), np.uint8), batch=2, progress=False)
    first = [b["image"].shape[0] for b in iter(r.get_next, None)]
    r.rewind()
    again = [b["image"].shape[0] for b in iter(r.get_next, None)]
    assert first == again == [2, 2, 1]


def test_calibration_without_images_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="--calib-data"):
        calibration_tiles([], load_bundle(tiny_bundle).preprocess)


def test_fp16_conversion_is_topologically_sorted(tiny_bundle: Path, tmp_path: Path) -> None:
    info = convert_fp16(load_bundle(tiny_bundle).model_path("fp32"), tmp_path / "h.onnx")
    onnx.checker.check_model(onnx.load(str(tmp_path / "h.onnx")), full_check=True)
    assert info["keep_io_types"] and info["fp32_scoring_tail"] > 0


def test_input_norm_rewrite_is_exact(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from edgekit.compile.quantize import _input_norm_in_nhwc

    src = load_bundle(tiny_bundle).model_path("fp32")
    m = onnx.load(str(src))
    assert _input_norm_in_nhwc(m)
    assert [n.name for n in m.graph.node[:4]] == ["/input_norm/Cast", "/input_norm/Mul", "/input_norm/Add",
                                                  "/input_norm/Transpose"]
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp_path / "nhwc.onnx"))
    tiles = _tiles(tiny_bundle, tiny_dataset, 4)
    maps0, s0 = ort_run(src, tiles)
    maps1, s1 = ort_run(tmp_path / "nhwc.onnx", tiles)
    np.testing.assert_allclose(s1, s0, rtol=1e-5, atol=1e-6)
    assert not _input_norm_in_nhwc(m)  # applied once


def test_fp16_has_no_cast_round_trips(tiny_multi_bundle: Path) -> None:
    m = onnx.load(str(load_bundle(tiny_multi_bundle).model_path("fp16")))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in m.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16:
            users = consumers.get(n.output[0], [])
            assert not (users and all(u.op_type == "Cast" and u.attribute[0].i == TensorProto.FLOAT for u in users)), n.name
    # the cosine tail's |a|²·|b|² product feeds Sqrt directly (float32), not through fp16 Casts
    producers = {o: n for n in m.graph.node for o in n.output}
    sqrts = [n for n in m.graph.node if n.op_type == "Sqrt"]
    assert sqrts and all(producers[n.input[0]].op_type == "Mul" for n in sqrts)


def _norm_stem_graph(mean: list[float], std: list[float], pads: list[int], size: int = 16) -> onnx.ModelProto:
    """image (1, S, S, 3) uint8 → Transpose → Cast → Sub(mean) → Mul(1/std) → Conv 3x3 s2, as exported."""
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "mean"),
             numpy_helper.from_array((1 / np.asarray(std, np.float32)).reshape(1, 3, 1, 1), "inv_std"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b")]
    nodes = [helper.make_node("Transpose", ["image"], ["t"], name="/Transpose", perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["t"], ["c"], name="/Cast", to=TensorProto.FLOAT),
             helper.make_node("Sub", ["c", "mean"], ["s"], name="/Sub"),
             helper.make_node("Mul", ["s", "inv_std"], ["x"], name="/Mul"),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], name="/stem", kernel_shape=[3, 3], strides=[2, 2], pads=pads)]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, size, size, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_stem(m: onnx.ModelProto, img: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"image": img})[0]


def test_input_norm_fold_is_exact_inside_the_image() -> None:
    from edgekit.compile.quantize import _fold_input_norm_into_stem

    img = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    m = _norm_stem_graph([127.5] * 3, [127.5] * 3, [0, 0, 1, 1])  # tf_efficientnet_lite statistics
    ref = _run_stem(m, img)
    fold = _fold_input_norm_into_stem(m)
    assert fold is not None and fold["zero_point"] == 128 and fold["max_border_error_levels"] == 0.5
    out = _run_stem(m, img)
    # interior outputs (no padded tap) are exact; the last row/column reads padding, where the
    # half-level rest of the mean is off by at most 0.5/127.5 per tap
    np.testing.assert_allclose(out[..., :-1, :-1], ref[..., :-1, :-1], atol=1e-4)
    w = numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "w"))
    bound = 0.5 / 127.5 * np.abs(w).sum(axis=(1, 2, 3)).max()
    assert np.abs(out - ref).max() <= bound + 1e-4
    # the folded stem input is the dequantized pixel: (x - Z)·s, one zero point and one scale
    assert {n.op_type for n in m.graph.node} == {"Transpose", "Cast", "Sub", "Mul", "Conv"}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["input_norm_zero_point"].size == 1 and inits["input_norm_scale"].size == 1


def test_input_norm_fold_refuses_a_padded_stem_with_imagenet_means() -> None:
    from edgekit.compile.quantize import _fold_input_norm_into_stem

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    assert _fold_input_norm_into_stem(_norm_stem_graph(mean, std, [1, 1, 1, 1])) is None
    # without padding the rest of the mean folds into the bias exactly
    img = np.random.default_rng(2).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    m = _norm_stem_graph(mean, std, [0, 0, 0, 0])
    ref = _run_stem(m, img)
    assert _fold_input_norm_into_stem(m) is not None
    np.testing.assert_allclose(_run_stem(m, img), ref, atol=1e-4)


def test_onnxruntime_int8_stem_reads_the_uint8_image(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    src = load_bundle(tiny_bundle).model_path("fp32")
    tiles = _tiles(tiny_bundle, tiny_dataset, 8)
    info = quantize_int8(src, tmp_path / "q.onnx", tiles, progress=False, flavor="onnxruntime",
                         float_high_resolution=False)  # by default the stem is float (high resolution)
    assert info["input_norm"] == "folded-into-stem" and info["input_norm_fold"]["zero_point"] == 128
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q, full_check=True)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # image → Transpose (uint8) → DequantizeLinear → stem: no float op at full resolution
    (tr,) = consumers["image"]
    assert tr.op_type == "Transpose"
    (dq,) = consumers[tr.output[0]]
    assert dq.op_type == "DequantizeLinear" and consumers[dq.output[0]][0].name == stem_nodes(q)[0]
    assert not [n.name for n in q.graph.node if n.name.startswith("/input_norm/")]
    _, s32 = ort_run(src, tiles)
    _, s8 = ort_run(tmp_path / "q.onnx", tiles)
    # scores are standardised per position (z-like, small offset), so judge the int8 error
    # against the spread of the fp32 scores, and the ranking, not against the score's size
    spread = float(np.ptp(s32))
    assert np.max(np.abs(s8 - s32)) < 0.5 * spread
    r32, r8 = np.argsort(np.argsort(s32)), np.argsort(np.argsort(s8))
    assert np.corrcoef(r32, r8)[0, 1] >= 0.8
    # TensorRT's symmetric layout and a float stem keep the float normalisation
    trt = quantize_int8(src, tmp_path / "t.onnx", tiles, progress=False, flavor="tensorrt")
    stem_f = quantize_int8(src, tmp_path / "f.onnx", tiles, progress=False, exclude_stem=True)
    assert trt["input_norm"] == stem_f["input_norm"] == "float-nhwc"


def test_float_kept_convs_run_in_float_in_edgekit_sessions(tiny_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """The depthwise convs the INT8 build keeps in float are still float after onnxruntime's graph
    optimisations in edgekit's sessions (with onnxruntime's defaults they get a per-tensor int8
    weight: ``DISABLED_OPTIMIZERS``), the scores follow the Q/DQ graph's own arithmetic, and the
    manifest says which transformers a session must turn off."""
    import onnxruntime as ort

    from edgekit.runtime.backends.ort import DISABLED_OPTIMIZERS, ort_session, session_options

    src = load_bundle(tiny_bundle).model_path("fp32")
    tiles = _tiles(tiny_bundle, tiny_dataset, 8)
    # high-resolution layers int8: every float depthwise conv then sits between Q/DQ pairs, where
    # onnxruntime's rewrite applies (on this tiny model the ones at stride >= 8 alone do not)
    info = quantize_int8(src, tmp_path / "q.onnx", tiles, progress=False, float_high_resolution=False)
    assert info["float_depthwise"] is True
    assert info["onnxruntime_disabled_optimizers"] == list(DISABLED_OPTIMIZERS)

    def depthwise_weights(path: Path) -> dict[str, str]:  # depthwise conv → what produces its weight
        g = onnx.load(str(path)).graph
        producers = {o: n.op_type for n in g.node for o in n.output}
        return {n.name: producers.get(n.input[1], "initializer") for n in g.node
                if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}

    def optimised(path: Path, ours: bool) -> Path:
        so = session_options(1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # the level that requantizes
        so.optimized_model_filepath = str(path)
        if ours:
            ort_session(tmp_path / "q.onnx", options=so)
        else:
            ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
        return path

    ours = depthwise_weights(optimised(tmp_path / "ours.onnx", True))
    assert ours and set(ours.values()) == {"initializer"}, ours
    plain = depthwise_weights(optimised(tmp_path / "plain.onnx", False))
    if set(plain.values()) == {"initializer"}:
        pytest.skip(f"onnxruntime {ort.__version__} does not requantize float Conv weights")
    assert "DequantizeLinear" in plain.values()  # those whose input comes from a DequantizeLinear
    # and the scores: edgekit's session against the graph computed exactly as written
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
    _, s_exact = exact.run(["anomaly_map", "score"], {"image": tiles})
    _, s_ours = ort_run(tmp_path / "q.onnx", tiles)
    _, s32 = ort_run(src, tiles)
    assert np.max(np.abs(s_ours - s_exact)) < 0.2 * float(np.ptp(s32))
