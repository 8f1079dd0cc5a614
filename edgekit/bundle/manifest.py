"""Bundle manifest schema (``manifest.json``) and pure schema upgrades.

The manifest is the one contract between build and line: method, backbone, preprocessing,
model files with their sha256, thresholds/band, build info. Older schema versions are upgraded
by pure functions in ``MIGRATIONS``; a newer version than this edgekit knows is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgekit.errors import BundleError

FORMAT_VERSION = 1
FORMAT_NAME = "edgekit-bundle"



def _v0_to_v1(m: dict[str, Any]) -> dict[str, Any]:
    """Format 0 (pre-release bundles): one ``model`` file, a flat ``sha256`` map and a single
    ``threshold``. Format 1 keys models by precision, names the hash map ``files`` and carries
    the accept/review/reject band (a single threshold = band of width zero)."""
    out = {k: v for k, v in m.items() if k not in ("model", "sha256", "threshold")}
    model = m.get("model", "model.onnx")
    out["models"] = {"fp32": {"file": model, "kind": "onnx", "precision": "fp32"}}
    out["files"] = dict(m.get("sha256", {}))
    t = m.get("threshold")
    out["thresholds"] = {"threshold": t, "accept_edge": t, "reject_edge": t, "source": "migrated from format 0"}
    out.setdefault("build", {"steps_pending": []})
    out["format_version"] = 1
    return out


# version N -> function upgrading a manifest dict from N to N+1 (pure, tested)
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}

REQUIRED_KEYS = (
    "format", "format_version", "edgekit_version", "bundle_id", "method", "backbone",
    "preprocess", "inputs", "outputs", "models", "files", "thresholds", "created",
)


def upgrade(manifest: dict[str, Any], source: str = "manifest.json") -> dict[str, Any]:
    """Validate and upgrade a manifest dict to FORMAT_VERSION; BundleError if impossible."""
    if manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{source}: not an edgekit bundle manifest (format={manifest.get('format')!r}); rebuild with `edgekit build`")
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{source}: format_version missing or not an integer; rebuild with `edgekit build`")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format version {version} is newer than this edgekit supports "
            f"({FORMAT_VERSION}); upgrade edgekit on this device (pip install -U edgekit)"
        )
    m = dict(manifest)
    while m["format_version"] < FORMAT_VERSION:
        step = MIGRATIONS.get(m["format_version"])
        if step is None:
            raise BundleError(f"{source}: no upgrade path from format version {m['format_version']}; rebuild the bundle")
        m = step(m)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise BundleError(f"{source}: missing field(s) {', '.join(missing)}; rebuild the bundle with `edgekit build`")
    return m
