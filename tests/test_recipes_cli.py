"""Shipped recipes (package data), `edgekit recipes`, `recipes show`, `init-config`, and
`--set key.path=value` for train and run: validated like the YAML, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.cli import main
from edgekit.config.catalog import CAMERAS, OUTPUTS, measured, recipes_dir, training_names
from edgekit.config.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


def one_error(code: int, out: str, *needles: str) -> str:
    assert code != 0 and "Traceback" not in out, out
    errs = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1, out
    for n in needles:
        assert n in errs[0], (n, out)
    return errs[0]


def test_recipes_ship_inside_the_package_and_the_checkout_link_points_there() -> None:
    d = recipes_dir()
    assert d.parent.name == "edgekit" and (d / "rd-lite0.yaml").is_file() and (d / "deploy" / "usb-modbus.yaml").is_file()
    assert (ROOT / "recipes").resolve() == d.resolve()
    for name in training_names():
        load_recipe(d / f"{name}.yaml")  # every shipped recipe validates


def test_recipes_lists_every_recipe_with_its_figures() -> None:
    code, out = run("recipes")
    assert code == 0, out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and ln.split()[0] in training_names()}
    assert set(lines) == set(training_names())
    rd = lines["rd-lite0"].split()
    assert rd[:5] == ["rd-lite0", "rd", "tf_efficientnet_lite0", "256²", "30"]
    assert "0.917 (30 ep)" in lines["rd-lite0"] and "1.000 (10 ep)" in lines["rd-lite0"]
    assert lines["rd-lite0"].endswith("9.2 / 5.9")
    assert "not measured" in lines["mrkd-wrn50"] and "not measured" in lines["cse-b3"]
    code, out = run("recipes", "--json")
    data = json.loads(out)
    assert code == 0 and {r["name"] for r in data["recipes"]} == set(training_names())
    assert "usb-modbus" in data["deploy"]


def _benchmark_rows(section: str = "2026-12-01 (late)") -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(dataset, recipe, precision) -> (image AUROC, ORT median ms, epochs) from a benchmark table
    section that measured.json cites (benchmarks/README.md; by default the 2026-12-01 late run)."""
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert f"### {section}" in text, section
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    out = {}
    for part in body.split("\n#### ")[1:]:
        name = part.split("\n", 1)[0].strip()
        ds = {"elpv-mono": "elpv_mono", "elpv-poly": "elpv_poly", "fabric": "fabric"}.get(name)
        for ln in part.splitlines() if ds else []:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if len(cells) > 9 and cells[0] == "edgekit":
                epochs = int(re.search(r"\((\d+)\)", cells[7]).group(1))
                out[(ds, cells[1], cells[2])] = (float(cells[3]), float(cells[9].split("/")[0]), epochs)
    return out


def test_measured_figures_are_the_benchmark_tables() -> None:
    meas = measured()["recipes"]
    assert set(meas) == {"rd-lite0", "rrd-lite0", "mrkd-lite0", "cse-lite0", "rd-mem-lite0"}
    for recipe, per_ds in meas.items():
        for ds, m in per_ds.items():
            if not isinstance(m, dict):
                continue  # "source": where that recipe's run was made
            rows = _benchmark_rows(m.get("section", "2026-12-01 (late)"))
            auc32, ms32, ep = rows[(ds, recipe, "fp32")]
            auc8, ms8, _ = rows[(ds, recipe, "int8")]
            assert (m["image_auroc_fp32"], m["ort_ms_fp32"], m["epochs"]) == (auc32, ms32, ep), (recipe, ds)
            assert (m["image_auroc_int8"], m["ort_ms_int8"]) == (auc8, ms8), (recipe, ds)
    assert meas["rd-mem-lite0"]["source"]  # measured on another machine: the table says so


def test_show_writes_the_file_with_its_comments(tmp_path: Path) -> None:
    code, out = run("recipes", "show", "rd-lite0")
    assert code == 0 and out == (recipes_dir() / "rd-lite0.yaml").read_text(encoding="utf-8")
    (tmp_path / "my.yaml").write_text(out)
    assert load_recipe(tmp_path / "my.yaml").name == "rd-lite0"
    code, out = run("recipes", "show", "deploy/usb-modbus")
    assert code == 0 and yaml.safe_load(out)["outputs"][1]["type"] == "modbus"
    one_error(*run("recipes", "show", "rd-lite9"), "rd-lite9", "rd-lite0", "usb-modbus")


def test_train_by_name_with_set_overrides(tiny_dataset: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    code, out = run("train", "rd-lite0", "--data", str(tiny_dataset), "--out", str(out_dir),
                    "--set", "backbone.weights=none", "--set", "input.size=64", "--set", "train.epochs=1",
                    "--set", "method.decoder_width=0.5", "--set", "train.betas=[0.9, 0.99]")
    assert code == 0, out
    used = yaml.safe_load((out_dir / "recipe.yaml").read_text())
    assert used["name"] == "rd-lite0" and used["input"]["size"] == 64 and used["train"]["epochs"] == 1
    assert used["backbone"]["weights"] == "none" and used["train"]["betas"] == [0.9, 0.99]
    assert used["method"]["decoder_width"] == 0.5


@pytest.mark.parametrize("sets, needles", [
    (["train.epoch=3"], ["train.epoch: unknown key"]),
    (["train.epochs=0"], ["train.epochs: 0 input should be greater than or equal to 1"]),
    (["input.size=100"], ["input.size: 100", "multiple of 32"]),
    (["method.type=nope"], ["nope"]),
    (["train"], ["--set 'train': give key.path=value"]),
    (["train..epochs=1"], ["give key.path=value"]),
    (["train.epochs.x=1"], ["epochs is not a mapping"]),
])
def test_set_errors_are_one_line(tmp_path: Path, sets: list[str], needles: list[str]) -> None:
    args = ["train", "rd-lite0", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    for s in sets:
        args += ["--set", s]
    one_error(*run(*args), *needles)


def test_train_name_or_path_errors(tmp_path: Path) -> None:
    one_error(*run("train", "rd-lite9", "--data", str(tmp_path), "--out", str(tmp_path / "r")),
              "rd-lite9", "not a file and not a shipped recipe", "rd-lite0")
    one_error(*run("train", str(tmp_path / "mine.yaml"), "--data", str(tmp_path), "--out", str(tmp_path / "r")),
              "mine.yaml: file not found")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.sim.bundles import write_intensity_bundle

    return write_intensity_bundle(tmp_path_factory.mktemp("b") / "bundle", size=32)


def test_init_config_passes_run_check_once_its_bundle_exists(bundle: Path, tmp_path: Path) -> None:
    from edgekit.runtime.outputs import OUTPUTS as REGISTERED

    output = "modbus_server" if "modbus_server" in REGISTERED.names() else "modbus"
    code, text = run("init-config", "--camera", "usb", "--output", output)
    assert code == 0 and text.startswith("# edgekit deploy config: usb camera")
    assert sum(ln.lstrip().startswith("#") for ln in text.splitlines()) > 10  # commented
    p = tmp_path / "station.yaml"
    p.write_text(text)
    one_error(*run("run", "--check", str(p)), "bundle")  # /var/lib/edgekit/bundles/current does not exist
    p.write_text(text.replace("bundle: /var/lib/edgekit/bundles/current", f"bundle: {bundle}"))
    code, out = run("run", "--check", str(p))
    assert code == 0, out
    resolved = json.loads(out)["resolved"]
    assert resolved["outputs"][0]["type"] == output and resolved["ui"]["enabled"] is True
    # --set on the deploy config: same validation as the file
    code, out = run("run", "--check", str(p), "--set", "scheduler.delay_ms=1000", "--set", "source.fps=15")
    assert code == 0 and json.loads(out)["resolved"]["source"]["fps"] == 15.0
    one_error(*run("run", "--check", str(p), "--set", "decision.deadline_ms=900"), "must be below scheduler.delay_ms")
    one_error(*run("run", "--check", str(p), "--set", "source.exposre=5"), "station.yaml", "source.exposre: unknown key")
    one_error(*run("run", "--check", str(p), "--set", "ui.host=0.0.0.0"), "EDGEKIT_UI_TOKEN")


def test_every_template_validates() -> None:
    from edgekit.config.catalog import init_config
    from edgekit.errors import ConfigError
    from edgekit.runtime.outputs import OUTPUTS as REGISTERED

    for cam in CAMERAS:
        for out in OUTPUTS:
            if out in REGISTERED.names():
                init_config(cam, [out])
            else:  # an output another install does not have is named, with the fix
                with pytest.raises(ConfigError, match=f"--output {out}: this edgekit has no such output"):
                    init_config(cam, [out])
    text = init_config("csi", ["gpiod", "modbus"], bundle="/b", ui=False)
    data = yaml.safe_load(text)
    assert [o["type"] for o in data["outputs"]] == ["gpiod", "modbus"] and data["ui"]["enabled"] is False
    one_error(*run("init-config", "--output", "profibus"), "--output profibus")
