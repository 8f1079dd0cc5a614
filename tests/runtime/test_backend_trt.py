"""TensorRT backend: target checks (engine built elsewhere → refused with the rebuild command)
and the load → infer data path driven through a small fake of the TensorRT 10 / cudart API
(the real engine runs only on a device: ``tensorrt`` marker)."""

from __future__ import annotations

import ctypes
import json
import types

import numpy as np
import pytest

from edgekit.bundle.io import load_bundle, write_manifest
from edgekit.errors import BundleError, DeviceError
from edgekit.runtime.backends.trt import TrtBackend, TrtBackendConfig
from edgekit.runtime.types import Batch, Frame


class _FakeCudart:
    """Device memory = numpy buffers; copies by address (what cudaMemcpyAsync does)."""

    class cudaMemcpyKind:  # noqa: N801 (mirrors the cudart enum)
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.mem: dict[int, np.ndarray] = {}

    def cudaGetDeviceProperties(self, dev):  # noqa: N802
        return 0, types.SimpleNamespace(name=b"Orin (fake)", major=8, minor=7)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 1

    def cudaMalloc(self, n):  # noqa: N802
        buf = np.zeros(n, np.uint8)
        self.mem[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, n)
        return (0,)

    def cudaStreamSynchronize(self, s):  # noqa: N802
        return (0,)

    def cudaFree(self, p):  # noqa: N802
        self.mem.pop(p, None)
        return (0,)

    def cudaStreamDestroy(self, s):  # noqa: N802
        return (0,)


def _fake_trt(cudart: _FakeCudart, size: int, version: str = "10.3.0", max_batch: int = 2,
              tensors: tuple[str, ...] = ("image", "anomaly_map", "score")):
    """TensorRT runtime surface: ``set_input_shape`` returns False outside the profile (as the
    real IExecutionContext does), the engine's I/O tensor names are configurable."""

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= max_batch:
                return False
            self.shape = shape
            return True

        def execute_async_v3(self, stream):
            n = self.shape[0]
            img = cudart.mem[self.addr["image"]][: n * size * size * 3].reshape(n, size, size, 3)
            mean = img.astype(np.float32).mean(axis=3) / 255.0
            cudart.mem[self.addr["score"]][: n * 4] = mean.mean(axis=(1, 2)).astype(np.float32).view(np.uint8)
            cudart.mem[self.addr["anomaly_map"]][: n * size * size * 4] = mean.astype(np.float32).reshape(-1).view(np.uint8)
            return True

    class Engine:
        num_io_tensors = len(tensors)

        def get_tensor_name(self, i):
            return tensors[i]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data.startswith(b"ENGINE") else None

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    return types.SimpleNamespace(__version__=version, Runtime=Runtime, Logger=Logger)


@pytest.fixture()
def trt_bundle(tmp_path, intensity_bundle):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(intensity_bundle, b)
    (b / "model.fp16.engine").write_bytes(b"ENGINE-fake")
    m = json.loads((b / "manifest.json").read_text())
    m["models"]["trt-fp16"] = {"file": "model.fp16.engine", "kind": "tensorrt", "tensorrt_version": "10.3.0",
                               "gpu": "Orin (fake)", "compute_capability": "8.7", "profile": {"batch": [1, 1, 2]}}
    m["files"]["model.fp16.engine"] = ""
    write_manifest(b, m)
    return load_bundle(b)


def test_engine_from_another_tensorrt_is_refused(trt_bundle) -> None:
    cud = _FakeCudart()
    be = TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32, version="10.7.0"), cudart=cud)
    with pytest.raises(BundleError, match=r"TensorRT 10\.3\.0 .* TensorRT 10\.7\.0.*--engine-only"):
        be.load(trt_bundle)
    with pytest.raises(BundleError, match="no TensorRT int8 engine"):
        TrtBackend(TrtBackendConfig(precision="int8"), trt=_fake_trt(cud, 32), cudart=cud).load(trt_bundle)


def test_infer_chunks_tiles_over_the_profile(trt_bundle) -> None:
    cud = _FakeCudart()
    be = TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32), cudart=cud)
    be.load(trt_bundle)
    tiles = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (10, 100, 200)])  # 3 tiles, profile max 2
    out = be.infer(Batch(Frame(0, "c", 0, tiles[0]), tiles, {}))
    assert np.allclose(out.tile_scores, np.array([10, 100, 200]) / 255.0, atol=1e-6)
    assert out.maps.shape == (3, 32, 32) and out.model_id.endswith(":trt-fp16")
    be.close()
    assert cud.mem == {}


@pytest.mark.tensorrt
def test_real_tensorrt_importable() -> None:
    from edgekit.compile.trt_build import import_tensorrt

    assert import_tensorrt().__version__.startswith("10.")


def test_engine_with_other_io_tensors_than_the_manifest_is_refused(trt_bundle) -> None:
    cud = _FakeCudart()
    be = TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32, tensors=("input", "output")), cudart=cud)
    with pytest.raises(BundleError, match=r"has I/O tensors \['input', 'output'\], the manifest \['anomaly_map', "
                                          r"'image', 'score'\]; rebuild it here: .*--engine-only"):
        be.load(trt_bundle)


def test_refused_input_shape_is_an_error_not_garbage(trt_bundle) -> None:
    """set_input_shape returns False (shape outside the profile): TensorRT would run with the
    previous shape; the backend stops with one line instead."""
    cud = _FakeCudart()
    be = TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32, max_batch=1), cudart=cud)
    be.load(trt_bundle)  # the manifest's profile says max 2, this engine takes 1
    tiles = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(DeviceError, match=r"TensorRT refused input shape \(2, 32, 32, 3\)"):
        be.infer(Batch(Frame(0, "c", 0, tiles[0]), tiles, {}))
    be.close()


def test_old_tensorrt_refused_naming_jetpack_and_missing_cuda_python_names_the_pin(trt_bundle, monkeypatch) -> None:
    import sys

    cud = _FakeCudart()
    with pytest.raises(DeviceError, match=r"TensorRT 8\.5\.2 is too old .*JetPack 6\.0.*JetPack 6\.1/6\.2"):
        TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32, version="8.5.2"), cudart=cud).load(trt_bundle)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # cuda-python not installed
    with pytest.raises(DeviceError, match=r"pip install 'cuda-python>=12,<13'.*cudaErrorInsufficientDriver"):
        TrtBackend(TrtBackendConfig(), trt=_fake_trt(cud, 32)).load(trt_bundle)
