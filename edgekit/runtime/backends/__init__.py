"""Inference backends (plug-ins): onnxruntime and TensorRT. Each declares its config model with
a literal ``type`` and registers in ``BACKENDS``."""

from edgekit.runtime.backends.base import BACKENDS, Backend

__all__ = ["BACKENDS", "Backend"]
