"""onnxruntime backend helpers: CPU int8 capability detection."""

from __future__ import annotations

import pytest

from edgekit.runtime.backends.ort import cpu_int8_dot


@pytest.mark.parametrize("flags, machine, expected", [
    ("fpu sse2 avx2 fma avx512f avx512_vnni", "x86_64", True),
    ("fpu sse2 avx2 fma avx_vnni", "x86_64", True),
    ("fpu sse2 avx2 fma", "x86_64", False),  # Zen 3 / Haswell-class: pmaddubsw saturates
    ("", "aarch64", True),
    ("", "riscv64", None),
])
def test_cpu_int8_dot_from_flags(flags: str, machine: str, expected: bool | None) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n" if flags else "processor\t: 0\n"
    assert cpu_int8_dot(cpuinfo, machine) is expected


def test_cpu_int8_dot_without_flags_line_is_unknown() -> None:
    assert cpu_int8_dot("processor : 0\n", "x86_64") is None


@pytest.fixture(scope="module")
def int8_bundle(tiny_run, tiny_dataset, tmp_path_factory):
    """An fp32 + int8 bundle of the tiny run with 8-bit weights, built by this edgekit."""
    from edgekit.compile.build import build_bundle

    return build_bundle(tiny_run, tmp_path_factory.mktemp("int8") / "b", precisions=["fp32", "int8"],
                        eval_data=tiny_dataset, allow_degraded=True, calib_max_tiles=8,
                        int8_reduce_range=False, quiet=True)


def test_int8_with_8bit_weights_warns_on_a_cpu_without_vnni(int8_bundle, monkeypatch) -> None:
    import io
    import json

    from edgekit.bundle.io import load_bundle
    from edgekit.runtime.backends import ort as ort_backend
    from edgekit.runtime.logs import setup_logging

    out = int8_bundle
    stream = io.StringIO()
    setup_logging("json", stream=stream)
    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: False)
    be = ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="int8"))
    be.load(load_bundle(out))  # runs anyway: a warning, not a refusal
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    warn = [e for e in events if e.get("event") == "int8_saturation_risk"]
    assert len(warn) == 1 and "--int8-reduce-range" in warn[0]["fix"]
    stream.truncate(0)
    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: True)
    ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="int8")).load(load_bundle(out))
    assert "int8_saturation_risk" not in stream.getvalue()
    assert "int8_gate_stale" not in stream.getvalue()  # built by this edgekit: its gate is current


def test_int8_bundle_gated_under_the_old_session_warns(int8_bundle, tmp_path) -> None:
    """A bundle built before edgekit's sessions kept the float depthwise convs float (its manifest
    lacks ``onnxruntime_disabled_optimizers``) still runs, with one warning that says to rebuild."""
    import io
    import json
    import shutil

    from edgekit.bundle.io import load_bundle
    from edgekit.runtime.backends import ort as ort_backend
    from edgekit.runtime.logs import setup_logging

    old = tmp_path / "old"
    shutil.copytree(int8_bundle, old)
    mf = json.loads((old / "manifest.json").read_text())
    q = mf["models"]["int8"]["quantization"]
    assert q["float_depthwise"] is True and q.pop("onnxruntime_disabled_optimizers")
    (old / "manifest.json").write_text(json.dumps(mf))
    stream = io.StringIO()
    setup_logging("json", stream=stream)
    be = ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="int8"))
    be.load(load_bundle(old))
    warn = [e for e in map(json.loads, stream.getvalue().splitlines()) if e.get("event") == "int8_gate_stale"]
    assert len(warn) == 1 and "edgekit build" in warn[0]["fix"]
    stream.truncate(0)
    ort_backend.OrtBackend(ort_backend.OrtBackendConfig(precision="fp32")).load(load_bundle(old))
    assert "int8_gate_stale" not in stream.getvalue()  # FP32 has no DequantizeLinear: nothing changed


def _qdq_depthwise_model() -> bytes:
    """Q → DQ → a depthwise Conv whose float weights span four orders of magnitude per channel
    (what edgekit's INT8 build leaves in float) → Q → DQ, as onnxruntime sees it in a bundle."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * np.array([1e-3, 1e-2, 1e-1, 10.0], np.float32)[:, None, None, None]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "zp"),
             numpy_helper.from_array(np.array(1 / 64, np.float32), "s2"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("Conv", ["xd", "w", "b"], ["c"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "s2", "zp2"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s2", "zp2"], ["y"])]
    g = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _reference_and(session_factory):
    import numpy as np
    import onnxruntime as ort

    model = _qdq_depthwise_model()
    x = {"x": np.random.default_rng(1).random((1, 4, 8, 8), dtype=np.float32)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, x)[0]
    return reference, session_factory(model).run(None, x)[0]


def test_sessions_keep_the_float_convolutions_of_an_int8_model_in_float() -> None:
    """onnxruntime's WeightBiasQuantization would give the float depthwise weights one int8 scale
    for all channels. edgekit's sessions turn it off, so the Conv computes what the graph says (the
    reference: every graph optimisation off)."""
    import numpy as np

    from edgekit.runtime.backends.ort import ort_session

    reference, ours = _reference_and(lambda m: ort_session(m, threads=1))
    assert np.abs(reference[0, 1]).max() >= 2 / 64  # the small channel has an output ...
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)  # ... and it is computed exactly


def test_onnxruntime_defaults_requantize_float_convolutions() -> None:
    """Why ``DISABLED_OPTIMIZERS`` exists: with onnxruntime's defaults the small channel of the same
    model is zeroed (its weights quantized with the large channel's scale)."""
    import numpy as np
    import onnxruntime as ort

    from edgekit.runtime.backends.ort import session_options

    reference, plain = _reference_and(
        lambda m: ort.InferenceSession(m, session_options(1), providers=["CPUExecutionProvider"]))
    if np.array_equal(plain, reference):
        pytest.skip(f"onnxruntime {ort.__version__} does not requantize float Conv weights (no WeightBiasQuantization)")
    assert np.abs(reference[0, 1]).max() >= 2 / 64
    assert np.abs(plain[0, 1]).max() == 0.0
