"""Fault-injecting backend for the simulator and tests: wraps the real onnxruntime backend and,
for chosen part numbers, raises, sleeps past the deadline or returns NaN — so the daemon's
fail-safe path is exercised with the same wiring as on the line."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from edgekit.bundle.io import Bundle
from edgekit.config.base import StrictModel
from edgekit.runtime.backends.base import BACKENDS, Backend
from edgekit.runtime.backends.ort import OrtBackend, OrtBackendConfig
from edgekit.runtime.types import Batch, RawOutput


class FaultyBackendConfig(StrictModel):
    type: Literal["sim_faults"] = "sim_faults"
    inner: OrtBackendConfig = OrtBackendConfig()
    raise_parts: list[int] = Field(default_factory=list)
    slow_parts: list[int] = Field(default_factory=list)
    slow_ms: float = Field(500.0, ge=0)
    nan_parts: list[int] = Field(default_factory=list)


class InjectedFault(RuntimeError):
    """The exception the faulty backend raises on purpose."""


@BACKENDS.register("sim_faults", precisions=("fp32", "fp16", "int8"), devices=("cpu", "cuda"))
class FaultyBackend(Backend):
    """onnxruntime with injected faults per part id."""

    config_model = FaultyBackendConfig

    def __init__(self, cfg: FaultyBackendConfig) -> None:
        super().__init__(cfg)
        self.inner = OrtBackend(cfg.inner)

    def load(self, bundle: Bundle) -> None:
        self.inner.load(bundle)
        self.model_id = self.inner.model_id
        self.input_size = self.inner.input_size

    def infer(self, batch: Batch) -> RawOutput:
        pid = batch.frame.part_id
        if pid in self.cfg.raise_parts:
            raise InjectedFault(f"injected backend failure at part {pid}")
        if pid in self.cfg.slow_parts:
            time.sleep(self.cfg.slow_ms / 1e3)
        out = self.inner.infer(batch)
        if pid in self.cfg.nan_parts:
            return RawOutput(out.frame, np.full_like(out.tile_scores, np.nan), out.maps, out.model_id, out.stage_s)
        return out

    def close(self) -> None:
        self.inner.close()
