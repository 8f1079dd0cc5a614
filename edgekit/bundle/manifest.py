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
    _check_shapes(m, source)
    return m


def _bad(source: str, what: str) -> BundleError:
    return BundleError(f"{source}: {what}; the manifest is damaged or hand-edited: copy the bundle again or rebuild it")


def _safe_name(name: Any) -> bool:
    from pathlib import PurePosixPath

    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    pp = PurePosixPath(name)
    return not pp.is_absolute() and ".." not in pp.parts


def _check_shapes(m: dict[str, Any], source: str) -> None:
    """The types every reader of the manifest relies on, and file names that stay inside the bundle."""
    if not isinstance(m.get("bundle_id"), str) or not m["bundle_id"]:
        raise _bad(source, "bundle_id must be a non-empty string")
    files = m.get("files")
    if not isinstance(files, dict) or not all(_safe_name(k) and isinstance(v, str) for k, v in files.items()):
        raise _bad(source, "files must map file names inside the bundle to sha256 strings")
    models = m.get("models")
    if not isinstance(models, dict) or not models:
        raise _bad(source, "models must be a non-empty mapping")
    for key, entry in models.items():
        if not isinstance(entry, dict) or not _safe_name(entry.get("file")):
            raise _bad(source, f"models.{key} must be a mapping with a file name inside the bundle")
        if entry["file"] not in files:
            raise _bad(source, f"models.{key}.file {entry['file']!r} is not in files (so it is not hash-checked)")
    thr = m.get("thresholds")
    if not isinstance(thr, dict):
        raise _bad(source, "thresholds must be a mapping")
    for k in ("threshold", "accept_edge", "reject_edge"):
        v = thr.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _bad(source, f"thresholds.{k} must be a number or null")
    pre = m.get("preprocess")
    if not isinstance(pre, dict):
        raise _bad(source, "preprocess must be a mapping")
    try:
        from edgekit.data.preprocess import PreprocessSpec

        PreprocessSpec.from_dict(pre)
    except Exception as exc:  # noqa: BLE001 - any malformed field: refuse with its message
        raise _bad(source, f"preprocess is not valid ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
