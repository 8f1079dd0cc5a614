"""`edgekit run --check` checks every file, folder and device a deploy config names, and every
shipped deploy config passes it once `make demo` has written demo-out/ (bundle, line video)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "edgekit" / "recipes" / "deploy").glob("*.yaml"))
STATION = "/var/lib/edgekit/bundles/current"


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory, tiny_bundle, tiny_dataset) -> Path:
    """A copy of the package's deploy configs with what `make demo` leaves in demo-out/ beside it."""
    from edgekit.demo import write_line_video

    root = tmp_path_factory.mktemp("checkout")
    deploy = root / "edgekit" / "recipes" / "deploy"
    deploy.mkdir(parents=True)
    for p in SHIPPED:
        shutil.copy(p, deploy / p.name)
    shutil.copytree(tiny_bundle, root / "demo-out" / "bundle-rd-lite0")
    write_line_video(tiny_dataset, root / "demo-out" / "line.mp4")
    return root


def _check(cfg: Path, *sets: str) -> tuple[int, str, dict | None]:
    args = ["run", "--check", str(cfg)] + [a for s in sets for a in ("--set", s)]
    r = CliRunner().invoke(main, args)
    out = r.stdout
    doc = json.loads(out[: out.rindex("}") + 1]) if "{" in out else None
    return r.exit_code, r.output, doc


@pytest.mark.parametrize("name", [p.name for p in SHIPPED])
def test_every_shipped_config_passes_check_after_the_demo(demo_tree: Path, name: str) -> None:
    cfg = demo_tree / "edgekit" / "recipes" / "deploy" / name
    station = yaml.safe_load(cfg.read_text())["bundle"] == STATION
    # station configs name the installed bundle; here the demo's stands in for it
    sets = [f"bundle={demo_tree / 'demo-out' / 'bundle-rd-lite0'}"] if station else []
    code, out, doc = _check(cfg, *sets)
    assert code == 0, out
    assert doc["ok"] and {c["status"] for c in doc["checks"]} <= {"ok", "deferred"}
    assert doc["checks"][0]["what"] == "bundle" and doc["checks"][0]["status"] == "ok"


def test_missing_video_is_an_error_naming_it(demo_tree: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((demo_tree / "edgekit" / "recipes" / "deploy" / "replay-fake-gpio.yaml").read_text())
    data["bundle"] = str(demo_tree / "demo-out" / "bundle-rd-lite0")
    data["source"]["path"] = str(tmp_path / "demo-out" / "line.mp4")
    data["events"]["path"] = str(tmp_path / "ev.db")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code, out, doc = _check(cfg)
    assert code != 0 and not doc["ok"]
    assert f"error: {cfg}: source.path: " in out
    assert "line.mp4 does not exist (make demo writes it)" in out


def test_devices_absent_here_are_deferred_and_wrong_chip_labels_are_errors(demo_tree: Path, tmp_path: Path,
                                                                          fake_chip) -> None:
    data = yaml.safe_load((demo_tree / "edgekit" / "recipes" / "deploy" / "usb-modbus.yaml").read_text())
    data["bundle"] = str(demo_tree / "demo-out" / "bundle-rd-lite0")
    data["events"] = {"path": str(tmp_path / "ev.db")}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code, out, doc = _check(cfg, "outputs.0.chip=tegra234-gpio")  # the fake gpiod's chip labels
    chip = [c for c in doc["checks"] if c["what"].endswith(".chip")]
    assert code == 0 and chip and all(c["status"] == "ok" for c in chip), out
    assert "is " + str(fake_chip.path) in chip[0]["detail"]
    code, out, doc = _check(cfg, "outputs.0.chip=tegra194-gpio")
    assert code != 0 and "no gpiochip with label 'tegra194-gpio'" in out
    code, out, doc = _check(cfg, "outputs.0.chip=/dev/gpiochip0")  # a path that is not a chip here
    assert code != 0 and "/dev/gpiochip0 is not a gpiochip device" in out
