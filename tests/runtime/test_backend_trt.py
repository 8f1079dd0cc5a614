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
from edgekit.errors import BundleError
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


def _fake_trt(cudart: _FakeCudart, size: int, version: str = "10.3.0"):
    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def set_input_shape(self, name, shape):
            self.shape = shape

        def execute_async_v3(self, stream):
            n = self.shape[0]
            img = cudart.mem[self.addr["image"]][: n * size * size * 3].reshape(n, size, size, 3)
            mean = img.astype(np.float32).mean(axis=3) / 255.0
            cudart.mem[self.addr["score"]][: n * 4] = mean.mean(axis=(1, 2)).astype(np.float32).view(np.uint8)
            cudart.mem[self.addr["anomaly_map"]][: n * size * size * 4] = mean.astype(np.float32).reshape(-1).view(np.uint8)
            return True

    class Engine:
        num_io_tensors = 3

        def get_tensor_name(self, i):
            return ["image", "anomaly_map", "score"][i]

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
