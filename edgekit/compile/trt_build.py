"""Build TensorRT engines from a bundle's ONNX files, on the device that will run them.

Engines are not portable across GPUs or TensorRT versions, so ``edgekit build --target jetson``
on a workstation records a ``build-on-device`` step and ``edgekit build BUNDLE --target jetson
--engine-only`` finishes it on the Jetson (JetPack 6, TensorRT 10.x). Written against the
TensorRT 10 Python API; the ``trt`` module is a parameter so tests drive the same logic with a
recording fake of the API surface.

Precisions: ``fp32`` and ``fp16`` engines come from the FP32 ONNX (TensorRT picks fp16 kernels
under ``BuilderFlag.FP16``); ``int8`` comes from the explicit Q/DQ ONNX (``BuilderFlag.INT8``;
TensorRT 10 takes the scales from the Q/DQ nodes, no calibrator)."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError, DeviceError

log = logging.getLogger("edgekit.compile")

INPUT_NAME = "image"
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class EngineSpec:
    """One engine to build.

    Args:
        precision: "fp32", "fp16" or "int8".
        onnx_path: source ONNX (FP32 model for fp32/fp16, Q/DQ model for int8).
        engine_path: where the serialized engine goes.
        input_size: S of the (N, S, S, 3) uint8 input.
        batch_min / batch_opt / batch_max: optimisation profile for the batch (tile) dimension.
        workspace_mib: builder workspace memory pool limit.
        timing_cache_path: read before and written after the build (shared by all engines).
        fp32_layers: ONNX node names pinned to float32 in reduced-precision engines (the scoring
            tail: ``|a|²·|b|²`` of the cosine overflows fp16), enforced with
            ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``.
    """

    precision: str
    onnx_path: Path
    engine_path: Path
    input_size: int
    batch_min: int = 1
    batch_opt: int = 1
    batch_max: int = 8
    workspace_mib: int = 1024
    timing_cache_path: Path | None = None
    fp32_layers: tuple[str, ...] = ()


def import_tensorrt() -> Any:
    """The real ``tensorrt`` module or a DeviceError naming how to get it."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: libnvinfer missing behind the wheel
        raise DeviceError(
            f"tensorrt is not importable here ({exc.__class__.__name__}); build engines on the device. "
            f"{TRT_INSTALL}; then run `edgekit build BUNDLE --target jetson --engine-only` there"
        ) from None
    return tensorrt


# one install hint for TensorRT, used by build, the backend and doctor
TRT_INSTALL = ("TensorRT comes with JetPack, not pip: `sudo apt install nvidia-tensorrt python3-libnvinfer` and a "
               "venv created with --system-site-packages (firmware_scripts/provision.sh does both)")
# cuda-python 13 (cuda-bindings 13) needs a CUDA 13 driver (>= 580); JetPack 6.x has CUDA 12.6
CUDA_PYTHON_PIN = "cuda-python>=12,<13"
CUDA_PYTHON_HINT = (f"pip install '{CUDA_PYTHON_PIN}' (JetPack 6 has CUDA 12: cuda-python 13 fails with "
                    "cudaErrorInsufficientDriver; provision.sh installs the pin)")
# JetPack 6.0 = TensorRT 8.6, 6.1/6.2 = TensorRT 10.3; 8.5 is the first with the name-based I/O API
TRT_MIN = (8, 6)


def trt_version(trt: Any) -> tuple[int, int]:
    parts = str(getattr(trt, "__version__", "0.0")).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def check_trt_version(trt: Any) -> str:
    """One line on this TensorRT: supported (and how), or a DeviceError naming the JetPack to use."""
    v = trt_version(trt)
    if v < TRT_MIN:
        raise DeviceError(f"TensorRT {trt.__version__} is too old (edgekit needs >= 8.6: JetPack 6.0, or 10.x: "
                          "JetPack 6.1/6.2); upgrade JetPack (sudo apt install nvidia-jetpack on 6.x)")
    if v[0] < 10:
        return f"TensorRT {trt.__version__} (JetPack 6.0): supported, networks built with the EXPLICIT_BATCH flag"
    return f"TensorRT {trt.__version__}: supported"


def import_cudart() -> Any:
    """cuda-python's runtime module (either layout) or a DeviceError with the exact pin."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python layout
        except ImportError:
            raise DeviceError(f"TensorRT needs cuda-python here: {CUDA_PYTHON_HINT}") from None
    return cudart


def device_info(cudart: Any = None) -> dict[str, Any]:
    """GPU name and compute capability of CUDA device 0 via cuda-python (cudaGetDeviceProperties).

    Returns {"gpu": str, "compute_capability": "8.7"}; values are None when cuda-python is missing."""
    if cudart is None:
        try:
            cudart = import_cudart()
        except DeviceError:
            return {"gpu": None, "compute_capability": None}
    err, prop = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise DeviceError(f"cudaGetDeviceProperties failed ({err}); is the GPU visible (nvidia-smi / tegrastats)?")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu": name, "compute_capability": f"{prop.major}.{prop.minor}"}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    # parse_from_file lets the parser resolve external data next to the model
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BundleError(f"{onnx_path}: TensorRT cannot parse the model: {'; '.join(errors) or 'unknown error'}; "
                          "report this with the bundle's manifest")
    return parser


def _pin_fp32(trt: Any, network: Any, node_names: tuple[str, ...]) -> int:
    """Set precision and output types of the layers parsed from ``node_names`` to float32.

    The ONNX parser names a node's layer after the node (extra layers get a suffix). Layers with
    non-float outputs (shape arithmetic) are left alone. Returns the number of layers pinned."""
    keep = set(node_names)
    if not keep:
        return 0
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        name = layer.name
        if not (name in keep or any(name.startswith(n + "_") or name.startswith(n + " ") for n in keep)):
            continue
        if layer.num_outputs == 0 or layer.get_output(0).dtype not in (trt.float32, trt.float16):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(spec: EngineSpec, trt: Any = None) -> dict[str, Any]:
    """Parse ``spec.onnx_path``, configure the builder, serialize the engine and the timing cache.

    Args:
        trt: the tensorrt module (default: import it); tests pass a recording fake.
    Returns: facts for the manifest (tensorrt_version, precision, flags, profile, workspace)."""
    trt = trt or import_tensorrt()
    if spec.precision not in ("fp32", "fp16", "int8"):
        raise BundleError(f"TensorRT precision {spec.precision!r} unknown; use fp32, fp16 or int8")
    if not (1 <= spec.batch_min <= spec.batch_opt <= spec.batch_max):
        raise BundleError(f"batch profile {spec.batch_min}/{spec.batch_opt}/{spec.batch_max} must satisfy 1 <= min <= opt <= max")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    check_trt_version(trt)
    # TensorRT 10: explicit batch is the only mode (flag 0). 8.6: 0 means implicit batch, which the
    # ONNX parser refuses, so the EXPLICIT_BATCH bit must be set
    net_flags = 0
    if trt_version(trt)[0] < 10:
        net_flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(net_flags)
    _parse(trt, network, logger, spec.onnx_path)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if INPUT_NAME not in names:
        raise BundleError(f"{spec.onnx_path}: network inputs {names} lack {INPUT_NAME!r}; rebuild the bundle")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    flags = []
    if spec.precision == "fp16":
        flags.append("FP16")
    elif spec.precision == "int8":
        flags.append("INT8")  # scales come from the Q/DQ nodes (explicit quantization)
    pinned = _pin_fp32(trt, network, spec.fp32_layers) if spec.precision != "fp32" else 0
    if pinned:
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    for f in flags:
        config.set_flag(getattr(trt.BuilderFlag, f))

    cache_blob = b""
    if spec.timing_cache_path is not None and spec.timing_cache_path.is_file():
        cache_blob = spec.timing_cache_path.read_bytes()
    cache = config.create_timing_cache(cache_blob)
    # ignore_mismatch=False: a cache from another GPU/TensorRT is refused (returns False) rather
    # than misused; then build without it, from an empty cache
    cache_note = "new" if not cache_blob else "reused"
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s is from another device or TensorRT version: building without it",
                    spec.timing_cache_path)
        cache_note = "stale, rebuilt"
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            cache_note = "unavailable"

    s = spec.input_size
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (spec.batch_min, s, s, 3), (spec.batch_opt, s, s, 3), (spec.batch_max, s, s, 3))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(f"{spec.onnx_path}: TensorRT failed to build a {spec.precision} engine (see the TensorRT log "
                          "above); try a smaller --workspace-mib or another precision")
    _write_atomic(spec.engine_path, bytes(serialized))
    if spec.timing_cache_path is not None:
        tc = config.get_timing_cache()
        if tc is None:  # no cache attached (refused twice): keep the old file untouched
            log.warning("TensorRT returned no timing cache; %s not updated", spec.timing_cache_path)
            cache_note = "unavailable"
        else:
            _write_atomic(spec.timing_cache_path, bytes(tc.serialize()))
    return {
        "timing_cache": cache_note, "network_flags": net_flags,
        "tensorrt_version": str(trt.__version__), "precision": spec.precision, "builder_flags": flags,
        "workspace_mib": spec.workspace_mib, "profile": {"input": INPUT_NAME, "batch": [spec.batch_min, spec.batch_opt, spec.batch_max]},
        "source": spec.onnx_path.name, "machine": platform.machine(), "fp32_layers_pinned": pinned,
    }
