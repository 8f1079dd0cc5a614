"""The example configs in recipes/deploy validate, and ``edgekit run --check`` reports errors
in one line per problem without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgekit.config.run import load_run_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "recipes" / "deploy").glob("*.yaml"))


def test_examples_present() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"csi-gpio.yaml", "usb-modbus.yaml", "replay-fake-gpio.yaml", "sim-line.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    cfg = load_run_config(path)
    assert Path(cfg.bundle).is_absolute()


def test_run_check_with_a_real_bundle(intensity_bundle, tmp_path) -> None:
    data = yaml.safe_load((ROOT / "recipes" / "deploy" / "usb-modbus.yaml").read_text())
    data["bundle"] = str(intensity_bundle)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", "--check", str(p)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["resolved"]["outputs"][1]["type"] == "modbus"


@pytest.mark.parametrize("patch, message", [
    ({"scheduler": {"mode": "time", "pulse_ms": -5}}, "scheduler.pulse_ms: -5 input should be greater than 0"),
    ({"outputs": [{"type": "gpoid", "lines": {"reject": 1}}]}, "outputs[0]"),
    ({"source": {"type": "usb", "device": 0, "exposre": 5}}, "source.exposre: unknown key"),
    ({"decision": {"deadline_ms": 900}}, "must be below scheduler.delay_ms"),
    ({"bundle": "/nonexistent/bundle"}, "bundle directory not found"),
])
def test_run_check_errors_are_one_line_each(intensity_bundle, tmp_path, patch, message) -> None:
    data = yaml.safe_load((ROOT / "recipes" / "deploy" / "usb-modbus.yaml").read_text())
    data["bundle"] = str(intensity_bundle)
    data.update(patch)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", "--check", str(p)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert message in r.stderr, r.stderr
