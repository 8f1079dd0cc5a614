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


def cpu_int8_dot(cpuinfo: str | None = None, machine: str | None = None) -> bool | None:
    """Whether this CPU multiplies int8 without saturating: x86 with VNNI (AVX512-VNNI or
    AVX-VNNI: u8·s8 products accumulate in int32), or ARM. x86 without VNNI runs onnxruntime's
    u8s8 kernels through ``pmaddubsw``, whose int16 pair sums saturate with full 8-bit weights,
    so such CPUs need 7-bit weights (``reduce_range``). None when it cannot be told.

    Args:
        cpuinfo: text of /proc/cpuinfo (read when None).
        machine: ``platform.machine()`` (read when None).
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return None
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512_vnni" in flags or "avx_vnni" in flags


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
    # worker threads still spin between the ops of a run (where it pays), but stop when the run
    # returns: an idle session's spinning workers otherwise hold a core that the camera thread,
    # or another model timed side by side, needs (measured on 2 cores: with two 2-thread sessions
    # alternating, FP32 11.4 ms instead of 7.4 ms)
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


# onnxruntime graph transformers edgekit turns off in every session it makes.
# ``WeightBiasQuantization`` (level 1; onnxruntime 1.21+, microsoft/onnxruntime#22969; since 1.22
# only where the node's output feeds a QuantizeLinear, #24537) gives every Conv/ConvTranspose/Gemm
# whose input comes from a DequantizeLinear but whose weight is a float initializer a *per-tensor*
# int8 weight, so that the node fuses into a QLinearConv. edgekit's INT8 bundles keep the depthwise
# convolutions in float on purpose (their per-channel weight ranges differ by orders of magnitude):
# requantized per tensor, the rd-mem-lite0 ELPV mono bundle lost 2.7 pt image AUROC (0.933 with Q/DQ
# computed exactly, 0.906 with the transformer on; measured 2026-12-04, onnxruntime 1.32). FP32
# models have no DequantizeLinear, so this changes nothing for them. onnxruntime ignores names it
# does not know (checked on 1.32 with a made-up one), so versions before 1.21 load as before.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


def ort_session(model: Any, threads: int = 0, providers: list[str] | None = None,
                profile_prefix: str | None = None, options: Any = None) -> Any:
    """An onnxruntime ``InferenceSession`` as edgekit makes every one of them: ``session_options``
    and the transformers in ``DISABLED_OPTIMIZERS`` off, so that the float nodes the INT8 build kept
    in float stay float on every machine.

    Args:
        model: ONNX file path or serialised model bytes.
        threads: intra-op threads (0: one per core).
        providers: execution providers (default: CPU only).
        profile_prefix: write a per-node profile trace with this file prefix.
        options: ``SessionOptions`` to use instead of ``session_options(threads, profile_prefix)``.
    """
    import onnxruntime as ort

    so = options if options is not None else session_options(threads, profile_prefix)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=providers or ["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


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
        providers = [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
        try:
            sess = ort_session(path, self.cfg.threads, providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{path}: onnxruntime cannot load the model ({str(exc).splitlines()[0]}); rebuild the bundle") from None
        q = bundle.models.get(self.cfg.precision, {}).get("quantization", {})
        if self.cfg.precision == "int8":
            self._int8_warnings(str(path), q)
        names = {o.name for o in sess.get_outputs()}
        if "score" not in names or [i.name for i in sess.get_inputs()] != ["image"]:
            raise BundleError(f"{path}: model does not follow the contract (input 'image', outputs "
                              "'anomaly_map', 'score'); rebuild with `edgekit build`")
        shape = sess.get_inputs()[0].shape
        self.input_size = int(shape[1]) if isinstance(shape[1], int) else bundle.preprocess.size
        self._outputs = ["score", "anomaly_map"] if (self.cfg.maps and "anomaly_map" in names) else ["score"]
        self._sess = sess
        self.model_id = f"{bundle.bundle_id}:{self.cfg.precision}"

    @staticmethod
    def _int8_warnings(model: str, q: dict[str, Any]) -> None:
        """What an INT8 model's manifest says about running it here: warnings, never a refusal."""
        import logging

        from edgekit.runtime.logs import LOGGER_NAME, emit

        log = logging.getLogger(LOGGER_NAME)
        if q.get("reduce_range") is False and cpu_int8_dot() is False:
            # the model runs, but u8s8 products may saturate; the accuracy gate ran on the build
            # host, which had VNNI
            emit(log, logging.WARNING, "int8_saturation_risk", model=model,
                 fix="this CPU has no VNNI: rebuild the bundle with `edgekit build --int8-reduce-range` "
                 "(7-bit weights) or run precision fp32")
        if q.get("float_depthwise") and "onnxruntime_disabled_optimizers" not in q:
            # built before edgekit's sessions turned WeightBiasQuantization off: the build's gate
            # scored the depthwise convs as per-tensor int8, this session runs them float
            emit(log, logging.WARNING, "int8_gate_stale", model=model,
                 fix="this bundle's INT8 accuracy gate was measured while onnxruntime re-quantized its "
                 "float depthwise convolutions; rebuild it with `edgekit build --eval-data DIR` so the "
                 "gate measures what runs now")

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
