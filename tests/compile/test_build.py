"""`edgekit build` options (edgekit/compile/build.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.bundle.io import load_bundle
from edgekit.cli import main
from edgekit.compile.build import build_cli, parse_precisions
from edgekit.errors import BundleError, ConfigError


def test_parse_precisions() -> None:
    assert parse_precisions("int8, fp16") == ["fp32", "fp16", "int8"]
    assert parse_precisions(["fp32"]) == ["fp32"]
    with pytest.raises(ConfigError, match="unknown int4"):
        parse_precisions("fp32,int4")


def test_multi_precision_bundle_manifest(tiny_multi_bundle: Path, tiny_run: Path) -> None:
    m = load_bundle(tiny_multi_bundle).manifest
    assert set(m["models"]) == {"fp32", "fp16", "int8"}
    assert m["build"]["precisions"] == ["fp32", "fp16", "int8"]
    cal = m["build"]["calibration_data"]
    assert cal["n_tiles"] == 16 and len(cal["hash"]) == 64 and cal["source"] == "run training images"
    assert m["models"]["int8"]["calibration_data"] == cal
    assert m["run"]["path"] == str(tiny_run.resolve())
    step = m["build"]["steps_pending"][0]
    assert step["step"] == "build-on-device"
    # runs on the Jetson: the bundle's folder name, not this machine's absolute path
    assert step["command"] == f"edgekit build {tiny_multi_bundle.name} --target jetson --engine-only"
    assert {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "calibration.json"} == set(m["files"])


def test_gate_refusal_leaves_no_bundle(tiny_run: Path, tiny_dataset: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.compile import build as build_mod
    from edgekit.compile import parity

    # a precision that loses every bit of ranking: the gate must refuse the whole build
    def broken_compare(ref, test, labels, band):  # type: ignore[no-untyped-def]
        r = real_compare(ref, test, labels, band)
        r["auroc"] = 0.0
        return r

    real_compare = parity.compare
    monkeypatch.setattr(parity, "compare", broken_compare)
    out = tmp_path / "b"
    with pytest.raises(BundleError, match="fp16: image AUROC 0.00.*--allow-degraded"):
        build_mod.build_bundle(tiny_run, out, precisions=["fp16"], eval_data=tiny_dataset, quiet=True)
    assert not out.exists() and not list(tmp_path.glob(".b.*"))


def test_engine_only_needs_jetson_target_and_a_bundle(tiny_run: Path, tiny_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="--target jetson"):
        build_cli(str(tiny_bundle), target="cpu", engine_only=True)
    with pytest.raises(BundleError, match="needs a bundle directory"):
        build_cli(str(tiny_run), target="jetson", engine_only=True)
    with pytest.raises(BundleError, match="is a bundle"):
        build_cli(str(tiny_bundle), target="cpu")


def test_cli_build_error_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["build", str(tiny_run), "--out", str(tmp_path / "b"), "--precision", "fp8"])
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == ["error: --precision: unknown fp8 (valid: fp32, fp16, int8)"]


def test_cli_build_archive(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["build", str(tiny_run), "--out", str(tmp_path / "b"), "--archive"])
    assert res.exit_code == 0, res.output
    b = load_bundle(tmp_path / "b.edgekit")
    assert b.bundle_id == load_bundle(tmp_path / "b").bundle_id


def test_int8_reduce_range_is_explicit_and_recorded(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from edgekit.compile.build import build_bundle

    out = build_bundle(tiny_run, tmp_path / "b", precisions=["fp32", "int8"], eval_data=tiny_dataset,
                       allow_degraded=True, calib_max_tiles=8, int8_reduce_range=False, quiet=True)
    q = load_bundle(out).models["int8"]["quantization"]
    assert q["reduce_range"] is False and q["weight_type"] == "int8-symmetric-per-channel"
    # the stem is among the float high-resolution layers, so the normalisation stays float
    assert q["float_high_resolution"] is True and q["input_norm"] == "float-nhwc"


def test_int8_reduce_range_default_follows_the_build_host(tiny_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from edgekit.compile.build import build_bundle
    from edgekit.runtime.backends.ort import cpu_int8_dot

    out = build_bundle(tiny_run, tmp_path / "b", precisions=["fp32", "int8"], eval_data=tiny_dataset,
                       allow_degraded=True, calib_max_tiles=8, quiet=True)
    q = load_bundle(out).models["int8"]["quantization"]
    assert q["reduce_range"] is (cpu_int8_dot() is not True)
    assert ("8-bit weights" if cpu_int8_dot() else "7-bit weights") in q["reduce_range_reason"]


def test_int8_without_eval_data_checks_decisions_and_says_what_was_not_checked(tiny_run: Path, tmp_path: Path,
                                                                                capsys) -> None:
    """No labelled data: the build says it is not accuracy-gated, checks decisions on the held-out
    good images at INT8's own band (recalibrated), records that band, and the runtime uses it."""
    from edgekit.bundle.io import load_bundle
    from edgekit.compile.build import build_bundle
    from edgekit.runtime.decision import Band

    out = tmp_path / "b8"
    build_bundle(tiny_run, out, precisions=["fp32", "int8"], calib_max_tiles=16)
    text = capsys.readouterr().out
    assert "not accuracy-gated: no labelled data" in text and "decisions checked on" in text
    assert "good images" in text and "at its own band" in text
    b = load_bundle(out)
    gate = b.manifest["build"]["accuracy_gate"]
    assert gate["accuracy_gated"] is False and gate["decisions_checked"] is True
    own = b.models["int8"]["band"]
    dc = b.models["int8"]["accuracy"]["decisions"]
    assert dc["harmful_flips_own_band"] == 0 and dc["n_good"] >= 1
    band = Band.resolve(b.thresholds, model=b.models["int8"])
    assert (band.accept_edge, band.reject_edge) == (own["accept_edge"], own["reject_edge"])
    assert Band.resolve(b.thresholds, model=b.models["fp32"]).reject_edge == b.thresholds["reject_edge"]
