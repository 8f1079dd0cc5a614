"""Signed bundles (edgekit.bundle.signing): Ed25519 over manifest.json's bytes, checked against
the station's trust list by load_bundle (daemon start, hot swap, run --check), verify-bundle and
install-bundle.sh; keys from `edgekit keys new`; build --sign never puts a private key into a
bundle."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.bundle import archive as archive_mod
from edgekit.bundle.archive import pack_archive
from edgekit.bundle.io import load_bundle, write_manifest
from edgekit.bundle.signing import (
    SIG_FILE,
    load_private_key,
    load_trust,
    new_keypair,
    read_signature,
    sign_bundle,
)
from edgekit.cli import main as cli
from edgekit.errors import BundleError, ConfigError
from edgekit.sim.bundles import write_intensity_bundle


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    k, p, _ = new_keypair(tmp_path / "keys", "line3")
    k2, p2, _ = new_keypair(tmp_path / "keys", "other")
    return {"key": k, "pub": p, "other_key": k2, "other_pub": p2}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_intensity_bundle(tmp_path / "b", size=32)


def test_keys_new_modes_ids_and_no_overwrite(tmp_path: Path) -> None:
    key, pub, kid = new_keypair(tmp_path / "k", "station")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    [trusted] = load_trust([pub])
    assert trusted.key_id == kid and len(kid) == 16
    with pytest.raises(ConfigError, match="already exists"):
        new_keypair(tmp_path / "k", "station")
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # untouched


def test_cli_keys_new(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["keys", "new", "--out", str(tmp_path / "k"), "--name", "l1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "k" / "l1.key").is_file() and (tmp_path / "k" / "l1.pub").is_file()
    assert "0600" in r.output and "trust:" in r.output


def test_signature_is_over_the_manifest_bytes(bundle: Path, keys: dict[str, Path]) -> None:
    sig = sign_bundle(bundle, keys["key"])
    data = (bundle / "manifest.json").read_bytes()
    on_disk = json.loads((bundle / SIG_FILE).read_text())
    assert on_disk == sig and set(sig) == {"format", "version", "algorithm", "signed_file", "manifest_sha256",
                                           "key_id", "signature"}
    assert sig["signed_file"] == "manifest.json" and sig["algorithm"] == "ed25519"
    # exactly manifest.json's bytes: the public key alone checks it, without edgekit's code
    pub = load_trust([keys["pub"]])[0].public_key
    pub.verify(base64.b64decode(sig["signature"]), data)
    b = load_bundle(bundle, trust=load_trust([keys["pub"]]))
    assert b.signed_by == sig["key_id"]
    assert load_bundle(bundle).signed_by is None  # no trust list: not checked


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_verifies_the_signature(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    sig = sign_bundle(bundle, keys["key"])
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(sig["signature"]))
    r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["pub"]), "-rawin",
                        "-in", str(bundle / "manifest.json"), "-sigfile", str(tmp_path / "sig.bin")],
                       capture_output=True, text=True, timeout=30, check=False)
    if "rawin" in r.stderr and r.returncode != 0:
        pytest.skip(f"this openssl has no -rawin (needs OpenSSL 3): {r.stderr.strip()}")
    assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r.stdout + r.stderr


def test_trust_refuses_unsigned_foreign_and_rewritten_bundles(bundle: Path, keys: dict[str, Path]) -> None:
    trust = load_trust([keys["pub"]])
    with pytest.raises(BundleError, match="not signed") as e:
        load_bundle(bundle, trust=trust)
    assert "\n" not in str(e.value)
    sign_bundle(bundle, keys["other_key"])  # a key this station does not trust
    with pytest.raises(BundleError, match="does not trust"):
        load_bundle(bundle, trust=trust)
    sign_bundle(bundle, keys["key"])
    load_bundle(bundle, trust=trust)
    # the attack the sha256 list alone cannot stop: model and manifest rewritten together
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"\0")
    m = json.loads((bundle / "manifest.json").read_text())
    sig_before = (bundle / SIG_FILE).read_bytes()
    write_manifest(bundle, m)  # recomputes the hashes: intact without a trust list ...
    load_bundle(bundle)
    assert not (bundle / SIG_FILE).exists()  # ... and the stale signature is gone
    (bundle / SIG_FILE).write_bytes(sig_before)  # the attacker keeps the old signature
    with pytest.raises(BundleError, match="does not match manifest.json"):
        load_bundle(bundle, trust=trust)
    (bundle / SIG_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable signature"):
        load_bundle(bundle, trust=trust)


def test_trust_entries_are_checked(tmp_path: Path, keys: dict[str, Path]) -> None:
    assert [k.key_id for k in load_trust([keys["pub"].parent])] == [k.key_id for k in load_trust(
        [keys["pub"], keys["other_pub"]])]  # a folder: every *.pub, sorted
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pub").write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    for entry, msg in ((keys["key"], "is a private key"), (tmp_path / "missing.pub", "cannot read"),
                       (tmp_path / "empty", "no \\*.pub"), (tmp_path / "junk.pub", "not a PEM or OpenSSH")):
        with pytest.raises(ConfigError, match=msg):
            load_trust([entry])
    with pytest.raises(ConfigError, match="public key: sign with the .key file"):
        load_private_key(keys["pub"])


def test_openssh_public_key_is_accepted(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pub = load_trust([keys["pub"]])[0]
    line = pub.public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (tmp_path / "line3.ssh.pub").write_bytes(line + b" ci@builder\n")
    sign_bundle(bundle, keys["key"])
    assert load_bundle(bundle, trust=load_trust([tmp_path / "line3.ssh.pub"])).signed_by == pub.key_id


def test_signature_travels_in_the_archive(bundle: Path, keys: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert archive_mod.SIG_FILE == SIG_FILE
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    trust = load_trust([keys["pub"]])
    unsigned = pack_archive(bundle, tmp_path / "unsigned.edgekit")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(unsigned, trust=trust)
    sign_bundle(bundle, keys["key"])
    signed = pack_archive(bundle, tmp_path / "signed.edgekit")
    b = load_bundle(signed, trust=trust)
    assert b.signed_by == trust[0].key_id and read_signature(b.path) == read_signature(bundle)


def test_verify_bundle_cli(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["verify-bundle", str(bundle)])
    assert r.exit_code == 0
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "unsigned" in warnings[0] and "no trust list" in warnings[0]
    r = run(cli, ["verify-bundle", str(bundle), "--trust", str(keys["pub"])])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "not signed" in r.stderr
    sign_bundle(bundle, keys["key"])
    r = run(cli, ["verify-bundle", str(bundle), "--trust", str(keys["pub"])])
    assert r.exit_code == 0 and "signature by trusted key" in r.stdout and r.stderr == ""
    # --config: the bundle the config names, with the config's trust list (paths relative to it)
    cfg_dir = tmp_path / "etc"
    cfg_dir.mkdir()
    shutil.copy(keys["other_pub"], cfg_dir / "other.pub")
    (cfg_dir / "config.yaml").write_text(yaml.safe_dump({
        "bundle": str(bundle), "source": {"type": "folder", "path": str(tmp_path)}, "trust": ["other.pub"]}))
    r = run(cli, ["verify-bundle", "--config", str(cfg_dir / "config.yaml")])
    assert r.exit_code == 2 and "does not trust" in r.stderr
    shutil.copy(keys["pub"], cfg_dir / "line3.pub")
    (cfg_dir / "config.yaml").write_text(yaml.safe_dump({
        "bundle": str(bundle), "source": {"type": "folder", "path": str(tmp_path)}, "trust": ["line3.pub"]}))
    r = run(cli, ["verify-bundle", "--config", str(cfg_dir / "config.yaml")])
    assert r.exit_code == 0 and str(cfg_dir / "line3.pub") in r.stdout
    r = run(cli, ["verify-bundle"])
    assert r.exit_code == 2 and "give BUNDLE_DIR" in r.stderr


def test_keys_sign_cli_refuses_broken_bundles_and_keys_inside(bundle: Path, keys: dict[str, Path]) -> None:
    run = CliRunner().invoke
    (bundle / "model.onnx").write_bytes(b"tampered")
    r = run(cli, ["keys", "sign", str(bundle), "--key", str(keys["key"])])
    assert r.exit_code == 2 and "sha256" in r.stderr and not (bundle / SIG_FILE).exists()
    good = write_intensity_bundle(bundle.parent / "good", size=32)
    shutil.copy(keys["key"], good / "line3.key")
    r = run(cli, ["keys", "sign", str(good), "--key", str(good / "line3.key")])
    assert r.exit_code == 2 and "inside the bundle" in r.stderr and not (good / SIG_FILE).exists()


def _private_material(key_file: Path) -> list[bytes]:
    from cryptography.hazmat.primitives import serialization

    k = load_private_key(key_file)
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pem_body = b"".join(key_file.read_bytes().splitlines()[1:-1])
    return [raw, base64.b64encode(raw), pem_body, b"PRIVATE KEY"]


def test_build_sign_writes_no_private_key_into_the_bundle(tiny_run: Path, tmp_path: Path,
                                                          keys: dict[str, Path]) -> None:
    out = tmp_path / "signed-bundle"
    r = CliRunner().invoke(cli, ["build", str(tiny_run), "--out", str(out), "--sign", str(keys["key"]), "--archive"])
    assert r.exit_code == 0, r.output
    assert "signed manifest.json with key" in r.stdout
    b = load_bundle(out, trust=load_trust([keys["pub"]]))
    assert b.signed_by is not None
    assert SIG_FILE not in b.manifest["files"]  # the signature is beside the manifest, not in it
    secrets = _private_material(keys["key"])
    shipped = [p for p in out.rglob("*") if p.is_file()] + [out.with_name(out.name + ".edgekit")]
    assert {p.name for p in shipped} >= {"manifest.json", SIG_FILE, "model.onnx", "signed-bundle.edgekit"}
    for p in shipped:
        data = p.read_bytes()
        assert not any(s in data for s in secrets), f"private key material in {p}"
    # a key inside the output folder is refused before anything is built
    out.mkdir(exist_ok=True)
    shutil.copy(keys["key"], out / "k.key")
    r = CliRunner().invoke(cli, ["build", str(tiny_run), "--out", str(out), "--sign", str(out / "k.key")])
    assert r.exit_code == 2 and "inside the bundle directory" in r.stderr
    r = CliRunner().invoke(cli, ["build", str(tiny_run), "--out", str(tmp_path / "x"), "--sign", str(keys["pub"])])
    assert r.exit_code == 2 and "sign with the .key file" in r.stderr and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- daemon
def _run_config(tmp_path: Path, bundle: Path, trust: list[str]) -> dict:
    import os
    import time

    import cv2
    import numpy as np

    (tmp_path / "frames").mkdir(exist_ok=True)
    for i, v in enumerate((20, 200)):
        cv2.imwrite(str(tmp_path / "frames" / f"f{i}.png"), np.full((40, 56, 3), v, np.uint8))
    return {"bundle": str(bundle), "trust": trust,
            "source": {"type": "folder", "path": str(tmp_path / "frames"), "rate_hz": 5, "loop": True},
            "outputs": [{"type": "fake_gpio", "chip": f"sign-{os.getpid()}-{time.monotonic_ns()}"}],
            "decision": {"deadline_ms": 300}, "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
            "events": {"path": str(tmp_path / "ev.db")}, "metrics": {"enabled": False}}


def test_daemon_start_and_hot_swap_obey_the_trust_list(tmp_path: Path, keys: dict[str, Path]) -> None:
    from edgekit.config.run import parse_run_config
    from edgekit.runtime.daemon import Daemon

    live = write_intensity_bundle(tmp_path / "live", size=32)
    cfg = parse_run_config(_run_config(tmp_path, live, [str(keys["pub"])]))
    with pytest.raises(BundleError, match="not signed") as e:
        Daemon(cfg).start()  # refused before anything opens
    assert "\n" not in str(e.value) and not (tmp_path / "ev.db").exists()
    sign_bundle(live, keys["key"])
    d = Daemon(cfg)
    d.start()
    try:
        assert d.pipeline.bundle.signed_by == load_trust([keys["pub"]])[0].key_id
        assert not any("trust" in n for n in d.notes)
        first = d.pipeline.bundle.bundle_id
        unsigned = write_intensity_bundle(tmp_path / "unsigned", size=32)
        assert d.reload_bundle(unsigned) is False  # hot swap refused, the old bundle keeps deciding
        foreign = write_intensity_bundle(tmp_path / "foreign", size=32)
        sign_bundle(foreign, keys["other_key"])
        assert d.reload_bundle(foreign) is False
        assert d.pipeline.bundle.bundle_id == first
        sign_bundle(unsigned, keys["key"])
        assert d.reload_bundle(unsigned) is True and d.pipeline.bundle.bundle_id != first
        snap = d.metrics.snapshot()
        assert snap["edgekit_bundle_swaps_total{result=refused}"] == 2.0
        assert snap["edgekit_bundle_swaps_total{result=ok}"] == 1.0
    finally:
        d.request_stop()
        d.wait()
    import sqlite3

    with sqlite3.connect(tmp_path / "ev.db") as conn:
        notes = [m for (m,) in conn.execute("SELECT message FROM notes WHERE kind = 'bundle_refused' ORDER BY id")]
    assert len(notes) == 2 and "not signed" in notes[0] and "does not trust" in notes[1]


def test_run_check_refuses_an_unsigned_bundle(tmp_path: Path, keys: dict[str, Path]) -> None:
    live = write_intensity_bundle(tmp_path / "live", size=32)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_run_config(tmp_path, live, [str(keys["pub"])])))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "run.yaml"), "--check"])
    assert r.exit_code == 2 and "not signed" in r.stderr and r.stderr.count("\n") == 1


def test_station_without_trust_list_warns_once(tmp_path: Path) -> None:
    from edgekit.config.run import parse_run_config
    from edgekit.runtime.daemon import Daemon

    live = write_intensity_bundle(tmp_path / "live", size=32)
    data = _run_config(tmp_path, live, [])
    data["source"] = {"type": "usb", "device": 0}  # a station camera (not opened here)
    d = Daemon(parse_run_config(data))
    assert d._load_trust() == []
    assert [n for n in d.notes if "no trust list" in n] == [d.notes[-1]] and "edgekit keys new" in d.notes[-1]
    replay = Daemon(parse_run_config(_run_config(tmp_path, live, [])))
    assert replay._load_trust() == [] and replay.notes == []  # a workstation replay is not a station
