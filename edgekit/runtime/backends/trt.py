"""TensorRT backend (10.x; 8.6 on JetPack 6.0) for engines built on the device by ``edgekit build BUNDLE --target jetson
--engine-only`` (manifest keys ``trt-fp16``, ``trt-int8``, ``trt-fp32``).

API used (TensorRT 10 Python): ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``,
``engine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode``,
``engine.create_execution_context()``, ``context.set_input_shape``, ``context.set_tensor_address``,
``context.execute_async_v3(stream)``; device memory and copies with cuda-python's ``cudart``
(``cudaMalloc``, ``cudaMemcpyAsync``, ``cudaStreamSynchronize``). Engines are not portable: the
TensorRT version and GPU recorded in the manifest must match this device, else the bundle is
refused with the command that rebuilds the engine here (no silent fallback to onnxruntime)."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np

from edgekit.bundle.io import Bundle
from edgekit.config.base import StrictModel
from edgekit.errors import BundleError, DeviceError
from edgekit.runtime.backends.base import BACKENDS, Backend
from edgekit.runtime.types import Batch, RawOutput


class TrtBackendConfig(StrictModel):
    type: Literal["tensorrt"] = "tensorrt"
    precision: Literal["fp16", "int8", "fp32"] = "fp16"
    maps: bool = True
    check_target: bool = True  # refuse engines built for another GPU / TensorRT version


def _tensor_names(spec: Any) -> list[str]:
    """Tensor names of a manifest's ``inputs``/``outputs`` (a list of {name: ...} or a dict by name)."""
    if isinstance(spec, dict):
        return list(spec)
    return [t["name"] for t in spec or []]


def _check(err: Any, what: str) -> None:
    code = err[0] if isinstance(err, tuple) else err
    if int(code) != 0:
        raise DeviceError(f"CUDA {what} failed ({code}); check the GPU with tegrastats / nvidia-smi")


@BACKENDS.register("tensorrt", precisions=("fp16", "int8", "fp32"), devices=("cuda",))
class TrtBackend(Backend):
    """Runs a bundle's TensorRT engine; input ``image`` uint8 (N, S, S, 3), outputs ``score``
    float32 (N,) and ``anomaly_map`` float32 (N, 1, S, S), N up to the engine profile's max."""

    config_model = TrtBackendConfig

    def __init__(self, cfg: TrtBackendConfig, trt: Any = None, cudart: Any = None) -> None:
        super().__init__(cfg)
        self._trt = trt
        self._cudart = cudart
        self._engine: Any = None
        self._ctx: Any = None
        self._stream: Any = None
        self._buffers: dict[str, int] = {}
        self._batch_max = 1

    def _modules(self) -> tuple[Any, Any]:
        from edgekit.compile.trt_build import check_trt_version, import_cudart, import_tensorrt

        if self._trt is None:
            self._trt = import_tensorrt()
        check_trt_version(self._trt)  # 8.6 (JetPack 6.0) and 10.x; older: one line naming JetPack
        if self._cudart is None:
            self._cudart = import_cudart()  # the hint names cuda-python>=12,<13
        return self._trt, self._cudart

    def check_target(self, bundle: Bundle, trt: Any, gpu: str | None) -> dict[str, Any]:
        """The engine entry of the manifest, refused when built for another TensorRT or GPU."""
        key = f"trt-{self.cfg.precision}"
        if key not in bundle.models:
            raise BundleError(f"{bundle.path}: no TensorRT {self.cfg.precision} engine; build it on this device: "
                              f"edgekit build {bundle.path} --target jetson --engine-only --precision {self.cfg.precision}")
        entry = bundle.models[key]
        if self.cfg.check_target:
            built_v, here_v = str(entry.get("tensorrt_version")), str(trt.__version__)
            built_gpu = entry.get("gpu")
            if built_v != here_v or (gpu is not None and built_gpu is not None and built_gpu != gpu):
                raise BundleError(
                    f"{bundle.path}: engine {entry['file']} was built with TensorRT {built_v} on {built_gpu}, this device "
                    f"has TensorRT {here_v} on {gpu}; rebuild here: edgekit build {bundle.path} --target jetson --engine-only"
                )
        return entry

    def load(self, bundle: Bundle) -> None:
        from edgekit.compile.trt_build import device_info

        trt, cudart = self._modules()
        entry = self.check_target(bundle, trt, device_info(cudart).get("gpu"))
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(bundle.model_path(f"trt-{self.cfg.precision}").read_bytes())
        if engine is None:
            raise BundleError(f"{bundle.path}: TensorRT could not deserialize {entry['file']}; rebuild it on this device")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        want = [n for k in ("inputs", "outputs") for n in _tensor_names(bundle.manifest.get(k))]
        want = want or ["image", "anomaly_map", "score"]
        if sorted(names) != sorted(want):
            raise BundleError(f"{bundle.path}: engine {entry['file']} has I/O tensors {sorted(names)}, the manifest "
                              f"{sorted(want)}; rebuild it here: edgekit build {bundle.path} --target jetson --engine-only")
        self._engine = engine
        self._ctx = engine.create_execution_context()
        self._batch_max = int(entry.get("profile", {}).get("batch", [1, 1, 1])[-1])
        self.input_size = int(bundle.preprocess.size)
        s = self.input_size
        sizes = {"image": self._batch_max * s * s * 3, "score": self._batch_max * 4,
                 "anomaly_map": self._batch_max * s * s * 4}
        err, self._stream = cudart.cudaStreamCreate()
        _check(err, "cudaStreamCreate")
        for name in names:
            err, ptr = cudart.cudaMalloc(sizes[name])
            _check(err, f"cudaMalloc({name})")
            self._buffers[name] = int(ptr)
            self._ctx.set_tensor_address(name, int(ptr))
        self.model_id = f"{bundle.bundle_id}:trt-{self.cfg.precision}"

    def _run_chunk(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        cudart = self._cudart
        n, s = tiles.shape[0], self.input_size
        x = np.ascontiguousarray(tiles)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._buffers["image"], x.ctypes.data, x.nbytes, h2d, self._stream), "copy in")
        if not self._ctx.set_input_shape("image", (n, s, s, 3)):  # outside the engine's profile
            raise DeviceError(f"TensorRT refused input shape {(n, s, s, 3)} (profile batch 1..{self._batch_max}); "
                              "rebuild the engine: edgekit build BUNDLE --target jetson --engine-only")
        if not self._ctx.execute_async_v3(self._stream):
            raise DeviceError("TensorRT execute_async_v3 failed")
        scores = np.empty((n,), np.float32)
        _check(cudart.cudaMemcpyAsync(scores.ctypes.data, self._buffers["score"], scores.nbytes, d2h, self._stream),
               "copy out")
        maps = None
        if self.cfg.maps and "anomaly_map" in self._buffers:
            maps = np.empty((n, s, s), np.float32)
            _check(cudart.cudaMemcpyAsync(maps.ctypes.data, self._buffers["anomaly_map"], maps.nbytes, d2h,
                                          self._stream), "copy out")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return scores, maps

    def infer(self, batch: Batch) -> RawOutput:
        if self._ctx is None:
            raise DeviceError("tensorrt backend used before load()")
        t0 = time.perf_counter()
        parts = [self._run_chunk(batch.tiles[i:i + self._batch_max])
                 for i in range(0, batch.tiles.shape[0], self._batch_max)]
        scores = np.concatenate([p[0] for p in parts])
        maps = np.concatenate([p[1] for p in parts]) if all(p[1] is not None for p in parts) else None
        stage = dict(batch.stage_s)
        stage["infer"] = time.perf_counter() - t0
        return RawOutput(batch.frame, scores, maps, self.model_id, stage)

    def close(self) -> None:
        cudart = self._cudart
        for ptr in self._buffers.values():
            cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._ctx = None
        self._engine = None
