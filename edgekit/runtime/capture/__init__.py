"""Frame sources (camera plug-ins). Each plug-in declares its config model with a literal
``type`` and registers its class in ``CAMERAS`` with an explicit decorator."""

from edgekit.runtime.capture.base import CAMERAS, Camera

__all__ = ["CAMERAS", "Camera"]
