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
