"""CLI: user errors give one line naming the thing and the fix, exit code ≠ 0, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.cli import main


def _run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output  # click ≥ 8.2 mixes stderr into output


def _assert_one_line_error(code: int, out: str, *needles: str) -> None:
    assert code != 0, out
    assert "Traceback" not in out
    err_lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1, out
    for n in needles:
        assert n in err_lines[0], (n, out)


def _recipe(tmp_path: Path, **changes: object) -> Path:
    from tests.conftest import TINY_RECIPE

    d = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    for k, v in changes.items():
        section, key = k.split("__")
        d[section][key] = v
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_missing_data_folder(tmp_path: Path) -> None:
    code, out = _run("train", str(_recipe(tmp_path)), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    _assert_one_line_error(code, out, "nope")


def test_missing_train_good(tmp_path: Path) -> None:
    (tmp_path / "d" / "test" / "good").mkdir(parents=True)
    code, out = _run("train", str(_recipe(tmp_path)), "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"))
    _assert_one_line_error(code, out, "train/good")


def test_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmethod: {type: rd\n")
    code, out = _run("train", str(p), "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    _assert_one_line_error(code, out, "bad.yaml", "invalid YAML")


def test_unknown_recipe_key_is_named(tmp_path: Path) -> None:
    code, out = _run("train", str(_recipe(tmp_path, train__epoch=3)), "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "train.epoch", "unknown key")


def test_bad_value_names_key_and_limit(tmp_path: Path) -> None:
    code, out = _run("train", str(_recipe(tmp_path, train__epochs=0)), "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "train.epochs", "0")


def test_unknown_method_key(tmp_path: Path) -> None:
    code, out = _run("train", str(_recipe(tmp_path, method__embed=2)), "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "method.embed")


def test_unknown_backbone(tmp_path: Path, tiny_dataset: Path) -> None:
    code, out = _run("train", str(_recipe(tmp_path, backbone__name="resnet181")), "--data", str(tiny_dataset),
                     "--out", str(tmp_path / "r"))
    _assert_one_line_error(code, out, "resnet181", "resnet18")


@pytest.mark.parametrize("verb", ["evaluate", "build", "rescore"])
def test_run_dir_without_checkpoint(tmp_path: Path, tiny_dataset: Path, verb: str) -> None:
    (tmp_path / "run").mkdir()
    extra = {"evaluate": ["--data", str(tiny_dataset)], "build": ["--out", str(tmp_path / "b")], "rescore": []}
    args = [verb, str(tmp_path / "run")] + extra[verb]
    code, out = _run(*args)
    _assert_one_line_error(code, out, "run")


def test_tampered_bundle_refused(bundle_copy: Path, tiny_dataset: Path) -> None:
    f = bundle_copy / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    code, out = _run("evaluate", str(bundle_copy), "--data", str(tiny_dataset))
    _assert_one_line_error(code, out, "model.onnx", "sha256")


def test_corrupt_test_image_is_skipped_and_counted(tmp_path: Path, tiny_bundle: Path, tiny_dataset: Path) -> None:
    import json

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "test" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "test" / "good" / "empty.jpg").write_bytes(b"")
    code, out = _run("evaluate", str(tiny_bundle), "--data", str(data), "--json", str(tmp_path / "m.json"))
    assert code == 0, out
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["n_skipped"] == 2 and doc["n_good"] == 8 and doc["image_auroc"] is not None
    assert "2 unreadable image(s) skipped" in out


def test_debug_shows_traceback(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["--debug", "evaluate", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert res.exit_code != 0


def test_help_texts_are_whole_and_consistent() -> None:
    """Top-level summaries are not cut mid-phrase; arguments are named for what they take; every
    option a user needs says what it is; one TensorRT install hint."""
    code, out = _run("--help")
    cmds = out.split("Commands:")[1]
    assert code == 0 and "..." not in cmds and "…" not in cmds
    code, out = _run("data", "synth", "--help")
    assert "[fabric|parts|tiles]" in out
    code, out = _run("build", "--help")
    flat = " ".join(out.split())
    assert "RUN_DIR" in out and "MODEL_DIR" not in out and "bundle beside the run" in flat
    assert "cpu (onnxruntime) or jetson" in flat
    code, out = _run("bench", "--help")
    assert "RUN_OR_BUNDLE_DIR" in out and "Untimed runs" in " ".join(out.split())
    assert "test/good" in _run("evaluate", "--help")[1]
    assert "line video" in " ".join(_run("demo", "--help")[1].split())
    flat = " ".join(_run("doctor", "--help")[1].split())
    assert "/etc/edgekit/config.yaml when it exists" in flat and "default Jetson station" in flat
    from edgekit import doctor
    from edgekit.compile import trt_build

    assert trt_build.TRT_INSTALL in (doctor.check_tensorrt.__code__.co_consts + (doctor.TRT_INSTALL,))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(Exception, match="nvidia-tensorrt python3-libnvinfer"):
            trt_build.import_tensorrt()


def test_build_without_out_says_where_the_bundle_goes(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "myrun"
    shutil.copytree(tiny_run, run)
    code, out = _run("build", str(run))
    assert code == 0, out
    assert f"no --out given: writing the bundle to {run}-bundle (beside the run)" in out
    assert (tmp_path / "myrun-bundle" / "manifest.json").is_file()
