"""Backend contract: ``load`` (once, outside the per-frame path) then ``infer(Batch) ->
RawOutput`` for every frame. Capabilities (precisions, devices) are declared at registration
and checked at startup against the bundle and the config."""

from __future__ import annotations

from typing import Any, ClassVar

from edgekit.bundle.io import Bundle
from edgekit.registry import Registry
from edgekit.runtime.types import Batch, RawOutput

BACKENDS: Registry[type[Backend]] = Registry(
    "backend",
    modules=("edgekit.runtime.backends.ort", "edgekit.runtime.backends.trt", "edgekit.sim.faults"),
)


class Backend:
    """Base class. ``model_id`` names the bundle and model file that produce the scores."""

    config_model: ClassVar[type[Any]]

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.model_id = ""
        self.input_size = 0

    def load(self, bundle: Bundle) -> None:
        """Create the session/engine from a verified bundle (file I/O happens here only)."""
        raise NotImplementedError

    def infer(self, batch: Batch) -> RawOutput:
        """Run the model on a batch of tiles (T, S, S, 3) uint8 → per-tile scores and maps."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the session/engine."""
