"""Single-file ``.edgekit`` archives (edgekit/bundle/archive.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edgekit.bundle.archive import pack_archive, unpack_archive
from edgekit.bundle.io import load_bundle, sha256_file
from edgekit.bundle.manifest import FORMAT_VERSION
from edgekit.errors import BundleError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))


def test_archive_round_trip(tiny_bundle: Path, tmp_path: Path) -> None:
    arc = pack_archive(tiny_bundle, tmp_path / "tiny.edgekit")
    with tarfile.open(arc) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and set(names[1:]) == set(load_bundle(tiny_bundle).manifest["files"])
    b = load_bundle(arc)
    assert b.path.parent == tmp_path / "cache"
    assert b.manifest == load_bundle(tiny_bundle).manifest
    assert sha256_file(b.model_path()) == sha256_file(tiny_bundle / "model.onnx")
    assert load_bundle(arc).path == b.path  # unpacked once, reused


def _rewrite(arc: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    with tarfile.open(arc) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            name, data = change(m.name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def test_tampered_archive_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    arc = pack_archive(tiny_bundle, tmp_path / "a.edgekit")

    def flip(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "model.onnx":
            b = bytearray(data)
            b[100] ^= 0xFF
            return name, bytes(b)
        return name, data

    bad = _rewrite(arc, tmp_path / "bad.edgekit", flip)
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(bad)


def test_newer_archive_refused_before_extracting(tiny_bundle: Path, tmp_path: Path) -> None:
    arc = pack_archive(tiny_bundle, tmp_path / "a.edgekit")

    def newer(name: str, data: bytes) -> tuple[str, bytes]:
        if name == "manifest.json":
            m = json.loads(data)
            m["format_version"] = FORMAT_VERSION + 1
            return name, json.dumps(m).encode()
        return name, data

    bad = _rewrite(arc, tmp_path / "new.edgekit", newer)
    with pytest.raises(BundleError, match="newer than this edgekit"):
        unpack_archive(bad)
    assert not any((tmp_path / "cache").glob("*/model.onnx"))


def test_unlisted_or_traversing_members_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    arc = pack_archive(tiny_bundle, tmp_path / "a.edgekit")
    bad = _rewrite(arc, tmp_path / "evil.edgekit",
                   lambda n, d: ("../evil.onnx", d) if n == "model.onnx" else (n, d))
    with pytest.raises(BundleError, match="unexpected archive member '../evil.onnx'"):
        load_bundle(bad)
    assert not (tmp_path / "evil.onnx").exists()
    first = _rewrite(arc, tmp_path / "order.edgekit", lambda n, d: (n, d))
    with tarfile.open(first) as t:
        assert t.getnames()[0] == "manifest.json"
