"""Runtime fixtures: a bundle with an exactly known score (mean intensity) and image folders
whose frames have chosen intensities, so decisions and fail-safes are predictable."""

from __future__ import annotations

from pathlib import Path

import pytest
from rt_helpers import LEVELS, write_levels

from edgekit.sim.bundles import write_intensity_bundle


@pytest.fixture(scope="session")
def intensity_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_intensity_bundle(tmp_path_factory.mktemp("bundle") / "b", size=32)


@pytest.fixture(scope="session")
def nan_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_intensity_bundle(tmp_path_factory.mktemp("nanbundle") / "b", size=32, nan_below=0.05)


@pytest.fixture()
def level_folder(tmp_path: Path) -> Path:
    write_levels(tmp_path / "frames", LEVELS)
    return tmp_path / "frames"


@pytest.fixture
def fake_chip(monkeypatch, tmp_path):
    """The fake ``gpiod`` module installed as ``gpiod`` with two Orin-like chips under a temp
    /dev (gpiochip0 labelled tegra234-gpio, gpiochip1 tegra234-gpio-aon); yields gpiochip0's
    simulated device (``drive(offset, level, t_ns)``, ``output_history(offset)``)."""
    from edgekit.runtime import gpiochip
    from edgekit.sim import fake_gpiod

    gpiod = fake_gpiod.install(monkeypatch)
    gpiod.sim.reset()
    monkeypatch.setattr(gpiochip, "DEV_DIR", str(tmp_path))
    dev = gpiod.sim.add_chip(str(tmp_path / "gpiochip0"), label="tegra234-gpio", num_lines=164)
    gpiod.sim.add_chip(str(tmp_path / "gpiochip1"), label="tegra234-gpio-aon", num_lines=32)
    yield dev
    gpiod.sim.reset()
