"""Shared fixtures: hardware-marker skipping, a tiny synthetic dataset, and a tiny trained run
and bundle built once per test session (random-init backbone, 64² input: seconds on 2 cores)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

try:  # property-based tests: deterministic in the default suite, exploring in HYPOTHESIS_PROFILE=slow
    from hypothesis import HealthCheck, settings

    _quiet = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
    # Default: the same examples every run (derandomize, no example database) and no wall-clock
    # deadline, so CI on a loaded 2-core machine passes or fails the same way every time.
    settings.register_profile("default", max_examples=25, deadline=None, derandomize=True, database=None,
                              suppress_health_check=_quiet)
    # Slow: new random examples each run; a failure it finds goes into the test as an @example.
    settings.register_profile("slow", max_examples=400, deadline=None, suppress_health_check=_quiet)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is a dev extra
    pass


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch absent on a device-only install
        return False


def _hardware_reasons() -> dict[str, str | None]:
    gpiochips = sorted(Path("/dev").glob("gpiochip*"))
    videos = sorted(Path("/dev").glob("video*"))
    return {
        "gpu": None if _has_cuda() else "no CUDA device",
        "tensorrt": None if importlib.util.find_spec("tensorrt") else "tensorrt is not installed (JetPack provides it)",
        "jetson": None if Path("/etc/nv_tegra_release").exists() else "not a Jetson (/etc/nv_tegra_release missing)",
        "gpio": None if gpiochips else "no /dev/gpiochip* on this machine",
        "camera": None if videos else "no /dev/video* camera on this machine",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = _hardware_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs {marker}: {reason}"))


TINY_RECIPE = {
    "name": "tiny-rd",
    "method": {"type": "rd", "embed_factor": 1.0, "decoder_width": 0.5},
    "backbone": {"name": "tf_efficientnet_lite0", "weights": "none"},
    "input": {"size": 64},
    "train": {"epochs": 1, "batch_size": 8, "lr": 0.005, "val_fraction": 0.2, "seed": 0},
    "score": {"smoothing_sigma": 1.0},
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic fabric dataset at 64²: 24 train, 8 test good, 8 test defect, with masks."""
    from edgekit.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("data") / "fabric"
    write_synthetic_dataset(out, kind="fabric", seed=0, n_train=24, n_test_good=8, n_test_defect=8, size=64)
    return out


@pytest.fixture(scope="session")
def tiny_recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    p = tmp_path_factory.mktemp("recipes") / "tiny-rd.yaml"
    p.write_text(yaml.safe_dump(TINY_RECIPE), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, tiny_recipe_file: Path) -> Path:
    """A trained (1 epoch) tiny rd run directory."""
    from edgekit.train import train_run

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_recipe_file, tiny_dataset, run, quiet=True)
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A cpu bundle built from ``tiny_run``."""
    from edgekit.compile.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-bundle"
    build_bundle(tiny_run, out, target="cpu", quiet=True)
    return out


@pytest.fixture
def bundle_copy(tmp_path: Path, tiny_bundle: Path) -> Path:
    """A private copy of the tiny bundle a test may modify."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst
