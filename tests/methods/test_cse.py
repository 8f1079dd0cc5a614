"""CSE method: losses, frozen decoder, k-means centres, ONNX parity and re-clustering.

Random-init backbone (``weights: none``) at 64² keeps every test to seconds on 2 cores."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from edgekit.config.recipe import recipe_from_dict
from edgekit.errors import ConfigError
from edgekit.methods.cse.cluster import centres_sha256, cosine_distances, kmeans, recluster_run
from edgekit.methods.cse.loss import contrastive_loss, pull_loss, push_loss
from edgekit.methods.cse.model import ContrastiveEmbeddings, module_sha256
from edgekit.methods.cse.synthesis import procedural_texture

SIZE = 64


def _recipe(k: int = 1, **train: object) -> dict:
    return {
        "name": "tiny-cse",
        "method": {"type": "cse", "k": k, "margin": 0.5},
        "backbone": {"name": "tf_efficientnet_lite0", "weights": "none"},
        "input": {"size": SIZE},
        "train": {"epochs": 1, "batch_size": 4, "lr": 4e-4, "val_fraction": 0.25, "seed": 0, **train},
    }


_BUILT: dict[int, ContrastiveEmbeddings] = {}


def _model(k: int = 1) -> ContrastiveEmbeddings:
    """A fresh model; built once per k (timm construction dominates test time), then copied."""
    from edgekit.train import build_model

    if k not in _BUILT:
        torch.manual_seed(0)
        _BUILT[k] = build_model(recipe_from_dict(_recipe(k)))
    return copy.deepcopy(_BUILT[k])


@pytest.fixture(scope="module")
def model() -> ContrastiveEmbeddings:
    return _model(k=2)


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g)


# ----------------------------------------------------------------------------- losses
def test_identical_pairs_give_zero_pull_loss() -> None:
    a = torch.randn(4, 8, 2, 2)
    assert float(pull_loss(a, a.clone())) == pytest.approx(0.0, abs=1e-6)
    assert float(pull_loss(a, 3.0 * a)) == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    assert float(pull_loss(a, -a)) == pytest.approx(2.0, abs=1e-6)


def test_push_loss_hinges_at_margin() -> None:
    a = torch.randn(4, 8, 2, 2)
    assert float(push_loss(a, a, margin=0.5)) == pytest.approx(0.5, abs=1e-6)  # cos 1 − margin
    assert float(push_loss(a, -a, margin=0.5)) == 0.0
    b = torch.zeros(2, 4)
    b[0, 0] = b[1, 1] = 1.0
    c = torch.zeros(2, 4)
    c[0, 1] = c[1, 2] = 1.0  # orthogonal pairs: cos 0 below any positive margin
    assert float(push_loss(b, c, margin=0.2)) == 0.0


def test_contrastive_loss_weights_every_pair() -> None:
    a = torch.randn(3, 8, 2, 2)
    total, pull, push = contrastive_loss(a[:1], a[:1], a, a, margin=0.0)
    assert float(pull) == pytest.approx(0.0, abs=1e-6)
    assert float(push) == pytest.approx(1.0, abs=1e-6)
    assert float(total) == pytest.approx(3.0 / 4.0, abs=1e-6)  # 1 pull pair at 0, 3 push pairs at 1
    total1, pull1, _ = contrastive_loss(a[:0], a[:0], a[:1], -a[:1], margin=0.5)
    assert float(total1) == 0.0 and float(pull1) == 0.0


# ----------------------------------------------------------------------------- model
def test_shapes_follow_backbone_strides(model: ContrastiveEmbeddings) -> None:
    assert model.backbone.strides == [16, 32]
    assert model.embedder.widths == [112 + 320, 216, 108, 64]  # lite0 stages 3+4, C → C/2 → C/4 → 64
    emb = model.embed(_batch(2))
    assert emb.shape == (2, 64, SIZE // 32, SIZE // 32)


def test_decoder_and_backbone_stay_frozen_through_a_step() -> None:
    m = _model()
    m.train()
    assert not m.decoder.training and not m.backbone.training
    assert all(not p.requires_grad for p in m.decoder.parameters())
    dec0, bb0, emb0 = module_sha256(m.decoder), module_sha256(m.backbone), module_sha256(m.embedder)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    loss, scalars = m.training_loss(_batch(4))
    assert set(scalars) == {"contrastive", "pull", "push", "recon"}
    opt.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in m.decoder.parameters())
    assert all(p.grad is None for p in m.backbone.parameters())
    opt.step()
    assert module_sha256(m.decoder) == dec0
    assert module_sha256(m.backbone) == bb0
    assert module_sha256(m.embedder) != emb0
    trainable = {id(p) for p in m.trainable_parameters()}
    assert trainable == {id(p) for p in m.embedder.parameters()}


def test_synthesis_is_seeded_by_the_step_counter(model: ContrastiveEmbeddings) -> None:
    x = _batch(4, seed=3)
    model.train()
    model.synth_step.zero_()
    with torch.no_grad():
        l1, _ = model.training_loss(x)
        l2, _ = model.training_loss(x)
        model.synth_step.zero_()
        l3, _ = model.training_loss(x)
    assert int(model.synth_step) == 1
    assert float(l1) == float(l3)
    assert float(l1) != float(l2)  # a different step draws different defects
    model.eval()


def test_centres_are_nearest_real_embeddings(model: ContrastiveEmbeddings) -> None:
    batches = [_batch(4, seed=s) for s in range(3)]
    emb = model.collect_embeddings(batches).reshape(12, -1).numpy()
    facts = model.after_training(batches)
    assert facts["k"] == 2 and sum(facts["cluster_sizes"]) == 12
    centres = model.scorer.centres.reshape(2, -1).numpy()
    for c, idx in zip(centres, facts["centre_indices"], strict=True):
        np.testing.assert_array_equal(c, emb[idx])  # an exact copy of a training embedding
    assert facts["centres_sha256"] == centres_sha256(centres) == model.export_info()["centres_sha256"]
    assert model.export_info()["k"] == 2 and model.export_info()["centres_fitted"]


def test_score_is_min_cosine_distance_to_centres(model: ContrastiveEmbeddings) -> None:
    model.after_training([_batch(4, seed=s) for s in range(3)])
    x = _batch(3, seed=9)
    with torch.no_grad():
        out = model(x)
        emb = model.embed(x).reshape(3, -1).numpy()
    want = cosine_distances(emb, model.scorer.centres.reshape(2, -1).numpy()).min(1)
    np.testing.assert_allclose(out.score.numpy(), want, rtol=1e-4, atol=1e-6)
    assert out.map.shape == (3, 1, SIZE, SIZE)
    assert float(out.map.min()) >= 0.0
    # the image whose embedding became a centre scores zero
    first = _batch(4, seed=0)
    model.after_training([first])
    with torch.no_grad():
        s = model(first).score
    assert float(s.min()) == pytest.approx(0.0, abs=1e-6)
    model.after_training([_batch(4, seed=s) for s in range(3)])


# ----------------------------------------------------------------------------- k-means
def test_kmeans_is_deterministic_and_finds_blobs() -> None:
    rng = np.random.default_rng(1)
    dirs = np.eye(16)[:3] * 6.0
    x = np.concatenate([rng.normal(0, 1, (40, 16)) + d for d in dirs])
    a, b = kmeans(x, 3, seed=4), kmeans(x, 3, seed=4)
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert sorted(a.sizes) == [40, 40, 40]
    truth = np.repeat(np.arange(3), 40)
    for j in range(3):  # every found cluster is one true blob
        assert len(set(truth[a.labels == j])) == 1
    assert len(set(a.indices.tolist())) == 3
    for c, i in zip(a.centres, a.indices, strict=True):
        np.testing.assert_array_equal(c, x[i].astype(np.float32))


def test_kmeans_refuses_more_centres_than_embeddings() -> None:
    with pytest.raises(ConfigError, match="method.k"):
        kmeans(np.ones((3, 4)), 5)


def test_checkpoint_with_other_k_loads() -> None:
    a, b = _model(k=1), _model(k=1)
    a.after_training([_batch(4, seed=s) for s in range(2)])
    a.fit_centres(a.collect_embeddings([_batch(4)]), k=3)
    b.load_state_dict(a.state_dict())
    assert b.scorer.centres.shape[0] == 3
    assert b.export_info()["centres_sha256"] == a.export_info()["centres_sha256"]


# ----------------------------------------------------------------------------- export
def test_onnx_score_matches_torch(model: ContrastiveEmbeddings, tmp_path: Path) -> None:
    import onnx

    from edgekit.compile.onnx_export import export_onnx, ort_run
    from edgekit.data.preprocess import PreprocessSpec

    model.eval()
    model.after_training([_batch(4, seed=s) for s in range(3)])
    spec = PreprocessSpec(size=SIZE, mean=model.backbone.mean, std=model.backbone.std)
    path = export_onnx(model, spec, tmp_path / "cse.onnx")
    rng = np.random.default_rng(0)
    tiles = np.stack([(procedural_texture(SIZE, SIZE, rng) * 255).astype(np.uint8) for _ in range(4)])
    maps, scores = ort_run(path, tiles)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(x)
    assert scores.shape == (4,) and maps.shape == (4, SIZE, SIZE)
    np.testing.assert_allclose(scores, out.score.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(maps, out.map[:, 0].numpy(), rtol=1e-3, atol=1e-5)
    # the centres travel inside the graph as an initializer
    n = model.scorer.centres.numel()
    sizes = [int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer]
    assert n in sizes


# ----------------------------------------------------------------------------- recluster (real run)
def _write_images(folder: Path, n: int, seed: int, tint: tuple[float, float, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = procedural_texture(SIZE, SIZE, rng) * np.array(tint, np.float32)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def cse_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.train import train_run

    root = tmp_path_factory.mktemp("cse")
    _write_images(root / "data" / "train" / "good", 12, seed=0, tint=(1.0, 1.0, 1.0))
    recipe = root / "tiny-cse.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(k=1)), encoding="utf-8")
    run = root / "run"
    train_run(recipe, root / "data", run, quiet=True)
    return run


def test_training_stores_centres_and_facts(cse_run: Path) -> None:
    from edgekit.train import load_run

    info = json.loads((cse_run / "run.json").read_text())
    facts = info["method_facts"]
    assert facts["k"] == 1 and facts["n_embeddings"] == 9  # 12 good images, 25 % held out
    loaded = load_run(cse_run)
    assert loaded.model.export_info()["centres_sha256"] == facts["centres_sha256"]
    assert loaded.model.export_info()["centres_fitted"]


def test_recluster_changes_centres_keeps_embedder(cse_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main
    from edgekit.train import load_run

    before = load_run(cse_run).model
    emb_hash, bb_hash = module_sha256(before.embedder), module_sha256(before.backbone)
    old = before.export_info()["centres_sha256"]
    lot = tmp_path / "new-lot"
    _write_images(lot, 10, seed=5, tint=(1.0, 0.6, 0.4))

    result = CliRunner().invoke(main, ["recluster", str(cse_run), "--data", str(lot), "--k", "2"])
    assert result.exit_code == 0, result.output
    after = load_run(cse_run).model
    assert after.export_info()["k"] == 2
    assert after.export_info()["centres_sha256"] != old
    assert module_sha256(after.embedder) == emb_hash
    assert module_sha256(after.backbone) == bb_hash
    info = json.loads((cse_run / "run.json").read_text())
    rec = info["recluster"][-1]
    assert rec["old_centres_sha256"] == old and rec["k"] == 2 and rec["n_train_images"] == 8
    assert info["method_facts"]["centres_sha256"] == after.export_info()["centres_sha256"]

    # library call with k kept: same data and seed → same centres (deterministic)
    again = recluster_run(cse_run, lot, quiet=True)
    assert again["centres_sha256"] == rec["centres_sha256"]


def test_recluster_refuses_empty_folder(cse_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["recluster", str(cse_run), "--data", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "no good images" in result.output


def test_preview_synthesis_cli(cse_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    data = cse_run.parent / "data"
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["data", "preview-synthesis", str(data), "--out", str(out), "--seed", "3",
                                       "--size", "48", "--n", "2"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out)).shape == (96, 4 * 48, 3)


def test_k_sweep_reports_every_k_and_leaves_the_run_unchanged(cse_run: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    data = tmp_path / "labelled"
    _write_images(data / "train" / "good", 10, seed=7, tint=(1.0, 1.0, 1.0))
    _write_images(data / "test" / "good", 4, seed=8, tint=(1.0, 1.0, 1.0))
    _write_images(data / "test" / "tint", 4, seed=9, tint=(1.0, 0.3, 0.2))
    before = (cse_run / "model.pt").read_bytes()
    result = CliRunner().invoke(main, ["recluster", str(cse_run), "--data", str(data), "--sweep", "1,2,3"])
    assert result.exit_code == 0, result.output
    assert (cse_run / "model.pt").read_bytes() == before
    doc = json.loads((cse_run / "k_sweep.json").read_text())
    assert [r["k"] for r in doc["rows"]] == [1, 2, 3] and doc["n_test"] == 8
    for r in doc["rows"]:
        assert 0.0 <= r["image_auroc"] <= 1.0 and 0.0 <= r["coverage"] <= 1.0 and sum(r["cluster_sizes"]) == doc["n_train_images"] == 8
    assert (cse_run / "k_sweep.png").stat().st_size > 1000
    bad = CliRunner().invoke(main, ["recluster", str(cse_run), "--data", str(data), "--sweep", "1,x"])
    assert bad.exit_code != 0 and "comma list of integers" in bad.output
