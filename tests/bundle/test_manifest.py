"""Manifest schema checks and pure upgrades (edgekit/bundle/manifest.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgekit.bundle.io import load_bundle, write_json_atomic
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION, MIGRATIONS, upgrade
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BundleError

V0 = {
    "format": FORMAT_NAME, "format_version": 0, "edgekit_version": "0.0.1", "bundle_id": "abc", "method": "rd",
    "backbone": "tf_efficientnet_lite0", "preprocess": PreprocessSpec(size=64).to_dict(), "inputs": [], "outputs": [],
    "model": "model.onnx", "sha256": {"model.onnx": "00" * 32}, "threshold": 0.7, "created": "2026-01-01T00:00:00+00:00",
}


def test_v0_to_v1_is_pure_and_complete() -> None:
    original = copy.deepcopy(V0)
    m1 = MIGRATIONS[0](V0)
    assert V0 == original  # the input is not modified
    assert m1["format_version"] == 1
    assert m1["models"] == {"fp32": {"file": "model.onnx", "kind": "onnx", "precision": "fp32"}}
    assert m1["files"] == {"model.onnx": "00" * 32}
    assert m1["thresholds"]["accept_edge"] == m1["thresholds"]["reject_edge"] == 0.7
    assert not {"model", "sha256", "threshold"} & set(m1)
    assert upgrade(V0)["format_version"] == FORMAT_VERSION


def test_every_migration_step_exists() -> None:
    assert sorted(MIGRATIONS) == list(range(FORMAT_VERSION))


def test_v0_bundle_on_disk_loads(bundle_copy: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    v0 = {k: v for k, v in m.items() if k not in ("models", "files", "thresholds")}
    v0.update(format_version=0, model="model.onnx", sha256=m["files"], threshold=m["thresholds"]["threshold"])
    write_json_atomic(bundle_copy / "manifest.json", v0)
    b = load_bundle(bundle_copy)
    assert b.model_path("fp32").name == "model.onnx" and b.manifest["format_version"] == FORMAT_VERSION


def test_newer_format_version_is_refused(bundle_copy: Path) -> None:
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    write_json_atomic(bundle_copy / "manifest.json", m)
    with pytest.raises(BundleError, match=rf"format version {FORMAT_VERSION + 1} is newer.*upgrade edgekit"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("thresholds"), "missing field.*thresholds"),
    (lambda m: m.update(format="something-else"), "not an edgekit bundle"),
    (lambda m: m.update(format_version="1"), "not an integer"),
])
def test_malformed_manifests_are_refused(edit, match: str) -> None:  # type: ignore[no-untyped-def]
    m = copy.deepcopy(MIGRATIONS[0](V0))
    edit(m)
    with pytest.raises(BundleError, match=match):
        upgrade(m)
