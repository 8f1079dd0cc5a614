"""A fake of NVIDIA's ``Jetson.GPIO`` package (2.1.x API), imported through the normal import
system: ``install(monkeypatch)`` puts this folder first on ``sys.path`` so ``import Jetson.GPIO``
in production code loads ``Jetson/GPIO/__init__.py`` from here. Like the real package it decides
the board at import time and raises a bare ``Exception('Could not determine Jetson model')`` on an
unknown one (environment ``FAKE_JETSON_MODEL`` empty), and ``setup()`` warns through ``warnings``
when a pin is not muxed as GPIO (``FAKE_JETSON_UNMUXED``: comma-separated BOARD pins) while
warnings are on (``setwarnings``)."""

from __future__ import annotations

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def install(monkeypatch: Any, model: str = "JETSON_ORIN_NANO", unmuxed: tuple[int, ...] = ()) -> None:
    for name in [m for m in sys.modules if m == "Jetson" or m.startswith("Jetson.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv("FAKE_JETSON_MODEL", model)
    monkeypatch.setenv("FAKE_JETSON_UNMUXED", ",".join(str(p) for p in unmuxed))


def module() -> Any:
    """The fake ``Jetson.GPIO`` module once imported (its recorded pin levels: ``levels``)."""
    return sys.modules["Jetson.GPIO"]
