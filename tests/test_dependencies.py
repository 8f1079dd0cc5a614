"""The dependency pins in pyproject.toml say what the code needs, and what is installed meets them."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _req(extra: str, name: str) -> Requirement:
    return next(Requirement(r) for r in EXTRAS[extra] if Requirement(r).name == name)


def test_pymodbus_floor_is_the_tested_api() -> None:
    """device_id= and ModbusDeviceContext (used by the outputs, doctor and the test PLCs) came in
    pymodbus 3.10: the floor must not allow older, and the installed version is what CI tests."""
    for extra in ("plc", "dev"):
        spec = _req(extra, "pymodbus").specifier
        assert Version("3.9.2") not in spec and Version("3.10.0") in spec and Version("4.0") not in spec
    assert Version(md.version("pymodbus")) in _req("plc", "pymodbus").specifier
    import pymodbus.datastore as ds

    assert hasattr(ds, "ModbusDeviceContext")


def test_jetson_extra_pins_cuda_python_below_13_as_the_hint_says() -> None:
    from edgekit.compile.trt_build import CUDA_PYTHON_HINT, CUDA_PYTHON_PIN

    spec = _req("jetson", "cuda-python").specifier
    assert Version("12.6.0") in spec and Version("13.0.0") not in spec
    assert Requirement(CUDA_PYTHON_PIN).specifier == spec and CUDA_PYTHON_PIN in CUDA_PYTHON_HINT
    provision = (ROOT / "firmware_scripts" / "provision.sh").read_text()
    assert re.search(r'"cuda-python>=\$\{cuda_major\},<\$\(\(cuda_major \+ 1\)\)"', provision)
