"""Accuracy gate and score comparison (edgekit/compile/parity.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.bundle.io import load_bundle
from edgekit.compile.parity import (
    OnnxModel,
    accuracy_gate,
    compare,
    decisions,
    eval_set_from_dir,
    spearman,
)
from edgekit.errors import BundleError


def test_spearman_matches_definition() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10 + 3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    # one swapped pair of four: 1 - 6*2/(4*15) = 0.8
    assert spearman(a, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)


def test_decisions_follow_band() -> None:
    d = decisions(np.array([0.1, 0.5, 0.7, 0.9]), accept_edge=0.5, reject_edge=0.8)
    assert d.tolist() == [0, 1, 1, 2]


def test_compare_counts_flips() -> None:
    ref = np.array([0.1, 0.6, 0.9, 0.2], np.float32)
    test = np.array([0.1, 0.85, 0.9, 0.55], np.float32)
    r = compare(ref, test, np.array([0, 1, 1, 0]), {"accept_edge": 0.5, "reject_edge": 0.8})
    assert r["decision_flips"] == 2 and r["flips_accept_reject"] == 0
    assert r["max_abs_diff"] == pytest.approx(0.35, abs=1e-6)
    assert r["auroc"] == pytest.approx(1.0)


def test_gate_refuses_and_allow_degraded_warns() -> None:
    res = {"int8": {"auroc": 0.90}, "fp16": {"auroc": 0.949}}
    with pytest.raises(BundleError, match=r"int8.*5\.00 pt.*--allow-degraded"):
        accuracy_gate({k: dict(v) for k, v in res.items()}, 0.95, 0.5, allow_degraded=False)
    warnings = accuracy_gate({k: dict(v) for k, v in res.items()}, 0.95, 0.5, allow_degraded=True)
    assert len(warnings) == 1 and warnings[0].startswith("int8")


def _break_model(src: Path, dst: Path) -> None:
    """Zero the decoder heads' weights: the student then predicts nothing, every score is equal."""
    m = onnx.load(str(src))
    heads = {i for n in m.graph.node if n.op_type == "Conv" and "/decoder/heads" in n.name for i in n.input[1:]}
    assert heads, "fixture model has no decoder heads"
    for t in m.graph.initializer:
        if t.name in heads:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    onnx.save(m, str(dst))


def test_gate_refuses_deliberately_broken_model(tiny_multi_bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_multi_bundle)
    es = eval_set_from_dir(tiny_dataset, b.preprocess)
    assert es.labels is not None and es.labels.sum() > 0
    ref = es.image_scores(OnnxModel(b.model_path("fp32")).score_tiles(es.tiles))
    broken = tmp_path / "model.fp16.onnx"
    _break_model(b.model_path("fp16"), broken)
    bad = es.image_scores(OnnxModel(broken).score_tiles(es.tiles))
    good = es.image_scores(OnnxModel(b.model_path("fp16")).score_tiles(es.tiles))
    from edgekit.evaluate.metrics import image_auroc

    ref_auroc = image_auroc(es.labels, ref)
    assert ref_auroc is not None and ref_auroc > 0.55  # the tiny model ranks better than chance
    # 8 good x 8 defect test images: one swapped pair moves AUROC by 1.56 pt, so the tolerance
    # here is 5 pt; the broken copy scores every image alike (AUROC 50) and falls far below it
    results = {"fp16": compare(ref, good, es.labels, b.thresholds)}
    assert accuracy_gate(results, ref_auroc, 5.0, False) == []  # the real fp16 copy passes
    with pytest.raises(BundleError, match="fp16: image AUROC"):
        accuracy_gate({"fp16": compare(ref, bad, es.labels, b.thresholds)}, ref_auroc, 5.0, False)


def test_build_records_gate(tiny_multi_bundle: Path) -> None:
    m = load_bundle(tiny_multi_bundle).manifest
    gate = m["build"]["accuracy_gate"]
    assert gate["labelled"] and gate["tolerance_pt"] == 0.5 and gate["n_images"] == 16
    for key in ("fp16", "int8"):
        acc = m["models"][key]["accuracy"]
        assert {"spearman", "max_abs_diff", "auroc", "decision_flips"} <= set(acc)


def test_verify_against_torch_and_onnx(tiny_multi_bundle: Path, tiny_dataset: Path) -> None:
    from edgekit.compile.parity import format_verify, verify_bundle

    r = verify_bundle(tiny_multi_bundle, tiny_dataset)
    assert r["reference"] == "torch" and set(r["models"]) == {"fp32", "fp16", "int8"}
    assert r["models"]["fp32"]["max_rel_diff"] < 1e-4  # ONNX FP32 reproduces the checkpoint
    assert r["labelled"] and r["n_images"] == 16
    r2 = verify_bundle(tiny_multi_bundle, tiny_dataset, use_torch=False)
    assert r2["reference"] == "onnx-fp32" and set(r2["models"]) == {"fp16", "int8"}
    assert "int8" in format_verify(r2)


def test_verify_cli_json_on_plain_folder(tiny_multi_bundle: Path, tiny_dataset: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    res = CliRunner().invoke(main, ["verify", str(tiny_multi_bundle), "--data", str(tiny_dataset / "test" / "good"),
                                    "--json", "--no-torch"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["labelled"] is False and out["models"]["int8"]["auroc"] is None
    assert out["models"]["int8"]["spearman"] > 0.3


def test_own_band_and_decision_check_see_what_the_shared_band_hides() -> None:
    """INT8 scores sit 0.3 above FP32's: at FP32's provisional band (max good = 4.5) two good
    images flip accept → reject; recalibrated by the same rule on INT8's own scores, none does."""
    import numpy as np

    from edgekit.compile.parity import decision_check, own_band

    ref = np.array([3.0, 3.5, 4.2, 4.5, 4.4])
    test = ref + 0.3
    band = {"accept_edge": 4.5, "reject_edge": 4.5}
    good = np.ones(5, bool)
    own = own_band(ref, test, band, good, provisional=True)
    assert own["accept_edge"] == own["reject_edge"] == pytest.approx(4.8)
    dc = decision_check(ref, test, None, band, own)
    assert dc["flips_shared_band"] == 2 and dc["flips_own_band"] == 0 and dc["harmful_flips_own_band"] == 0
    assert dc["false_rejects"] == {"fp32": 1, "shared_band": 3, "own_band": 1}
    # a rate-based band: mapped through the fitted line (here exact: slope 1, offset 0.3)
    own = own_band(ref, test, {"accept_edge": 4.0, "reject_edge": 4.6}, good, provisional=False)
    assert own["accept_edge"] == pytest.approx(4.3) and own["reject_edge"] == pytest.approx(4.9)
    # a precision that reorders images cannot be fixed by a band: harmful flips remain
    worse = np.array([4.9, 3.0, 3.1, 3.2, 3.3])
    labels = np.array([0, 0, 0, 1, 1])
    ref_l = np.array([3.0, 3.1, 3.2, 4.9, 5.0])
    dc = decision_check(ref_l, worse, labels, {"accept_edge": 4.0, "reject_edge": 4.0},
                        own_band(ref_l, worse, {"accept_edge": 4.0, "reject_edge": 4.0}, labels == 0, False))
    assert dc["harmful_flips_own_band"] >= 1


def test_exact_scoring_only_where_the_host_would_measure_its_own_saturation() -> None:
    from edgekit.compile.parity import exact_scoring_reason, scored_as

    assert exact_scoring_reason({"reduce_range": True, "flavor": "onnxruntime"}, int8_dot=False) is None  # 7-bit: runs as is
    assert exact_scoring_reason({"reduce_range": False, "flavor": "tensorrt"}, int8_dot=True) is None  # VNNI: no saturation
    why = exact_scoring_reason({"reduce_range": False, "flavor": "tensorrt"}, int8_dot=False)
    assert why and "TensorRT" in why and "saturate" in why
    assert "VNNI" in exact_scoring_reason({"reduce_range": False, "flavor": "onnxruntime"}, int8_dot=None)  # unknown CPU
    assert scored_as(why).startswith("the Q/DQ graph's exact arithmetic") and "onnxruntime on this host" in scored_as(None)


def test_exact_model_runs_the_qdq_graph_as_written(tiny_multi_bundle: Path, tiny_dataset: Path) -> None:
    """``OnnxModel(exact=True)`` is onnxruntime with every graph optimisation off: the same scores as
    a plain session so configured."""
    import onnxruntime as ort

    from edgekit.compile.parity import OnnxModel, eval_set_from_dir

    b = load_bundle(tiny_multi_bundle)
    es = eval_set_from_dir(tiny_dataset, b.preprocess, None)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(b.model_path("int8")), so, providers=["CPUExecutionProvider"])
    want = np.concatenate([plain.run(["score"], {"image": es.tiles[i:i + 8]})[0] for i in range(0, len(es.tiles), 8)])
    exact = OnnxModel(b.model_path("int8"), exact=True)
    assert exact.exact and np.allclose(exact.score_tiles(es.tiles), want, rtol=0, atol=1e-6)


def test_jetson_int8_gate_on_a_host_without_vnni_scores_the_exact_arithmetic(tiny_run: Path, tiny_dataset: Path,
                                                                              tmp_path: Path, monkeypatch) -> None:
    """The TensorRT layout has 8-bit weights: on an x86 build host without VNNI the gate scores the
    graph's own arithmetic (what TensorRT computes), says so in the manifest, and ``verify`` agrees."""
    from edgekit.compile.build import build_bundle
    from edgekit.compile.parity import OnnxModel, eval_set_from_dir, verify_bundle
    from edgekit.evaluate.metrics import image_auroc
    from edgekit.runtime.backends import ort as ort_backend

    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: False)
    out = build_bundle(tiny_run, tmp_path / "b", target="jetson", precisions=["fp32", "int8"], eval_data=tiny_dataset,
                       allow_degraded=True, calib_max_tiles=8, quiet=True)
    b = load_bundle(out)
    acc = b.models["int8"]["accuracy"]
    assert b.models["int8"]["quantization"]["reduce_range"] is False
    assert acc["scored_as"].startswith("the Q/DQ graph's exact arithmetic") and "TensorRT" in acc["scored_as"]
    es = eval_set_from_dir(tiny_dataset, b.preprocess, None)
    exact = es.image_scores(OnnxModel(b.model_path("int8"), exact=True).score_tiles(es.tiles))
    assert acc["auroc"] == pytest.approx(image_auroc(es.labels, exact), abs=1e-12)
    r = verify_bundle(out, tiny_dataset, use_torch=False)
    assert r["models"]["int8"]["scored_as"] == acc["scored_as"]
    assert r["models"]["int8"]["auroc"] == pytest.approx(acc["auroc"], abs=1e-12)
    # a host with VNNI runs the model as it is
    monkeypatch.setattr(ort_backend, "cpu_int8_dot", lambda: True)
    assert verify_bundle(out, tiny_dataset, use_torch=False)["models"]["int8"]["scored_as"].startswith("onnxruntime")
