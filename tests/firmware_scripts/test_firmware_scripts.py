"""firmware_scripts/: shellcheck, provision.sh --dry-run in this (non-Jetson) container,
systemd-analyze verify on the units, a real install-bundle.sh run in a temp state dir, and the
consistency of the udev rules and the 40-pin map."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgekit.bundle.io import write_manifest
from edgekit.bundle.manifest import FORMAT_NAME, FORMAT_VERSION
from edgekit.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "firmware_scripts"
# the CI entry point too: a comment that shellcheck read as a directive (SC1073) once hid it
SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh")) + [SCRIPTS.parent / ".ci" / "run"]
UNITS = sorted(SCRIPTS.glob("*.service"))
IS_JETSON = Path("/etc/nv_tegra_release").exists()


def _edgekit_bin() -> str:
    """The edgekit entry point of the Python running the tests (what install-bundle.sh calls)."""
    cand = Path(sys.executable).parent / "edgekit"
    if cand.exists():
        return str(cand)
    found = shutil.which("edgekit")
    if not found:
        pytest.skip("no edgekit entry point installed (pip install -e .)")
    return found


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------- shellcheck
def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"provision.sh", "install-bundle.sh", "run"} <= names
    for p in SHELL_SCRIPTS:
        text = p.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), p.name
        assert "set -euo pipefail" in text, p.name
        assert os.access(p, os.X_OK), f"{p.name} is not executable (git update-index --chmod=+x)"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install -y shellcheck)")
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script: Path) -> None:
    r = _run(["shellcheck", "--severity=style", "--shell=bash", str(script)])
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- provision.sh
def test_provision_dry_run_prints_the_plan_and_changes_nothing() -> None:
    watched = [Path("/opt/edgekit"), Path("/etc/systemd/system/edgekit.service"), Path("/etc/edgekit"),
               Path("/etc/udev/rules.d/99-edgekit-gpio.rules")]
    before = {p: p.exists() for p in watched}
    r = _run(["bash", str(SCRIPTS / "provision.sh"), "--dry-run"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    if not IS_JETSON:
        assert "not a Jetson" in out and "printing the plan only" in out
    for step in ("APT packages", "Service user edgekit", "Python venv", "Power mode", "systemd unit",
                 "Reload udev", "edgekit doctor"):
        assert f"==> {step}" in out, step
    # the commands a real run would execute, in order
    expected = ["venv --system-site-packages /opt/edgekit/venv", "[jetson,plc] 'cuda-python>=12,<13'",
                "/etc/systemd/system/edgekit.service", "/etc/udev/rules.d/99-edgekit-gpio.rules",
                "/etc/logrotate.d/edgekit", "systemctl daemon-reload", "systemctl enable edgekit.service",
                "edgekit doctor"]
    positions = [out.find(e) for e in expected]
    assert all(p >= 0 for p in positions), dict(zip(expected, positions))
    assert positions == sorted(positions)
    assert {p: p.exists() for p in watched} == before  # nothing was created or removed


def test_provision_rejects_unknown_options_and_prints_help() -> None:
    r = _run(["bash", str(SCRIPTS / "provision.sh"), "--bogus"])
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
    r = _run(["bash", str(SCRIPTS / "provision.sh"), "--help"])
    assert r.returncode == 0 and "--dry-run" in r.stdout and "set -euo" not in r.stdout


@pytest.mark.skipif(IS_JETSON, reason="on a Jetson a real run would provision the machine")
def test_provision_refuses_a_real_run_on_a_non_jetson() -> None:
    r = _run(["bash", str(SCRIPTS / "provision.sh")])
    assert r.returncode == 1 and "not a Jetson" in r.stderr and "--force" in r.stderr
    assert "==> APT packages" not in r.stdout  # stopped before any step


# ----------------------------------------------------------------------------- systemd units
def _verify_unit(unit: Path, tmp_path: Path, text: str | None = None) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on a copy whose executables exist on this machine."""
    text = unit.read_text() if text is None else text
    text = text.replace("/opt/edgekit/venv/bin/edgekit", _edgekit_bin())
    text = text.replace("/usr/bin/jetson_clocks", shutil.which("true") or "/bin/true")
    copy = tmp_path / unit.name
    copy.write_text(text)
    return _run(["systemd-analyze", "verify", str(copy)], env={"SYSTEMD_LOG_COLOR": "0"})


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    r = _verify_unit(unit, tmp_path)
    # verify returns 0 on unknown or unparsable settings and only logs them: demand silence.
    messages = [ln for ln in (r.stdout + r.stderr).splitlines() if unit.name in ln]
    assert r.returncode == 0 and messages == [], r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in the unit is reported."""
    unit = SCRIPTS / "edgekit.service"
    r = _verify_unit(unit, tmp_path, unit.read_text().replace("WatchdogSec=10s", "WatchdogSec=ten"))
    assert "edgekit.service" in r.stdout + r.stderr


def test_unit_commands_exist_in_the_cli() -> None:
    text = (SCRIPTS / "edgekit.service").read_text()
    cmds = re.findall(r"^Exec\w+=/opt/edgekit/venv/bin/edgekit (\S+)", text, flags=re.M)
    assert cmds == ["verify-bundle", "run"]
    assert all(c in cli_main.commands for c in cmds)
    for key in ("Type=notify", "WatchdogSec=", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "PrivateTmp=yes", "DevicePolicy=closed", "DeviceAllow=char-gpiochip rw",
                "DeviceAllow=char-video4linux rw", "DeviceAllow=/dev/nvmap rw", "StateDirectory=edgekit",
                "User=edgekit", "LimitRTPRIO=50"):
        assert key in text, key
    # systemd does not glob device paths: a '*' in a /dev path silently allows nothing
    assert not re.search(r"^DeviceAllow=/dev/\S*[*?]", text, flags=re.M)


# ----------------------------------------------------------------------------- install-bundle.sh
def _bundle(path: Path, bundle_id: str) -> Path:
    path.mkdir(parents=True)
    (path / "model.onnx").write_bytes(f"weights of {bundle_id}".encode())
    write_manifest(path, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "edgekit_version": "0.1.0",
        "bundle_id": bundle_id, "method": "rd", "backbone": {}, "preprocess": {}, "inputs": {}, "outputs": {},
        "models": {"fp32": {"file": "model.onnx", "kind": "onnx"}}, "files": {"model.onnx": ""},
        "thresholds": {"threshold": 0.5}, "created": "2026-11-23T08:00:00Z",
    })
    return path


@pytest.fixture
def station(tmp_path: Path) -> dict[str, Any]:
    state = tmp_path / "state"
    state.mkdir()
    env = {"EDGEKIT_STATE_DIR": str(state), "EDGEKIT_BIN": _edgekit_bin(), "EDGEKIT_USER": "nobody-edgekit-test"}

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        return _run(["bash", str(SCRIPTS / "install-bundle.sh"), "--no-restart", *args], env=env)

    return {"state": state, "bundles": state / "bundles", "install": install, "tmp": tmp_path}


def test_install_bundle_swaps_current_atomically_and_rolls_back(station: dict[str, Any]) -> None:
    tmp, bundles, install = station["tmp"], station["bundles"], station["install"]
    b1, b2 = _bundle(tmp / "src1", "bundle-a"), _bundle(tmp / "src2", "bundle-b")

    r = install("--dry-run", str(b1))
    assert r.returncode == 0 and "+ mv -T" in r.stdout
    assert not (bundles / "current").exists()  # dry run changed nothing

    r = install(str(b1))
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.readlink(bundles / "current") == "bundle-a"
    r = install(str(b1))  # idempotent
    assert r.returncode == 0 and "already installed and intact" in r.stdout and "already points at" in r.stdout

    r = install(str(b2))
    assert r.returncode == 0, r.stderr
    assert os.readlink(bundles / "current") == "bundle-b" and os.readlink(bundles / "previous") == "bundle-a"
    assert (bundles / "current" / "model.onnx").read_bytes() == b"weights of bundle-b"
    assert not list(bundles.glob(".*tmp*"))  # no temp dirs or links left behind

    r = install("--rollback")
    assert r.returncode == 0
    assert os.readlink(bundles / "current") == "bundle-a" and os.readlink(bundles / "previous") == "bundle-b"

    # pruning keeps current and previous plus --keep N others
    r = install("--keep", "0", str(_bundle(tmp / "src3", "bundle-c")))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in bundles.iterdir() if not p.is_symlink()) == ["bundle-a", "bundle-c"]
    assert os.readlink(bundles / "current") == "bundle-c" and os.readlink(bundles / "previous") == "bundle-a"


def test_install_bundle_refuses_a_tampered_bundle(station: dict[str, Any]) -> None:
    tmp, bundles, install = station["tmp"], station["bundles"], station["install"]
    assert install(str(_bundle(tmp / "good", "bundle-good"))).returncode == 0
    bad = _bundle(tmp / "bad", "bundle-bad")
    (bad / "model.onnx").write_bytes(b"tampered")
    r = install(str(bad))
    assert r.returncode != 0 and "sha256" in r.stdout + r.stderr
    assert os.readlink(bundles / "current") == "bundle-good"
    assert not (bundles / "bundle-bad").exists()


# ----------------------------------------------------------------------------- udev rules, pin map
def test_udev_rules_are_well_formed() -> None:
    pair = re.compile(r'^(SUBSYSTEM|KERNEL|ACTION|ATTRS?\{[\w]+\}|GROUP|MODE|SYMLINK|OWNER|TAG)'
                      r'(==|!=|\+=|=)"[^"]*"$')
    rules = [ln for ln in (SCRIPTS / "99-edgekit-gpio.rules").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules
    for rule in rules:
        for part in (p.strip() for p in rule.split(",")):
            assert pair.match(part), f"bad udev key in {rule!r}: {part!r}"
    text = "\n".join(rules)
    assert 'SUBSYSTEM=="gpio", KERNEL=="gpiochip[0-9]*", GROUP="gpio", MODE="0660"' in text
    assert 'SUBSYSTEM=="video4linux", GROUP="video"' in text


def test_pinmap_is_consistent() -> None:
    data = yaml.safe_load((SCRIPTS / "pinmap" / "jetson-orin-40pin.yaml").read_text())
    assert data["schema"] == "edgekit-pinmap/1"
    modules = data["modules"]
    assert {"orin-nano", "orin-nx", "agx-orin"} <= set(modules)
    assert modules["orin-nano"]["same_as"] in modules
    for name, mod in modules.items():
        mod = modules[mod["same_as"]] if "same_as" in mod else mod
        pins = mod["pins"]
        numbers = [p["pin"] for p in pins]
        assert len(set(numbers)) == len(numbers) and all(1 <= n <= 40 for n in numbers), name
        assert len({(p["chip"], p["offset"]) for p in pins}) == len(pins), name
        assert len({p["line"] for p in pins}) == len(pins), name
        by_pin = {p["pin"]: p for p in pins}
        for p in pins:
            assert re.fullmatch(r"P[A-Z]{1,2}\.0[0-7]", p["line"]), p
            assert p["chip"] in ("tegra234-gpio", "tegra234-gpio-aon"), p
        sug = mod["suggested"]
        assert all(v in by_pin for v in sug.values()), name
        # the encoder pair is one gpiod request: both lines on one chip
        assert by_pin[sug["encoder_a_in"]]["chip"] == by_pin[sug["encoder_b_in"]]["chip"], name
    # spot checks against NVIDIA's jetson-gpio table
    nx = {p["pin"]: p for p in modules["orin-nx"]["pins"]}
    assert (nx[7]["line"], nx[7]["offset"]) == ("PAC.06", 144)
    agx = {p["pin"]: p for p in modules["agx-orin"]["pins"]}
    assert (agx[16]["line"], agx[16]["chip"], agx[16]["offset"]) == ("PBB.01", "tegra234-gpio-aon", 9)


def test_docs_example_config_is_a_valid_run_config_on_the_suggested_pins() -> None:
    """The config in docs/deploy-jetson.md validates with the daemon's loader, and its line offsets
    are the pin map's suggested Orin Nano/NX pins."""
    run = pytest.importorskip("edgekit.config.run")
    text = (REPO / "docs" / "deploy-jetson.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    cfg = run.parse_run_config(yaml.safe_load(block), "docs/deploy-jetson.md")
    pinmap = yaml.safe_load((SCRIPTS / "pinmap" / "jetson-orin-40pin.yaml").read_text())["modules"]["orin-nx"]
    by_pin = {p["pin"]: p for p in pinmap["pins"]}
    sug = {role: by_pin[pin]["offset"] for role, pin in pinmap["suggested"].items()}
    (out,) = cfg.outputs
    assert out.active_low is True
    assert (out.lines.reject, out.lines.ready, out.lines.heartbeat) == (
        sug["reject_out"], sug["ready_out"], sug["heartbeat_out"])
    assert (cfg.encoder.line, cfg.encoder.direction_line) == (sug["encoder_a_in"], sug["encoder_b_in"])
    assert cfg.bundle == "/var/lib/edgekit/bundles/current"  # what the unit's ExecStartPre verifies
