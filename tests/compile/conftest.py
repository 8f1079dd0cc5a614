"""A tiny bundle with every precision (fp32, fp16, int8), built once per session for the
compile tests (target jetson on a host without TensorRT: the build-on-device step is pending)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_multi_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, tiny_dataset: Path) -> Path:
    from edgekit.compile.build import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-multi"
    # allow_degraded: a 1-epoch random-init model on 16 test images is not what the gate is for
    build_bundle(tiny_run, out, target="jetson", precisions=["fp32", "fp16", "int8"], eval_data=tiny_dataset,
                 allow_degraded=True, calib_max_tiles=16, quiet=True)
    return out
