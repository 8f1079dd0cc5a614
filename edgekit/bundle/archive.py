"""Single-file bundles: ``NAME.edgekit`` is an uncompressed tar whose first member is
``manifest.json`` (then ``manifest.sig`` when the bundle is signed) followed by exactly the files
it lists (ONNX weights and engines barely compress, and a plain tar streams). Reading checks the manifest's format version before
anything is extracted, extracts only the listed plain files into a cache directory, and then
verifies every sha256 like a bundle directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from edgekit.bundle.manifest import upgrade
from edgekit.errors import BundleError

ARCHIVE_SUFFIX = ".edgekit"
MANIFEST = "manifest.json"
SIG_FILE = "manifest.sig"  # edgekit.bundle.signing.SIG_FILE (a test checks)


def cache_root() -> Path:
    """Where archives are unpacked: $EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    env = os.environ.get("EDGEKIT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgekit"


def pack_archive(bundle_dir: str | Path, out_file: str | Path) -> Path:
    """Write ``out_file`` (tar: manifest first, then the manifest's files in its order).

    The bundle is verified first, so an archive never carries a tampered file."""
    from edgekit.bundle.io import load_bundle

    bundle = load_bundle(bundle_dir)
    out = Path(out_file)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            sig = [SIG_FILE] if (bundle.path / SIG_FILE).is_file() else []  # signature travels with it
            for name in [MANIFEST, *sig, *bundle.manifest["files"]]:
                info = tar.gettarinfo(str(bundle.path / name), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(bundle.path / name, "rb") as f:
                    tar.addfile(info, f)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the archive is meant to be copied around
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def is_archive(path: str | Path) -> bool:
    p = Path(path)
    return p.is_file() and (p.suffix == ARCHIVE_SUFFIX or tarfile.is_tarfile(p))


def unpack_archive(archive: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Unpack a ``.edgekit`` file into ``cache_dir/<bundle_id>-<archive sha256[:12]>`` (reused
    when already there) and return the directory; the caller verifies hashes with load_bundle."""
    src = Path(archive)
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    try:
        tar = tarfile.open(src, "r:")
    except tarfile.TarError as exc:
        raise BundleError(f"{src}: not a readable .edgekit archive ({exc}); copy it again") from None
    with tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise BundleError(f"{src}: archive does not start with {MANIFEST}; re-create it with `edgekit build --archive`")
        fobj = tar.extractfile(first)
        text = fobj.read() if fobj else b""
        try:
            raw = json.loads(text.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raw = None
        if not isinstance(raw, dict):
            raise BundleError(f"{src}: unreadable manifest inside the archive; copy it again")
        manifest = upgrade(raw, f"{src}:{MANIFEST}")  # refuses newer format versions before extracting
        listed = set(manifest["files"])
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        dest = root / f"{manifest['bundle_id']}-{digest.hexdigest()[:12]}"
        if (dest / MANIFEST).is_file():
            return dest
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
        try:
            (tmp / MANIFEST).write_bytes(text)
            seen = set()
            for member in tar:
                if member.offset == first.offset:  # iteration restarts at the manifest
                    continue
                # only plain files named in the manifest (and its signature), never paths: no
                # traversal, no links
                if not member.isfile() or member.name not in listed | {SIG_FILE} or "/" in member.name \
                        or member.name in seen:
                    raise BundleError(f"{src}: unexpected archive member {member.name!r}; re-create the archive")
                seen.add(member.name)
                data = tar.extractfile(member)
                with open(tmp / member.name, "wb") as out:
                    shutil.copyfileobj(data, out)  # type: ignore[arg-type]
            missing = listed - seen - {SIG_FILE}
            if missing:
                raise BundleError(f"{src}: archive lacks {', '.join(sorted(missing))}; re-create it")
            if dest.exists():
                shutil.rmtree(dest)
            tmp.replace(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest
