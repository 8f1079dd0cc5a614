"""Simulator fixtures: the intensity bundle (score = mean intensity) and a dataset whose good
parts are dark and defective parts bright, so the model is exact and every miss is the line's."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.sim.bundles import write_intensity_bundle, write_intensity_dataset


@pytest.fixture(scope="session")
def sim_line(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("simline")
    return write_intensity_bundle(root / "bundle", size=32), write_intensity_dataset(root / "data")
