"""The Jetson.GPIO output against a fake Jetson.GPIO imported through the normal import system
(the real package's constants, checks and failure modes)."""

from __future__ import annotations

import logging

import pytest

from edgekit.errors import DeviceError
from edgekit.runtime.outputs import OUTPUTS
from edgekit.runtime.outputs.jetson import JetsonGpioOutputConfig, JetsonPins
from edgekit.sim import fake_jetson


def _out(**pins: int):
    return OUTPUTS.get("jetson_gpio")(JetsonGpioOutputConfig(pins=JetsonPins(**pins), active_low=False))


def test_pins_start_low_pulse_and_end_low(monkeypatch) -> None:
    fake_jetson.install(monkeypatch)
    out = _out(reject=29, heartbeat=31)
    out.open()
    out.set_line("reject", True)
    out.set_line("reject", False)
    out.close()
    g = fake_jetson.module()
    assert g.levels[29] == [0, 1, 0, 0] and g.levels[31] == [0, 0]
    assert g.getmode() is None  # cleaned up


def test_unknown_board_is_a_device_error_not_a_traceback(monkeypatch) -> None:
    fake_jetson.install(monkeypatch, model="")  # Jetson.GPIO raises a bare Exception at import
    with pytest.raises(DeviceError, match=r"Jetson.GPIO cannot run on this board \(Could not determine Jetson "
                                          r"model\); use the gpiod output"):
        _out(reject=29).open()


def test_pinmux_warnings_are_logged_not_silenced(monkeypatch, caplog) -> None:
    fake_jetson.install(monkeypatch, unmuxed=(29,))
    out = _out(reject=29, review=31)
    with caplog.at_level(logging.WARNING, logger="edgekit.outputs"):
        out.open()
    assert len(out.warnings) == 1 and 'channel "29"' in out.warnings[0]
    assert "not muxed" not in caplog.text and "jetson-io" in caplog.text and 'channel "29"' in caplog.text
    out.close()


def test_invalid_pin_names_the_pins(monkeypatch) -> None:
    fake_jetson.install(monkeypatch)
    with pytest.raises(DeviceError, match=r"cannot set up pins \[3\] \(Channel 3 is invalid\)"):
        _out(reject=3).open()
