"""Write, read and verify bundles. The runtime loads bundles only through ``load_bundle``,
which checks schema, every file's sha256 and (for engines) the target before anything runs."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bundle.manifest import upgrade
from edgekit.data.preprocess import PreprocessSpec
from edgekit.errors import BundleError

MANIFEST = "manifest.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON via a temp file + rename so a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; bundles are copied to and read by the device user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: dict[str, Any]
    # key id of the trusted key whose signature was checked (manifest.sig); None: not checked
    signed_by: str | None = None

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def thresholds(self) -> dict[str, Any]:
        """``threshold`` (single reject threshold) and optional ``accept_edge``/``reject_edge``."""
        return self.manifest["thresholds"]

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """precision/backend key (fp32, fp16, int8, trt-fp16, ...) → {file, kind, ...}."""
        return self.manifest["models"]

    def model_path(self, key: str = "fp32") -> Path:
        if key not in self.models:
            raise BundleError(
                f"{self.path}: bundle has no model {key!r} (has: {', '.join(self.models)}); rebuild with that precision"
            )
        return self.path / self.models[key]["file"]


def verify_files(path: Path, manifest: dict[str, Any]) -> None:
    """Check that every file listed in the manifest exists and matches its sha256."""
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: file {name} listed in the manifest is missing; copy the whole bundle again")
        actual = sha256_file(f)
        if actual != digest:
            raise BundleError(
                f"{path}: {name} does not match its sha256 in the manifest (tampered or corrupted); "
                "copy the bundle again or rebuild it"
            )


def load_bundle(path: str | Path, verify: bool = True, trust: list[Any] | None = None) -> Bundle:
    """Open a bundle directory or a ``.edgekit`` archive (unpacked to the cache first): schema
    check + upgrade, then sha256 of every file.

    ``trust``: trusted public keys (``signing.load_trust``); when given (non-empty) the bundle
    must carry a ``manifest.sig`` made by one of them over the manifest bytes read here, checked
    before anything else in the manifest is used (BundleError otherwise)."""
    p = Path(path)
    if p.is_file():
        from edgekit.bundle.archive import is_archive, unpack_archive

        if not is_archive(p):
            raise BundleError(f"{p}: not a bundle directory or .edgekit archive; build one with `edgekit build`")
        p = unpack_archive(p)
    mf = p / MANIFEST
    if not p.is_dir():
        raise BundleError(f"{p}: bundle directory not found; build one with `edgekit build RUN_DIR --out {p}`")
    if not mf.is_file():
        raise BundleError(f"{p}: no {MANIFEST}; this is not a bundle (build one with `edgekit build`)")
    data = mf.read_bytes()  # read once: the signature is checked on exactly the bytes parsed
    signed_by = None
    if trust:
        from edgekit.bundle.signing import verify_signature

        signed_by = verify_signature(p, data, trust).key_id
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{mf}: unreadable manifest ({exc.__class__.__name__}); copy the bundle again") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{mf}: manifest must be a JSON object; copy the bundle again")
    manifest = upgrade(raw, str(mf))
    if verify:
        verify_files(p, manifest)
    return Bundle(p, manifest, signed_by)


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Fill ``files`` with the sha256 of every listed model/aux file and write atomically."""
    p = Path(path)
    files = {}
    for name in sorted(manifest.get("files", {})):
        files[name] = sha256_file(p / name)
    manifest = dict(manifest)
    manifest["files"] = files
    upgrade(manifest)  # refuse to write something we could not read back
    write_json_atomic(p / MANIFEST, manifest)
    # a signature over the previous manifest no longer holds: remove it rather than ship a
    # bundle that a station with a trust list refuses as "forged" (sign again: edgekit keys sign)
    (p / "manifest.sig").unlink(missing_ok=True)
