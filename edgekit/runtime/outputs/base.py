"""Output contract: lines addressed by role (``reject``, ``review``, ``heartbeat``, ``ready``).

``set_line(role, active)`` drives one line (the pulse timeline decides when), ``publish_dict``
passes each decision (a plain dict: part_id, kind, score, failsafe, encoder_count, ...) to outputs
that report per part (a PLC), ``close`` drives every line to its safe, inactive state. Outputs run
in the daemon's line process, so they receive plain data, never frames. Capabilities (can it pulse, which roles) are declared and checked at startup."""

from __future__ import annotations

from typing import Any, ClassVar

from edgekit.registry import Registry

OUTPUTS: Registry[type[Output]] = Registry(
    "output",
    modules=(
        "edgekit.runtime.outputs.gpio",
        "edgekit.runtime.outputs.jetson",
        "edgekit.runtime.outputs.modbus",
        "edgekit.runtime.outputs.modbus_server",
        "edgekit.runtime.outputs.opcua",
        "edgekit.runtime.outputs.mqtt",
    ),
)


class Output:
    """Base class.

    Attributes:
        can_pulse: whether ``set_line`` timing is precise enough for reject pulses (a GPIO line
            is; a PLC register written over TCP is not, the PLC times the pulse itself).
        errors: count of failed writes (exported as a metric).
    """

    config_model: ClassVar[type[Any]]
    can_pulse: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name: str = getattr(cfg, "name", cfg.type)
        self.errors = 0

    def roles(self) -> set[str]:
        """Line roles this output drives."""
        return set()

    def open(self) -> None:
        """Acquire the hardware with every line inactive; DeviceError if busy or absent."""

    def set_line(self, role: str, active: bool) -> None:
        """Drive one line (no-op for roles this output does not have)."""

    def publish_dict(self, decision: dict[str, Any]) -> None:
        """Report one decision (PLC registers); GPIO outputs ignore it."""

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        """The decision band in use (outputs that report scores relative to it)."""

    def set_fault(self, code: int) -> None:
        """A station fault to report (PLC FAULT_CODE, docs/plc.md); GPIO outputs ignore it."""

    def set_flag(self, name: str, on: bool) -> None:
        """A station condition that is not a fault (``archive_full``: PLC STATUS.ARCHIVE_FULL)."""

    def reset_fault(self) -> None:
        """Clear latched faults (``Daemon.control("reset_fault")``, e.g. from another output)."""

    def set_enabled(self, enabled: bool) -> None:
        """The station was enabled/disabled (``Daemon.control``); outputs that report it show it."""

    def pop_controls(self) -> list[tuple[str, str, int]]:
        """Control requests received by this output since the last call, as (action, source,
        monotonic ns): ``reset_fault``, ``enable``, ``disable``, ``trigger`` (a PLC or OPC UA client);
        the line process takes triggers itself and hands the rest to ``Daemon.control``."""
        return []

    def healthy(self) -> bool:
        return True

    def pop_errors(self) -> list[str]:
        """Errors found by the output's own worker since the last call (reported as metrics)."""
        return []

    def close(self) -> None:
        """Drive every line inactive and release the hardware; safe to call twice."""
