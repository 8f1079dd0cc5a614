"""`edgekit bench` (edgekit/compile/bench.py): side-by-side timing of every model of a bundle."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from edgekit.cli import main
from edgekit.compile.bench import bench, format_table


def test_bench_times_every_precision_and_torch(tiny_multi_bundle: Path) -> None:
    r = bench(tiny_multi_bundle, threads=1, batches=[1, 2], warmup=1, rounds=2, iters_per_round=1)
    names = {(row["name"], row["batch"]) for row in r["rows"]}
    expected = {"torch-eager-fp32", "onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"}
    assert names == {(n, b) for n in expected for b in (1, 2)}
    for row in r["rows"]:
        assert row["n"] == 2 and 0 < row["latency_median_ms"] <= row["latency_p99_ms"] * 1.0001
        assert row["throughput_tiles_per_s"] > 0
    assert "onnxruntime-int8_vs_onnxruntime-fp32@b1" in r["speedup"]
    assert r["threads"] == 1 and r["input_size"] == 64
    assert "onnxruntime-int8" in format_table(r)


def test_bench_cli_json_on_run_dir(tiny_run: Path) -> None:
    res = CliRunner().invoke(main, ["bench", str(tiny_run), "--json", "--threads", "1", "--rounds", "1",
                                    "--iters", "1", "--warmup", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["kind"] == "run" and {r["name"] for r in out["rows"]} == {"torch-eager-fp32", "onnxruntime-fp32"}


def test_bench_cli_rejects_bad_batch(tiny_bundle: Path) -> None:
    res = CliRunner().invoke(main, ["bench", str(tiny_bundle), "--batch", "one"])
    assert res.exit_code != 0 and "--batch 'one'" in res.output
