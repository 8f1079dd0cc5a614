"""GPIO output through NVIDIA's Jetson.GPIO (RPi.GPIO-style API), the alternative to libgpiod on
JetPack images where users already address pins by header number.

API used: ``GPIO.setmode(GPIO.BOARD | GPIO.BCM)``, ``GPIO.setup(pin, GPIO.OUT, initial=...)``,
``GPIO.output(pin, GPIO.HIGH | GPIO.LOW)``, ``GPIO.cleanup(pins)``. Jetson.GPIO has no
active-low setting, so the inversion is done here: ``active`` always means "reject now"."""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any, Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output

log = logging.getLogger("edgekit.outputs")


class JetsonPins(StrictModel):
    """Header pins by role (numbering per ``mode``); a role left out is not driven."""

    reject: int | None = Field(None, ge=1)
    review: int | None = Field(None, ge=1)
    heartbeat: int | None = Field(None, ge=1)
    ready: int | None = Field(None, ge=1)


class JetsonGpioOutputConfig(StrictModel):
    type: Literal["jetson_gpio"] = "jetson_gpio"
    name: str = "jetson_gpio"
    mode: Literal["BOARD", "BCM"] = "BOARD"
    pins: JetsonPins
    active_low: bool = False


@OUTPUTS.register("jetson_gpio", can_pulse=True)
class JetsonGpioOutput(Output):
    """Drives header pins with Jetson.GPIO."""

    config_model = JetsonGpioOutputConfig

    def __init__(self, cfg: JetsonGpioOutputConfig) -> None:
        super().__init__(cfg)
        self._pins = {r: p for r, p in cfg.pins.model_dump().items() if p is not None}
        self._gpio: Any = None
        self._lock = threading.Lock()
        self.warnings: list[str] = []  # Jetson.GPIO's setup() warnings (pinmux), also logged

    def roles(self) -> set[str]:
        return set(self._pins)

    def _level(self, active: bool) -> Any:
        g = self._gpio
        return g.HIGH if active != self.cfg.active_low else g.LOW

    def open(self) -> None:
        try:
            import Jetson.GPIO as GPIO  # noqa: N814 (the package's documented alias)
        except ImportError:
            raise DeviceError("the jetson_gpio output needs Jetson.GPIO (pip install Jetson.GPIO; JetPack ships it)") from None
        except Exception as exc:  # noqa: BLE001 (it decides the board at import: a bare Exception on an unknown one)
            raise DeviceError(f"outputs.{self.name}: Jetson.GPIO cannot run on this board ({exc}); "
                              "use the gpiod output (chip tegra234-gpio, docs/deploy-jetson.md)") from None
        self._gpio = GPIO
        # warnings stay on: setup() warns when a pin is not muxed as GPIO (then it never moves)
        GPIO.setwarnings(True)
        try:
            GPIO.setmode(GPIO.BOARD if self.cfg.mode == "BOARD" else GPIO.BCM)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for pin in self._pins.values():
                    GPIO.setup(pin, GPIO.OUT, initial=self._level(False))
        except (ValueError, RuntimeError) as exc:
            raise DeviceError(f"outputs.{self.name}: cannot set up pins {sorted(self._pins.values())} ({exc}); "
                              "check the pin numbers for the selected mode") from None
        self.warnings = [str(w.message).strip() for w in caught]
        for w in self.warnings:
            log.warning("outputs.%s: Jetson.GPIO: %s (configure the pin as GPIO with jetson-io or the pinmux "
                        "dtsi, or the line will not move)", self.name, w.splitlines()[0])

    def set_line(self, role: str, active: bool) -> None:
        pin = self._pins.get(role)
        if pin is None or self._gpio is None:
            return
        with self._lock:
            self._gpio.output(pin, self._level(active))

    def close(self) -> None:
        g, self._gpio = self._gpio, None
        if g is None:
            return
        for pin in self._pins.values():
            try:
                g.output(pin, g.HIGH if self.cfg.active_low else g.LOW)
            except (ValueError, RuntimeError):
                self.errors += 1
        g.cleanup(list(self._pins.values()))
