"""Signed bundles: Ed25519 (``cryptography``) over the manifest.

The manifest lists the sha256 of every file in the bundle, so anyone who can write the bundle
can rewrite a model and its hash together. A signature made with a private key kept off the
station closes that: the station holds only public keys (``trust:`` in the deploy config).

What is signed, exactly: the bytes of ``manifest.json`` as stored in the bundle (no
re-serialisation, no canonical form). The signature and the id of the key that made it are
stored beside it in ``manifest.sig`` (JSON, below); ``manifest.sig`` itself is not listed in the
manifest. Because the manifest carries every file's sha256, checking the signature and then the
hashes (``load_bundle`` does both, in that order, from one read of the manifest) covers every
file. Rewriting the manifest (``build --engine-only`` adds engines) removes a stale
``manifest.sig``: sign again with ``edgekit keys sign``.

``manifest.sig``::

    {"format": "edgekit-signature", "version": 1, "algorithm": "ed25519",
     "signed_file": "manifest.json", "manifest_sha256": "<hex>", "key_id": "<16 hex>",
     "signature": "<base64, 64 bytes>"}

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key. Keys are PEM
files: ``NAME.key`` (PKCS#8, unencrypted, mode 0600; keep it off stations and out of bundles)
and ``NAME.pub`` (SubjectPublicKeyInfo), so ``openssl pkeyutl -verify -pubin -inkey NAME.pub
-rawin -in manifest.json -sigfile SIG.bin`` checks a signature without edgekit."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError, ConfigError

SIG_FILE = "manifest.sig"
MANIFEST = "manifest.json"
SIG_FORMAT = "edgekit-signature"
SIG_VERSION = 1


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("signed bundles need the cryptography package: pip install 'cryptography>=41'") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of sha256(raw public key bytes)."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    """A public key from the trust list."""

    key_id: str
    path: Path
    public_key: Any


# ----------------------------------------------------------------------------- keys
def new_keypair(out_dir: str | Path, name: str = "edgekit") -> tuple[Path, Path, str]:
    """Write ``out_dir/NAME.key`` (private, 0600, never overwritten) and ``out_dir/NAME.pub``.
    Returns (private key path, public key path, key id)."""
    serialization, ed25519 = _crypto()
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: use a plain file name such as 'line3-2026'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    for p in (key_path, pub_path):
        if p.exists():
            raise ConfigError(f"{p} already exists; choose another --name or --out (keys are never overwritten)")
    priv = ed25519.Ed25519PrivateKey.generate()
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    pub = priv.public_key()
    # O_EXCL with mode 0600 from the start: the private key is never readable by others, not even briefly
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(key_path, 0o600)  # whatever the umask made of it
    pub_path.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(pub_path, 0o644)
    return key_path, pub_path, key_id(pub)


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM file (``NAME.key``); ConfigError naming the file."""
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the signing key ({exc.strerror or exc}); create one with "
                          "`edgekit keys new --out DIR`") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        hint = "a public key: sign with the .key file" if b"PUBLIC KEY" in data else "an unencrypted PEM private key"
        raise ConfigError(f"{p}: not {hint} ({str(exc).splitlines()[0] if str(exc) else 'unreadable'}); "
                          "use the NAME.key that `edgekit keys new` wrote") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p}: a {type(key).__name__}, not an Ed25519 key; create one with `edgekit keys new`")
    return key


def load_public_key(path: str | Path) -> TrustedKey:
    """An Ed25519 public key (PEM SubjectPublicKeyInfo, or an OpenSSH ``ssh-ed25519`` line)."""
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"trust: {p}: cannot read the public key ({exc.strerror or exc}); copy the .pub "
                          "file there or fix the path") from None
    if re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data):
        raise ConfigError(f"trust: {p} is a private key; a station trusts public keys only (the .pub file): "
                          "remove the private key from this machine")
    try:
        if data.lstrip().startswith(b"ssh-ed25519"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError(f"trust: {p}: not a PEM or OpenSSH public key; use the NAME.pub that "
                          "`edgekit keys new` wrote") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"trust: {p}: a {type(key).__name__}, not an Ed25519 key; bundles are signed with Ed25519")
    return TrustedKey(key_id(key), p, key)


def load_trust(entries: Iterable[str | Path]) -> list[TrustedKey]:
    """Public keys from files, or directories (every ``*.pub`` in them). An entry that yields no
    key is an error: an empty trust list would silently accept everything."""
    keys: list[TrustedKey] = []
    for e in entries:
        p = Path(e)
        if p.is_dir():
            found = sorted(p.glob("*.pub"))
            if not found:
                raise ConfigError(f"trust: {p} holds no *.pub key; copy the signer's public key there")
            keys += [load_public_key(f) for f in found]
        else:
            keys.append(load_public_key(p))
    return keys


# ----------------------------------------------------------------------------- sign / verify
def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def sign_bundle(bundle_dir: str | Path, key: Any, key_path: str | Path | None = None) -> dict[str, Any]:
    """Sign ``bundle_dir/manifest.json`` with ``key`` (an Ed25519 private key, or the path of its
    PEM file) and write ``manifest.sig`` atomically. Refuses a key file inside the bundle."""
    d = Path(bundle_dir)
    if isinstance(key, (str, Path)):
        key_path = Path(key)
        key = load_private_key(key_path)
    if key_path is not None and _inside(Path(key_path), d):
        raise ConfigError(f"{key_path}: the signing key lies inside the bundle {d}; move it out (a private key "
                          "must never travel with a bundle)")
    mf = d / MANIFEST
    try:
        data = mf.read_bytes()
    except OSError:
        raise BundleError(f"{d}: no {MANIFEST} to sign; build the bundle first") from None
    sig = {"format": SIG_FORMAT, "version": SIG_VERSION, "algorithm": "ed25519", "signed_file": MANIFEST,
           "manifest_sha256": hashlib.sha256(data).hexdigest(), "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(data)).decode("ascii")}
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{SIG_FILE}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sig, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / SIG_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sig


def read_signature(bundle_dir: str | Path) -> dict[str, Any] | None:
    """The parsed ``manifest.sig``, None when absent; BundleError when unreadable."""
    p = Path(bundle_dir) / SIG_FILE
    if not p.is_file():
        return None
    try:
        sig = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        sig = None
    if not (isinstance(sig, dict) and sig.get("format") == SIG_FORMAT and isinstance(sig.get("signature"), str)
            and isinstance(sig.get("key_id"), str)):
        raise BundleError(f"{p}: unreadable signature file; sign the bundle again (`edgekit keys sign`)")
    if sig.get("version") != SIG_VERSION or sig.get("algorithm") != "ed25519":
        raise BundleError(f"{p}: signature version {sig.get('version')!r} / {sig.get('algorithm')!r} is not one this "
                          "edgekit checks (version 1, ed25519); upgrade edgekit or sign again")
    return sig


def verify_signature(bundle_dir: str | Path, manifest_bytes: bytes, trust: list[TrustedKey]) -> TrustedKey:
    """Check ``manifest.sig`` against ``manifest_bytes`` (the manifest exactly as read) with the
    trusted keys. Returns the key that signed; BundleError (one line) for unsigned, unknown-key or
    wrong signatures."""
    from cryptography.exceptions import InvalidSignature

    d = Path(bundle_dir)
    sig = read_signature(d)
    if sig is None:
        raise BundleError(f"{d}: bundle is not signed, and this station trusts only signed bundles (trust: "
                          f"{', '.join(k.key_id for k in trust)}); build it with --sign KEY or run "
                          "`edgekit keys sign BUNDLE --key KEY`")
    match = [k for k in trust if k.key_id == sig["key_id"]]
    if not match:
        raise BundleError(f"{d}: signed by key {sig['key_id']}, which this station does not trust (trust: "
                          f"{', '.join(k.key_id for k in trust)}); sign with a trusted key or add its .pub to trust:")
    try:
        raw = base64.b64decode(sig["signature"], validate=True)
        match[0].public_key.verify(raw, manifest_bytes)
    except (InvalidSignature, binascii.Error, ValueError):
        raise BundleError(f"{d}: {SIG_FILE} does not match manifest.json (changed after signing, or forged); "
                          "copy the bundle again from its source, or rebuild and sign it") from None
    return match[0]


__all__ = ["SIG_FILE", "TrustedKey", "key_id", "load_private_key", "load_public_key", "load_trust", "new_keypair",
           "read_signature", "sign_bundle", "verify_signature"]
