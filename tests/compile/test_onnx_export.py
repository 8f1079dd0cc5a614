"""ONNX export: the graph contract and torch ↔ onnxruntime parity on the test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgekit.data.dataset import scan_dataset
from edgekit.data.images import read_image
from edgekit.evaluate.scoring import OrtScorer, TorchScorer, score_image


def test_graph_contract(tiny_bundle: Path) -> None:
    m = onnx.load(str(tiny_bundle / "model.onnx"))
    (inp,) = m.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [64, 64, 3]
    assert [o.name for o in m.graph.output] == ["anomaly_map", "score"]
    props = {p.key: p.value for p in m.metadata_props}
    assert props["edgekit.method"] == "rd" and len(props["edgekit.bundle_id"]) == 16


def test_onnx_scores_equal_torch_on_test_set(tiny_run: Path, tiny_bundle: Path, tiny_dataset: Path) -> None:
    torch_s, ort_s = TorchScorer(tiny_run), OrtScorer(tiny_bundle)
    index = scan_dataset(tiny_dataset, require_test=True)
    a, b = [], []
    for s in index.test:
        img = read_image(s.path)
        ta, tm, _ = score_image(torch_s, img)
        oa, om, _ = score_image(ort_s, img)
        a.append(ta)
        b.append(oa)
        assert np.abs(tm - om).max() < 1e-3
    a, b = np.array(a), np.array(b)
    assert np.all(np.abs(a - b) / np.abs(a) < 1e-4), np.max(np.abs(a - b) / np.abs(a))


def test_tiled_image_scores_max_over_tiles(tiny_bundle: Path) -> None:
    """A wide strip is tiled; its score is the max of the per-tile scores."""
    from edgekit.data.preprocess import make_tiles

    sc = OrtScorer(tiny_bundle)
    rng = np.random.default_rng(0)
    strip = rng.integers(90, 140, size=(64, 400, 3), dtype=np.uint8)
    strip[20:30, 300:310] = 0
    score, amap, layout = score_image(sc, strip)
    tiles, _ = make_tiles(strip, sc.spec)
    _, per_tile = sc.score_tiles(tiles)
    assert layout.n_tiles > 1 and amap.shape == (64, 400)
    assert score == float(per_tile.max())
