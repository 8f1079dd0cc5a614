"""onnxruntime backend (CPU or CUDA execution provider). Torch is never imported."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgekit.bundle.io import Bundle
from edgekit.config.base import StrictModel
from edgekit.errors import BundleError, DeviceError
from edgekit.runtime.backends.base import BACKENDS, Backend
from edgekit.runtime.types import Batch, RawOutput

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def session_options(threads: int = 0, profile_prefix: str | None = None) -> Any:
    """The one onnxruntime session configuration edgekit uses everywhere (daemon, evaluation,
    build checks, ``bench``, benchmarks), so that what is measured is what runs on the line.

    Args:
        threads: intra-op threads; 0 lets onnxruntime choose (one per core).
        profile_prefix: write a per-node profile trace with this file prefix.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class OrtBackendConfig(StrictModel):
    type: Literal["onnxruntime"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(1, ge=1, le=64)  # intra-op threads; keep cores free for capture
    maps: bool = True  # fetch anomaly maps (needed for the reject archive heat-maps)


@BACKENDS.register("onnxruntime", precisions=("fp32", "fp16", "int8"), devices=("cpu", "cuda"))
class OrtBackend(Backend):
    """Runs the bundle's ONNX model: input ``image`` uint8 (N, S, S, 3) RGB, outputs
    ``anomaly_map`` float32 (N, 1, S, S) and ``score`` float32 (N,)."""

    config_model = OrtBackendConfig

    def __init__(self, cfg: OrtBackendConfig) -> None:
        super().__init__(cfg)
        self._sess = None
        self._outputs: list[str] = []

    def load(self, bundle: Bundle) -> None:
        import onnxruntime as ort

        path = bundle.model_path(self.cfg.precision)
        available = ort.get_available_providers()
        wanted = _PROVIDERS[self.cfg.device]
        if wanted not in available:
            # never fall back silently to another device: refuse with the fix
            raise DeviceError(
                f"onnxruntime has no {wanted} here (available: {', '.join(available)}); "
                "install onnxruntime-gpu or set backend.device: cpu"
            )
        opts = session_options(self.cfg.threads)
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load the model ({str(exc).splitlines()[0]}); rebuild the bundle") from None
        names = {o.name for o in sess.get_outputs()}
        if "score" not in names or [i.name for i in sess.get_inputs()] != ["image"]:
            raise BundleError(f"{path}: model does not follow the contract (input 'image', outputs "
                              "'anomaly_map', 'score'); rebuild with `edgekit build`")
        shape = sess.get_inputs()[0].shape
        self.input_size = int(shape[1]) if isinstance(shape[1], int) else bundle.preprocess.size
        self._outputs = ["score", "anomaly_map"] if (self.cfg.maps and "anomaly_map" in names) else ["score"]
        self._sess = sess
        self.model_id = f"{bundle.bundle_id}:{self.cfg.precision}"

    def infer(self, batch: Batch) -> RawOutput:
        if self._sess is None:
            raise DeviceError("onnxruntime backend used before load()")
        t0 = time.perf_counter()
        out = self._sess.run(self._outputs, {"image": batch.tiles})
        scores = np.asarray(out[0], dtype=np.float32).reshape(-1)
        maps = np.asarray(out[1], dtype=np.float32)[:, 0] if len(out) > 1 else None
        stage = dict(batch.stage_s)
        stage["infer"] = time.perf_counter() - t0
        return RawOutput(batch.frame, scores, maps, self.model_id, stage)

    def close(self) -> None:
        self._sess = None
