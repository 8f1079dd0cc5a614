"""TensorRT engine builder logic against a recording fake of the TensorRT 10 API, plus a real
build where tensorrt imports (marker ``tensorrt``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.bundle.io import load_bundle
from edgekit.compile.build import build_engines_in
from edgekit.compile.trt_build import EngineSpec, build_engine, device_info
from edgekit.errors import BundleError, DeviceError

from .fake_tensorrt import FakeCudart, FakeTensorRT


def _spec(bundle: Path, tmp: Path, precision: str = "fp16", key: str = "fp32") -> EngineSpec:
    b = load_bundle(bundle)
    return EngineSpec(precision, b.model_path(key), tmp / f"{precision}.engine", b.preprocess.size,
                      batch_min=1, batch_opt=2, batch_max=8, workspace_mib=512, timing_cache_path=tmp / "timing.cache")


def test_fp16_engine_config_is_recorded(tiny_bundle: Path, tmp_path: Path) -> None:
    trt = FakeTensorRT()
    spec = _spec(tiny_bundle, tmp_path)
    info = build_engine(spec, trt)
    calls = trt.calls
    assert ("builder.create_network", 0) in calls  # explicit batch is implicit in TensorRT 10
    assert ("parser.parse_from_file", str(spec.onnx_path)) in calls
    assert ("config.set_memory_pool_limit", "WORKSPACE", 512 << 20) in calls
    assert ("config.set_flag", "FP16") in calls and ("config.set_flag", "INT8") not in calls
    assert ("profile.set_shape", "image", (1, 64, 64, 3), (2, 64, 64, 3), (8, 64, 64, 3)) in calls
    assert ("config.create_timing_cache", 0) in calls and ("config.set_timing_cache", False) in calls
    # order: the profile is added before the build
    names = [c[0] for c in calls]
    assert names.index("config.add_optimization_profile") < names.index("builder.build_serialized_network")
    plan = json.loads(spec.engine_path.read_bytes())
    assert plan["inputs"] == ["image"] and plan["flags"] == ["FP16"]
    assert info == {**info, "tensorrt_version": "10.3.0", "precision": "fp16", "builder_flags": ["FP16"]}
    assert json.loads(spec.timing_cache_path.read_bytes())  # cache written after the build


def test_int8_engine_uses_qdq_model_and_reuses_timing_cache(tiny_multi_bundle: Path, tmp_path: Path) -> None:
    build_engine(_spec(tiny_multi_bundle, tmp_path, "fp16"), FakeTensorRT())
    size_before = (tmp_path / "timing.cache").stat().st_size
    trt = FakeTensorRT()
    build_engine(_spec(tiny_multi_bundle, tmp_path, "int8", "int8"), trt)
    assert ("config.create_timing_cache", size_before) in trt.calls  # previous cache loaded
    assert [c for c in trt.calls if c[0] == "config.set_flag"] == [("config.set_flag", "INT8")]
    assert any(c[0] == "parser.parse_from_file" and c[1].endswith("model.int8.onnx") for c in trt.calls)
    assert len(json.loads((tmp_path / "timing.cache").read_bytes())["entries"]) == 2


def test_tensorrt_8_6_network_gets_the_explicit_batch_flag(tiny_bundle: Path, tmp_path: Path) -> None:
    """JetPack 6.0 ships TensorRT 8.6: create_network(0) is implicit batch there and the ONNX
    parser refuses it; the builder sets the EXPLICIT_BATCH bit below 10 only."""
    trt = FakeTensorRT(version="8.6.2")
    info = build_engine(_spec(tiny_bundle, tmp_path), trt)
    assert ("builder.create_network", 1) in trt.calls and info["network_flags"] == 1
    with pytest.raises(DeviceError, match=r"TensorRT 8\.5\.2 is too old.*JetPack"):
        build_engine(_spec(tiny_bundle, tmp_path), FakeTensorRT(version="8.5.2"))


def test_timing_cache_from_another_device_is_rebuilt_not_trusted(tiny_bundle: Path, tmp_path: Path, caplog) -> None:
    build_engine(_spec(tiny_bundle, tmp_path), FakeTensorRT(device="Orin"))
    trt = FakeTensorRT(device="Xavier")  # the cache file came with a bundle built elsewhere
    with caplog.at_level("WARNING", logger="edgekit.compile"):
        info = build_engine(_spec(tiny_bundle, tmp_path), trt)
    assert [c for c in trt.calls if c[0] == "config.set_timing_cache"] == [("config.set_timing_cache", False)] * 2
    assert info["timing_cache"] == "stale, rebuilt" and "another device" in caplog.text
    assert json.loads((tmp_path / "timing.cache").read_bytes())["device"] == "Xavier"


def test_no_timing_cache_from_tensorrt_leaves_the_old_file(tiny_bundle: Path, tmp_path: Path) -> None:
    build_engine(_spec(tiny_bundle, tmp_path), FakeTensorRT())
    before = (tmp_path / "timing.cache").read_bytes()
    info = build_engine(_spec(tiny_bundle, tmp_path), FakeTensorRT(refuse_all_caches=True))
    assert info["timing_cache"] == "unavailable" and (tmp_path / "timing.cache").read_bytes() == before
    assert (tmp_path / "fp16.engine").is_file() and not list(tmp_path.glob(".*.tmp-*"))


def test_parse_error_and_failed_build_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    spec = EngineSpec("fp16", bad, tmp_path / "x.engine", 64)
    with pytest.raises(BundleError, match="cannot parse.*bad.onnx"):
        build_engine(spec, FakeTensorRT())
    with pytest.raises(BundleError, match="failed to build a fp16 engine"):
        build_engine(_spec(tiny_bundle, tmp_path), FakeTensorRT(fail_build=True))
    assert not (tmp_path / "fp16.engine").exists()
    with pytest.raises(BundleError, match="precision"):
        build_engine(EngineSpec("int4", bad, tmp_path / "x.engine", 64), FakeTensorRT())
    with pytest.raises(BundleError, match="batch profile"):
        build_engine(EngineSpec("fp16", bad, tmp_path / "x.engine", 64, 4, 2, 8), FakeTensorRT())


def test_engine_only_finishes_pending_bundle(tiny_multi_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_multi_bundle, bundle)
    before = load_bundle(bundle).manifest
    assert before["build"]["steps_pending"][0]["step"] == "build-on-device"
    m = build_engines_in(bundle, trt=FakeTensorRT("10.3.0"), cudart=FakeCudart(), quiet=True)
    assert set(m["models"]) == {"fp32", "fp16", "int8", "trt-fp16", "trt-int8"}
    for key in ("trt-fp16", "trt-int8"):
        e = m["models"][key]
        assert e["kind"] == "tensorrt" and e["tensorrt_version"] == "10.3.0"
        assert e["gpu"] == "Orin" and e["compute_capability"] == "8.7"
        assert e["file"] in m["files"]
    assert m["models"]["trt-int8"]["source"] == "model.int8.onnx"
    # the scoring tail is pinned to fp32 (its |a|²·|b|² overflows fp16), shape arithmetic is not
    plan = json.loads((bundle / "model.fp16.engine").read_bytes())
    assert "OBEY_PRECISION_CONSTRAINTS" in plan["flags"] and "FP16" in plan["flags"]
    assert "/model/scorer/ReduceMax" in plan["fp32_layers"]
    assert any(n.startswith("/model/Mul") for n in plan["fp32_layers"])
    assert not any("/Shape" in n or "teacher" in n for n in plan["fp32_layers"])
    assert m["models"]["trt-fp16"]["fp32_layers_pinned"] == len(plan["fp32_layers"])
    assert m["build"]["steps_pending"] == [] and m["build"]["tensorrt_version"] == "10.3.0"
    assert "timing.cache" in m["files"]
    load_bundle(bundle)  # every new file is hashed
    (bundle / "model.fp16.engine").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bundle)


def test_build_on_jetson_with_tensorrt_builds_engines_at_once(tiny_run: Path, tmp_path: Path) -> None:
    from edgekit.compile.build import build_bundle

    out = build_bundle(tiny_run, tmp_path / "b", target="jetson", trt=FakeTensorRT(), cudart=FakeCudart(), quiet=True)
    m = load_bundle(out).manifest
    assert "trt-fp16" in m["models"] and m["build"]["steps_pending"] == []


def test_engine_only_without_int8_model_is_refused(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="no int8 ONNX model"):
        build_engines_in(bundle_copy, ["int8"], trt=FakeTensorRT(), cudart=FakeCudart(), quiet=True)


def test_device_info_reads_cuda_properties() -> None:
    assert device_info(FakeCudart(b"NVIDIA H100", 9, 0)) == {"gpu": "NVIDIA H100", "compute_capability": "9.0"}


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_engine(tiny_bundle: Path, tmp_path: Path) -> None:
    import tensorrt as trt

    info = build_engine(_spec(tiny_bundle, tmp_path), trt)
    assert info["tensorrt_version"] == trt.__version__
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(tmp_path.joinpath("fp16.engine").read_bytes())
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert set(names) == {"image", "anomaly_map", "score"}


def test_failed_engine_build_leaves_the_bundle_as_it_was(tiny_multi_bundle: Path) -> None:
    """--engine-only builds in a staged copy: a failure (here the int8 engine) leaves the bundle,
    its manifest and its files byte for byte as they were, and no staging folder behind."""
    before = {p.name: p.read_bytes() for p in tiny_multi_bundle.iterdir() if p.is_file()}
    with pytest.raises(BundleError, match="failed to build"):
        build_engines_in(tiny_multi_bundle, ["fp16", "int8"], trt=FakeTensorRT(fail_build=True), cudart=FakeCudart())
    assert {p.name: p.read_bytes() for p in tiny_multi_bundle.iterdir() if p.is_file()} == before
    assert [p.name for p in tiny_multi_bundle.parent.iterdir() if p.name.startswith(".")] == []
