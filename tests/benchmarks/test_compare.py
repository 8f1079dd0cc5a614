"""benchmarks/compare.py: table / plot / target writers and data helpers (fast), and a slow
end-to-end ``--quick`` smoke run (our rd-lite0 + anomalib PatchCore/PaDiM when its venv exists)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare


def _row(side: str, model: str, prec: str, auroc: float, ort_ms: float, **kw: object) -> dict:
    lat = {"median_ms": ort_ms, "p99_ms": ort_ms * 1.2, "mean_ms": ort_ms, "n": 10}
    return {"side": side, "model": model, "precision": prec, "image_auroc": auroc, "pixel_auroc": 0.9,
            "pro": 0.7, "coverage": 0.4, "train_time_s": 12.0, "epochs": 1, "ort": lat,
            "eager": lat if prec == "fp32" else None, "notes": [], **kw}


ROWS = [
    _row("edgekit", "rd-lite0", "fp32", 0.95, 20.0),
    _row("edgekit", "rd-lite0", "int8", 0.948, 10.0),
    _row("edgekit", "rrd-lite0", "fp32", 0.90, 15.0),
    _row("edgekit", "rrd-lite0", "int8", 0.85, 12.0),
    _row("anomalib", "patchcore", "fp32", 0.92, 50.0),
    _row("anomalib", "padim", "fp32", 0.91, 18.0),
    {"side": "anomalib", "model": "reverse_distillation", "precision": "fp32", "skipped": "no decoder for lite0"},
]


def test_latency_stats_median_p99() -> None:
    s = compare.latency_stats([0.001] * 98 + [0.010, 0.020])
    assert s["median_ms"] == pytest.approx(1.0)
    assert 1.0 < s["p99_ms"] <= 20.0
    assert s["n"] == 100
    with pytest.raises(ValueError):
        compare.latency_stats([])


def test_targets_met_and_missed() -> None:
    t = {x["target"]: x for x in compare.evaluate_targets(ROWS)}
    auroc = next(v for k, v in t.items() if k.startswith("best lite0"))
    # 0.95 vs 0.92 = +3 pt
    assert auroc["met"] and "+3.0 pt" in auroc["measured"]
    pc = next(v for k, v in t.items() if "patchcore" in k)
    # fastest recipe at >= 0.92 AUROC is rd-lite0 (20 ms); 20 / 50 = 0.4 <= 0.5
    assert pc["met"] and "rd-lite0" in pc["measured"] and "0.40x" in pc["measured"]
    pd = next(v for k, v in t.items() if "padim" in k)
    # 20 ms vs 18 ms: slower than PaDiM although more accurate
    assert not pd["met"] and "1.11x" in pd["measured"]
    rd8 = next(v for k, v in t.items() if k.startswith("rd-lite0 INT8"))
    assert rd8["met"]  # 2.0x, -0.2 pt
    rrd8 = next(v for k, v in t.items() if k.startswith("rrd-lite0 INT8"))
    assert not rrd8["met"]  # 1.25x, -5 pt


def test_targets_auroc_missed_when_anomalib_better() -> None:
    rows = [_row("edgekit", "rd-lite0", "fp32", 0.80, 10.0), _row("anomalib", "patchcore", "fp32", 0.81, 50.0)]
    t = compare.evaluate_targets(rows)
    assert not t[0]["met"] and "-1.0 pt" in t[0]["measured"]
    pc = t[1]
    assert not pc["met"] and "no recipe reaches" in pc["measured"]


def test_write_table(tmp_path: Path) -> None:
    targets = compare.evaluate_targets(ROWS)
    meta = {"dataset": "elpv-mono", "date": "2026-11-23 10:00 UTC", "cpu": "AMD EPYC", "threads": 2,
            "size": 256, "n_train": 100, "n_test": 50, "budget": "1 epoch"}
    text = compare.write_table(ROWS, targets, meta, tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "### elpv-mono" and "AMD EPYC" in lines[2] and "**1 epoch**" in lines[2]
    body = [ln for ln in lines if ln.startswith("| edgekit") or ln.startswith("| anomalib")]
    assert len(body) == len(ROWS)
    rd = next(ln for ln in body if "| rd-lite0 | fp32 |" in ln)
    assert "| 0.950 |" in rd and "| 20.0 / 24.0 |" in rd and "12 (1)" in rd
    int8 = next(ln for ln in body if "| rd-lite0 | int8 |" in ln)
    assert "| n/a | 10.0 / 12.0 |" in int8  # no eager timing for INT8
    assert "not run: no decoder for lite0" in text
    assert "| **no** |" in text and "| yes |" in text


def test_per_defect_table_marks_the_best_of_each_type(tmp_path: Path) -> None:
    rows = [_row("edgekit", "rd-lite0", "fp32", 0.9, 20.0, per_defect={"crack": 0.51, "break": 0.94},
                 n_per_defect={"crack": 20, "break": 18}),
            _row("edgekit", "cse-lite0", "fp32", 0.9, 10.0, per_defect={"crack": 0.73, "break": 0.84},
                 n_per_defect={"crack": 20, "break": 18}),
            _row("anomalib", "patchcore", "fp32", 0.9, 40.0, per_defect={"crack": 0.73, "break": None}),
            ROWS[-1]]
    lines = compare.per_defect_table(rows)
    assert "| side | model | prec | break (18) | crack (20) |" in lines
    assert "| edgekit | rd-lite0 | fp32 | **0.940** | 0.510 |" in lines
    assert "| edgekit | cse-lite0 | fp32 | 0.840 | **0.730** |" in lines
    assert "| anomalib | patchcore | fp32 | – | **0.730** |" in lines  # a tie is bold on both
    assert not any("reverse_distillation" in ln for ln in lines)  # skipped rows have no scores
    text = compare.write_table(rows, [], {"dataset": "parts"}, tmp_path / "t.md")
    assert "Image AUROC per defect type" in text
    # one defect type (ELPV's "defect"): the main table already says it
    assert compare.per_defect_table([_row("edgekit", "rd", "fp32", 0.9, 1.0, per_defect={"defect": 0.9})]) == []
    assert compare.per_defect_table(ROWS) == []  # rows without the key (older results.json)


def test_write_plot(tmp_path: Path) -> None:
    p = compare.write_plot(ROWS, tmp_path / "plot.png", "test")
    assert p is not None and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.write_plot([ROWS[-1]], tmp_path / "none.png", "none") is None


def test_prepare_subset_links_a_seeded_subset(tiny_dataset: Path, tmp_path: Path) -> None:
    out = compare.prepare_subset(tiny_dataset, tmp_path / "sub", max_train=5, max_test_per_class=2)
    train = sorted((out / "train" / "good").iterdir())
    assert len(train) == 5 and all(p.is_symlink() for p in train)
    for d in (out / "test").iterdir():
        assert 1 <= len(list(d.iterdir())) <= 2
    assert (out / "ground_truth").is_dir()
    again = compare.prepare_subset(tiny_dataset, tmp_path / "sub2", max_train=5, max_test_per_class=2)
    assert [p.name for p in sorted((again / "train" / "good").iterdir())] == [p.name for p in train]
    assert compare.prepare_subset(tiny_dataset, tmp_path / "x", None, None) == tiny_dataset


def test_metrics_from_tiles_match_compute_metrics(tiny_dataset: Path) -> None:
    """Stitching anomalib-side per-tile outputs gives the same metrics as edgekit's evaluate path."""
    from edgekit.data.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=64)
    ts = compare.load_test_set(tiny_dataset, spec)
    assert ts.tiles.shape[1:] == (64, 64, 3) and len(ts.images) == 16
    labels = np.array([im.label for im in ts.images])
    # a map that lights up exactly inside each defect mask: perfect pixel and image metrics
    from edgekit.data.dataset import read_mask

    maps = np.zeros((len(ts.tiles), 64, 64), np.float32)
    for im in ts.images:
        if im.mask_path:
            maps[im.first_tile] = read_mask(im.mask_path, (64, 64)).astype(np.float32)
    scores = maps.reshape(len(maps), -1).max(1) + 0.01 * labels
    m = compare.metrics_from_tiles(ts, maps, scores, "perfect")
    s = compare.summarise(m)
    assert s["image_auroc"] == pytest.approx(1.0)
    assert s["pixel_auroc"] == pytest.approx(1.0)
    assert s["coverage"] == pytest.approx(1.0)
    assert s["n_good"] == 8 and s["n_defect"] == 8
    assert s["n_per_defect"] and sum(s["n_per_defect"].values()) == 8 and "good" not in s["per_defect"]
    assert all(v == pytest.approx(1.0) for v in s["per_defect"].values())


def test_find_reusable_run(tmp_path: Path) -> None:
    import yaml

    data = tmp_path / "data"
    data.mkdir()
    for name, ep in (("a", 2), ("b", 5)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "model.pt").write_bytes(b"x")
        (run / "recipe.yaml").write_text(yaml.safe_dump({"name": "rd-lite0"}))
        (run / "run.json").write_text(json.dumps({"epochs_done": ep, "data": {"dirs": [str(data)]}}))
    assert compare.find_reusable_run([tmp_path / "runs"], "rd-lite0", [data], 1).name == "b"
    assert compare.find_reusable_run([tmp_path / "runs"], "rd-lite0", [data], 6) is None
    assert compare.find_reusable_run([tmp_path / "runs"], "cse-lite0", [data], 1) is None
    assert compare.find_reusable_run([tmp_path / "runs"], "rd-lite0", [tmp_path / "other"], 1) is None


def test_lite0_recipes_found_and_unknown_named() -> None:
    found = compare.lite0_recipes(None)
    assert any(p.stem == "rd-lite0" for p in found) and all("lite0" in p.stem for p in found)
    with pytest.raises(SystemExit, match="rd-lite0"):
        compare.lite0_recipes(["no-such-recipe"])


def test_ort_latency_and_profile(tmp_path: Path) -> None:
    """Real onnxruntime timing and per-node profile on a tiny model with the edgekit I/O contract."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 8, 8, 3])
    out = helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["f"], ["score"], keepdims=0, axes=[1, 2, 3])]
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], [out]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    tile = np.full((8, 8, 3), 7, np.uint8)
    lat = compare.ort_latency(path, tile, threads=1, warmup=1, iters=5)
    assert lat["n"] == 5 and 0 < lat["median_ms"] <= lat["p99_ms"]
    prof = compare.ort_profile(path, tile, 1, tmp_path / "prof", iters=3)
    assert set(prof["by_op_ms"]) >= {"Cast", "ReduceMax"}
    assert prof["top_nodes"] and Path(prof["trace"]).is_file()


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """`--quick` on a small synthetic set: trains rd-lite0 1 epoch, builds FP32 + INT8, runs
    anomalib PatchCore + PaDiM in their venv (rows say 'not run' when the venv is absent) and
    writes every output file."""
    from edgekit.data.synth import write_synthetic_dataset

    data = tmp_path / "fabric"
    write_synthetic_dataset(data, kind="fabric", seed=0, n_train=20, n_test_good=6, n_test_defect=6, size=256)
    doc = compare.main(["--data", str(data), "--out", str(tmp_path / "results"), "--quick",
                        "--recipes", "rd-lite0", "--anomalib-models", "patchcore,padim"])
    out = tmp_path / "results" / "fabric-quick"
    for f in ("table.md", "results.json", "env.json", "auroc_vs_latency.png"):
        assert (out / f).is_file(), f
    rows = doc["rows"]
    ours = {r["precision"]: r for r in rows if r["side"] == "edgekit"}
    assert set(ours) == {"fp32", "int8"}
    for r in ours.values():
        assert 0.0 <= r["image_auroc"] <= 1.0 and r["ort"]["median_ms"] > 0
    assert ours["fp32"]["eager"]["median_ms"] > 0
    env = json.loads((out / "env.json").read_text())
    assert env["threads"] == 2 and env["cpu"]
    theirs = [r for r in rows if r["side"] == "anomalib"]
    assert theirs
    if Path(compare.DEFAULT_ANOMALIB_PYTHON).is_file():
        got = {r["model"]: r for r in theirs}
        for m in ("patchcore", "padim"):
            assert not got[m].get("skipped"), got[m]
            assert 0.0 <= got[m]["image_auroc"] <= 1.0 and got[m]["ort"]["median_ms"] > 0
            assert got[m]["onnx_parity"]["max_rel_score_diff"] < 1e-3
            # anomalib's extractor saw exactly our backbone (same weights, same features)
            assert got[m]["feature_check"]["allclose"] is True
    else:
        assert all(r.get("skipped") for r in theirs)


def test_patchcore_bank_variant_grows_the_bank(tmp_path: Path) -> None:
    """The latency-only PatchCore variant has the bank initializer grown to the requested rows and
    still runs; outputs stay the same because the new rows repeat the old ones."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    bank = np.arange(12, dtype=np.float32).reshape(4, 3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    # like PatchCore after constant folding: the bank and its squared norms (1, M)
    norms = (bank**2).sum(1)[None]
    nodes = [helper.make_node("Transpose", ["bank"], ["bt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "bt"], ["d0"]),
             helper.make_node("Add", ["d0", "norms"], ["d"]),
             helper.make_node("ReduceMax", ["d"], ["y"], keepdims=0, axes=[1])]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[numpy_helper.from_array(bank, "bank"),
                                                                numpy_helper.from_array(norms, "norms")])
    path = tmp_path / "patchcore.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    row = compare.patchcore_bank_variant(path, 4, 10)
    assert row["latency_only"] and row["image_auroc"] is None and "bank 10" in row["model"]
    grown = onnx.load(row["onnx"])
    assert [list(t.dims) for t in grown.graph.initializer] == [[10, 3], [1, 10]]
    inp = {"x": np.ones((2, 3), np.float32)}
    a = ort.InferenceSession(str(path)).run(None, inp)[0]
    b = ort.InferenceSession(row["onnx"]).run(None, inp)[0]
    np.testing.assert_allclose(a, b)
    assert compare.patchcore_bank_variant(path, 7, 10).get("skipped")
    # the latency-only row never enters the accuracy targets or the plot
    rows = [*ROWS, {**row, "ort": {"median_ms": 500.0, "p99_ms": 600.0, "mean_ms": 500.0, "n": 5}}]
    t = compare.evaluate_targets(rows)
    ctx = next(v for v in t if v["target"].startswith("(context)"))
    assert "rrd-lite0 15.0 ms vs 500.0 ms = 0.03x" in ctx["measured"] and ctx["met"]
