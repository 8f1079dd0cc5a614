"""A thin recording fake of the TensorRT 10 Python API surface used by edgekit (builder side and
runtime side). Not a mock library: plain classes with the real method names and signatures,
which record every call in ``FakeTensorRT.calls`` and return deterministic bytes. The ONNX
parser really reads the file (with onnx), so input names and parse errors are the model's own."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _ParserError:
    def __init__(self, text: str) -> None:
        self._text = text

    def desc(self) -> str:
        return self._text


@dataclass
class _Tensor:
    name: str


class _LayerOutput:
    def __init__(self, dtype: _Enum) -> None:
        self.dtype = dtype


class _Layer:
    """A parsed layer named after its ONNX node; shape arithmetic has int64 outputs."""

    def __init__(self, name: str, op_type: str) -> None:
        self.name = name
        self.type = op_type
        int_ops = ("Shape", "Slice", "Cast", "Constant")
        self._outputs = [_LayerOutput(_INT64 if op_type in int_ops else _FLOAT32)]
        self.precision = _FLOAT32
        self.output_types: dict[int, _Enum] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, j: int) -> _LayerOutput:
        return self._outputs[j]

    def set_output_type(self, j: int, dtype: _Enum) -> None:
        self.output_types[j] = dtype


_FLOAT32, _FLOAT16, _INT64 = _Enum("float32"), _Enum("float16"), _Enum("int64")


@dataclass
class _Network:
    inputs: list[_Tensor] = field(default_factory=list)
    outputs: list[_Tensor] = field(default_factory=list)
    layers: list[_Layer] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> _Layer:
        return self.layers[i]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class _HostMemory(bytes):
    """IHostMemory supports the buffer protocol; bytes(...) of it is the blob."""


class _TimingCache:
    """Blob = JSON {"device": ..., "entries": [...]}; a blob from another device is refused by
    ``set_timing_cache(cache, ignore_mismatch=False)`` (returns False), as TensorRT does."""

    def __init__(self, rec: FakeTensorRT, blob: bytes) -> None:
        self.rec = rec
        data = json.loads(blob.decode()) if blob else {"device": rec.device, "entries": []}
        self.device = data["device"]
        self.entries = data["entries"]

    def serialize(self) -> _HostMemory:
        return _HostMemory(json.dumps({"device": self.device, "entries": self.entries}).encode())


class _Profile:
    def __init__(self, rec: FakeTensorRT) -> None:
        self.rec = rec
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        self.rec.calls.append(("profile.set_shape", name, tuple(min), tuple(opt), tuple(max)))
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class _Config:
    def __init__(self, rec: FakeTensorRT) -> None:
        self.rec = rec
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[_Profile] = []
        self.cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: _Enum, size: int) -> None:
        self.rec.calls.append(("config.set_memory_pool_limit", pool.name, size))
        self.pools[pool.name] = size

    def set_flag(self, flag: _Enum) -> None:
        self.rec.calls.append(("config.set_flag", flag.name))
        self.flags.append(flag.name)

    def create_timing_cache(self, blob: bytes) -> _TimingCache:
        self.rec.calls.append(("config.create_timing_cache", len(blob)))
        return _TimingCache(self.rec, bytes(blob))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.rec.calls.append(("config.set_timing_cache", ignore_mismatch))
        if self.rec.refuse_all_caches or (cache.device != self.rec.device and not ignore_mismatch):
            return False  # not attached: get_timing_cache() stays None
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self.cache  # None when no cache was accepted

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.rec.calls.append(("config.add_optimization_profile", dict(profile.shapes)))
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _OnnxParser:
    def __init__(self, network: _Network, logger: Any) -> None:
        self.network = network
        self.errors: list[_ParserError] = []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        FakeTensorRT.current.calls.append(("parser.parse_from_file", path))
        if getattr(self.network, "implicit_batch", False):
            self.errors.append(_ParserError("Network must be created with the EXPLICIT_BATCH flag: the ONNX "
                                            "parser only supports explicit batch networks"))
            return False
        try:
            model = onnx.load(path)
        except Exception as exc:
            self.errors.append(_ParserError(f"cannot read {Path(path).name}: {exc.__class__.__name__}"))
            return False
        init = {t.name for t in model.graph.initializer}
        self.network.inputs = [_Tensor(i.name) for i in model.graph.input if i.name not in init]
        self.network.outputs = [_Tensor(o.name) for o in model.graph.output]
        self.network.layers = [_Layer(n.name, n.op_type) for n in model.graph.node]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]


class _Builder:
    def __init__(self, logger: Any) -> None:
        self.rec = FakeTensorRT.current
        self.rec.calls.append(("Builder",))

    def create_network(self, flags: int = 0) -> _Network:
        self.rec.calls.append(("builder.create_network", flags))
        net = _Network()
        # TensorRT 8.x: flags 0 is an implicit-batch network, which the ONNX parser refuses
        net.implicit_batch = int(self.rec.__version__.split(".")[0]) < 10 and not flags & 1
        return net

    def create_builder_config(self) -> _Config:
        self.rec.config = _Config(self.rec)
        return self.rec.config

    def create_optimization_profile(self) -> _Profile:
        return _Profile(self.rec)

    def build_serialized_network(self, network: _Network, config: _Config) -> _HostMemory | None:
        self.rec.calls.append(("builder.build_serialized_network", list(config.flags)))
        if self.rec.fail_build:
            return None
        if config.cache is not None:
            config.cache.entries.append({"flags": config.flags, "n": len(config.cache.entries)})
        pinned = [la.name for la in network.layers if la.precision is _FLOAT32 and la.output_types]
        plan = {"fake_engine": True, "fp32_layers": pinned, "trt": self.rec.__version__, "flags": config.flags,
                "inputs": [t.name for t in network.inputs], "profiles": [
                    {k: [list(x) for x in v] for k, v in p.shapes.items()} for p in config.profiles]}
        return _HostMemory(json.dumps(plan).encode())


class _Logger:
    WARNING = _Enum("WARNING")
    INFO = _Enum("INFO")
    ERROR = _Enum("ERROR")

    def __init__(self, severity: Any = None) -> None:
        self.severity = severity


class FakeTensorRT:
    """Module-like object standing in for ``tensorrt``; ``calls`` records the API calls."""

    current: FakeTensorRT

    def __init__(self, version: str = "10.3.0", fail_build: bool = False, device: str = "Orin",
                 refuse_all_caches: bool = False) -> None:
        self.__version__ = version
        self.fail_build = fail_build
        self.device = device  # timing caches are tied to it
        self.refuse_all_caches = refuse_all_caches
        self.calls: list[tuple[Any, ...]] = []
        self.config: _Config | None = None
        FakeTensorRT.current = self
        self.Logger = _Logger
        self.Builder = _Builder
        self.OnnxParser = _OnnxParser
        self.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": _Enum("WORKSPACE")})
        self.BuilderFlag = type("BuilderFlag", (), {n: _Enum(n) for n in (
            "FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")})
        self.float32, self.float16, self.int64 = _FLOAT32, _FLOAT16, _INT64
        self.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {"EXPLICIT_BATCH": 0})


@dataclass
class _Props:
    name: bytes
    major: int
    minor: int


class FakeCudart:
    """cuda-python runtime stand-in for device queries: Jetson Orin (compute capability 8.7)."""

    def __init__(self, name: bytes = b"Orin", major: int = 8, minor: int = 7) -> None:
        self.props = _Props(name, major, minor)

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, _Props]:  # noqa: N802 - CUDA's name
        return 0, self.props
