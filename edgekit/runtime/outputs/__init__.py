"""Output plug-ins (GPIO via libgpiod v2, Jetson.GPIO, a fake chip, Modbus TCP PLC)."""

from edgekit.runtime.outputs.base import OUTPUTS, Output

__all__ = ["OUTPUTS", "Output"]
