"""Writing, reading and verifying bundle directories (edgekit/bundle/io.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.bundle.io import load_bundle, sha256_file, write_manifest
from edgekit.errors import BundleError


def test_manifest_round_trip(bundle_copy: Path) -> None:
    b = load_bundle(bundle_copy)
    m = json.loads(json.dumps(b.manifest))
    m["models"]["fp32"]["note"] = "round trip"
    write_manifest(bundle_copy, m)
    again = load_bundle(bundle_copy)
    assert again.manifest == m
    assert again.manifest["files"] == {name: sha256_file(bundle_copy / name) for name in m["files"]}
    assert again.preprocess == b.preprocess and again.thresholds == b.thresholds


def test_one_changed_byte_is_refused(bundle_copy: Path) -> None:
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, verify=False)  # schema alone still reads


def test_missing_file_and_unknown_model_are_refused(bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="no model 'int8'.*rebuild"):
        load_bundle(bundle_copy).model_path("int8")
    (bundle_copy / "calibration.json").unlink()
    with pytest.raises(BundleError, match="calibration.json listed in the manifest is missing"):
        load_bundle(bundle_copy)


def test_bundle_files_are_world_readable(tiny_bundle: Path) -> None:
    assert (tiny_bundle / "manifest.json").stat().st_mode & 0o044 == 0o044


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(BundleError, match="not a bundle directory or .edgekit archive"):
        load_bundle(tmp_path / "x.txt")
