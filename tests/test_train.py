"""Training driver: run directory contents, resume, recipe mismatch, data errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.errors import BundleError, ConfigError, DataError
from edgekit.train import load_run, rescore_run, score_tiles_torch, train_run


def test_run_dir_contents(tiny_run: Path) -> None:
    for name in ("recipe.yaml", "run.json", "checkpoint.pt", "model.pt"):
        assert (tiny_run / name).is_file(), name
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["method"] == "rd" and info["epochs_done"] == 1
    assert info["preprocess"]["size"] == 64 and info["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert info["data"]["n_train_images"] + info["data"]["n_val_images"] == 24
    cal = info["calibration"]
    assert cal["accept_edge"] == cal["reject_edge"] == cal["threshold"] > 0
    assert len(info["history"]) == 1 and info["history"][0]["val_loss"] is not None


def test_resume_continues_from_checkpoint(tmp_path: Path, tiny_run: Path, tiny_dataset: Path,
                                          tiny_recipe_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    train_run(tiny_recipe_file, tiny_dataset, run, epochs=2)
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2:" in out and "epoch 1/2:" not in out
    info = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in info["history"]] == [1, 2]


def test_resume_refuses_other_recipe(tmp_path: Path, tiny_run: Path, tiny_dataset: Path, tiny_recipe_file: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = yaml.safe_load(tiny_recipe_file.read_text())
    other["train"]["lr"] = 0.001
    p = tmp_path / "other.yaml"
    p.write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError, match="different recipe"):
        train_run(p, tiny_dataset, run, epochs=2, quiet=True)


def test_missing_train_good(tmp_path: Path, tiny_recipe_file: Path) -> None:
    (tmp_path / "d" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="train/good"):
        train_run(tiny_recipe_file, tmp_path / "d", tmp_path / "run", quiet=True)


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no trained checkpoint"):
        load_run(tmp_path / "empty")


def test_loaded_model_matches_saved_weights(tiny_run: Path) -> None:
    run = load_run(tiny_run)
    saved = torch.load(tiny_run / "model.pt", weights_only=True)["model"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert not any(p.requires_grad for p in run.model.teacher.parameters())


def test_rescore_refits_statistics_and_threshold_without_touching_weights(tmp_path: Path, tiny_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = load_run(run)
    assert before.model.scorer.mode == "position"  # the default of a fresh run
    weights = {k: v.clone() for k, v in before.model.state_dict().items() if ".scorer." not in f".{k}"}

    res = rescore_run(run, layer_norm="layer", quiet=True)
    after = load_run(run)
    assert res["layer_norm"] == "layer" and after.model.scorer.mode == "layer"
    assert after.recipe.score.layer_norm == "layer"  # written back to the run's recipe
    for k, v in after.model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    info = json.loads((run / "run.json").read_text())
    assert info["method_facts"]["layer_norm"]["mode"] == "layer" and "rescored" in info
    assert info["calibration"]["threshold"] == res["calibration"]["threshold"]

    rescore_run(run, quiet=True)  # the recipe's (now "layer") mode again: same numbers
    assert json.loads((run / "run.json").read_text())["calibration"]["threshold"] == pytest.approx(
        res["calibration"]["threshold"], rel=1e-5)
    rescore_run(run, layer_norm="none", quiet=True)
    assert load_run(run).model.scorer.mode == "none"


@pytest.fixture(scope="module")
def terms_run(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """``tiny_run`` rescored with the per-term rings (``score.edge_norm: terms``)."""
    run = tmp_path_factory.mktemp("terms") / "run"
    shutil.copytree(tiny_run, run)
    rescore_run(run, edge_norm="terms", quiet=True)
    return run


def test_a_fresh_run_has_the_edge_ring(tiny_run: Path) -> None:
    lr = load_run(tiny_run)
    assert lr.recipe.score.edge_norm == "ring" and lr.model.scorer.edge_mode == "ring"
    facts = json.loads((tiny_run / "run.json").read_text())["method_facts"]
    assert facts["edge_norm"]["mode"] == "ring" and "term_edge_norm" not in facts


def test_a_run_with_term_rings_has_them_and_rescore_drops_or_refits_them(tmp_path: Path, terms_run: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(terms_run, run)
    before = load_run(run)
    sc = before.model.scorer
    assert before.recipe.score.edge_norm == "terms" and sc.edge_mode == "terms"
    facts = json.loads((run / "run.json").read_text())["method_facts"]
    assert facts["edge_norm"]["mode"] == "terms" and facts["edge_norm"]["quantile"] == 0.999
    assert len(facts["edge_norm"]["tail"]) == len(facts["edge_norm"]["median"])
    assert len(facts["term_edge_norm"]["terms"]) == sc.n_layers
    work = tuple(sc.pos_shift0.shape[-2:])  # the shallowest layer's map: the working resolution
    for i in range(sc.n_layers):
        assert tuple(getattr(sc, f"term_shift{i}").shape) == (1, 1, *work)
    term_shift, shift = sc.term_shift1.clone(), sc.edge_shift.clone()

    res = rescore_run(run, edge_norm="none", quiet=True)
    after = load_run(run)
    assert res["edge_norm"] == "none" and after.model.scorer.edge_mode == "none"
    assert after.recipe.score.edge_norm == "none" and after.model.scorer.mode == "position"
    rescore_run(run, edge_norm="ring", quiet=True)
    ring = load_run(run).model.scorer
    assert ring.edge_mode == "ring" and ring.term_shift0.numel() == 0 and ring.edge_shift.shape == shift.shape
    rescore_run(run, edge_norm="terms", quiet=True)  # the same tiles, the same statistics
    again = load_run(run).model.scorer
    torch.testing.assert_close(again.term_shift1, term_shift)
    torch.testing.assert_close(again.edge_shift, shift)


def test_the_onnx_graph_of_a_run_with_term_rings_matches_torch_and_keeps_them_float(tmp_path: Path, terms_run: Path) -> None:
    import onnx

    from edgekit.compile.onnx_export import export_onnx, ort_run
    from edgekit.compile.quantize import scoring_tail

    lr = load_run(terms_run)
    sc = lr.model.scorer
    assert sc.edge_mode == "terms"
    path = export_onnx(lr.model, lr.spec, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    work = tuple(sc.term_shift0.shape)
    term_inits = {t.name for t in proto.graph.initializer if tuple(t.dims) == work}
    uses = [n.name for n in proto.graph.node if n.op_type in ("Sub", "Mul") and set(n.input) & term_inits]
    assert len(uses) >= sc.n_layers and set(uses) <= set(scoring_tail(proto))  # float in an INT8 graph
    tiles = np.random.default_rng(1).integers(0, 256, (3, lr.spec.size, lr.spec.size, 3), dtype=np.uint8)
    t_maps, t_scores = score_tiles_torch(lr.model, tiles, lr.spec, 3, torch.device("cpu"))
    o_maps, o_scores = ort_run(path, tiles, threads=1)
    np.testing.assert_allclose(o_scores, t_scores, rtol=1e-4, atol=1e-5 * float(np.abs(t_scores).max()))
    np.testing.assert_allclose(o_maps, t_maps, rtol=1e-4, atol=1e-4 * float(np.abs(t_maps).max()))


def test_rescore_refuses_changed_training_images(tmp_path: Path, tiny_run: Path, tiny_dataset: Path) -> None:
    run, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_dataset, data)
    info = json.loads((run / "run.json").read_text())
    info["data"]["dirs"] = [str(data)]
    (run / "run.json").write_text(json.dumps(info))
    next(iter(sorted((data / "train" / "good").iterdir()))).unlink()
    with pytest.raises(DataError, match="changed since this run was trained"):
        rescore_run(run, quiet=True)
