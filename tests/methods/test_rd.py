"""Plain reverse distillation: shapes per backbone, scoring math, training signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.config.recipe import recipe_from_dict
from edgekit.methods.rd.scoring import DistillationScorer, GaussianSmoothing
from edgekit.train import build_model, seed_everything


def _recipe(backbone: str) -> dict:
    return {
        "name": "t", "method": {"type": "rd", "embed_factor": 1.0, "decoder_width": 0.5},
        "backbone": {"name": backbone, "weights": "none"}, "input": {"size": 64},
        "score": {"smoothing_sigma": 1.0},
    }


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_shapes(backbone: str) -> None:
    model = build_model(recipe_from_dict(_recipe(backbone))).eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.map.shape == (2, 1, 64, 64) and out.score.shape == (2,)
    # image score is the max of the smoothed map
    assert torch.allclose(out.score, out.map.amax(dim=(1, 2, 3)))
    feats = model.teacher(x)
    student = model.decoder(model.bottleneck(feats))
    assert [f.shape for f in feats] == [s.shape for s in student]


def test_gaussian_smoothing_keeps_constants_and_mass() -> None:
    g = GaussianSmoothing(2.0)
    c = torch.full((1, 1, 20, 20), 3.0)
    assert torch.allclose(g(c), c, atol=1e-5)
    spike = torch.zeros(1, 1, 41, 41)
    spike[0, 0, 20, 20] = 1.0
    out = g(spike)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4) and out[0, 0, 20, 20] < 1.0


def test_scorer_detects_local_difference() -> None:
    sc = DistillationScorer(sigma=1.0)
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 2, 3] = 1.0
    amap, score = sc([m], (32, 32))
    y, x = divmod(int(amap[0, 0].argmax()), 32)
    assert 8 <= y < 12 and 12 <= x < 16 and score.item() > 0


def test_loss_decreases_and_teacher_frozen() -> None:
    seed_everything(0)
    model = build_model(recipe_from_dict(_recipe("tf_efficientnet_lite0")))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=5e-3)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    losses = []
    for _ in range(8):
        loss, scalars = model.training_loss(x)
        assert set(scalars) == {"l0", "l1", "l2"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.8
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher changed: {k}"


def _layers(gen: torch.Generator, n: int, defect: bool = False) -> list[torch.Tensor]:
    """A noisy shallow layer (large, varying 1 − cos everywhere) and a quiet deep layer."""
    shallow = 0.3 + 0.2 * torch.rand(n, 1, 16, 16, generator=gen)
    deep = 0.05 + 0.005 * torch.randn(n, 1, 8, 8, generator=gen)
    if defect:
        deep[:, 0, 5, 2] += 0.06  # 12 deep-layer standard deviations, a fraction of the shallow noise
    return [shallow, deep]


def test_layer_norm_fit_standardises_each_layer() -> None:
    gen = torch.Generator().manual_seed(0)
    sc = DistillationScorer(sigma=0.0, n_layers=2)
    assert torch.equal(sc.layer_shift, torch.zeros(2)) and torch.equal(sc.layer_scale, torch.ones(2))
    batches = [_layers(gen, 4) for _ in range(5)]
    facts = sc.fit(iter(batches))
    allmaps = [torch.cat([b[i] for b in batches]) for i in range(2)]
    for i, m in enumerate(allmaps):
        z = (m - sc.layer_shift[i]) * sc.layer_scale[i]
        assert abs(float(z.mean())) < 1e-4 and float(z.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    assert facts["layer_norm"]["pixels"] == [20 * 256, 20 * 64]
    assert facts["layer_norm"]["mean"][0] == pytest.approx(0.4, abs=0.01)


def test_layer_norm_lets_a_deep_defect_through_shallow_noise() -> None:
    gen = torch.Generator().manual_seed(1)
    sc = DistillationScorer(sigma=0.0, n_layers=2)
    test = _layers(gen, 1, defect=True)
    amap, _ = sc(test, (32, 32))
    y, x = divmod(int(amap[0, 0].argmax()), 32)
    assert not (20 <= y < 24 and 8 <= x < 12)  # plain sum: the shallow noise sets the max
    sc.fit(_layers(gen, 4) for _ in range(5))
    amap, _ = sc(test, (32, 32))
    y, x = divmod(int(amap[0, 0].argmax()), 32)
    assert 20 <= y < 24 and 8 <= x < 12


def test_checkpoint_without_layer_norm_loads_as_plain_sum() -> None:
    model = build_model(recipe_from_dict(_recipe("tf_efficientnet_lite0"))).eval()
    state = {k: v for k, v in model.state_dict().items() if "layer_shift" not in k and "layer_scale" not in k}
    model.scorer.layer_scale.fill_(3.0)
    model.load_state_dict(state)
    assert torch.equal(model.scorer.layer_scale, torch.ones(3))
    assert torch.equal(model.scorer.layer_shift, torch.zeros(3))


def _border_layers(gen: torch.Generator, n: int, defect: bool = False) -> list[torch.Tensor]:
    """One 16×16 layer whose border column is always worse (padding) than the inside."""
    m = 0.10 + 0.01 * torch.randn(n, 1, 16, 16, generator=gen)
    m[..., :, 0] += 0.15 + 0.03 * torch.randn(n, 1, 16, generator=gen)  # noisy, always-high border
    if defect:
        m[:, 0, 8, 8] += 0.12  # 12 σ of the inside, still below the border's typical level
    return [m]


def test_position_norm_removes_a_border_that_holds_the_max_of_every_good_image() -> None:
    gen = torch.Generator().manual_seed(2)
    good = [_border_layers(gen, 4) for _ in range(10)]
    test_good, test_bad = _border_layers(gen, 16), _border_layers(gen, 16, defect=True)
    from edgekit.evaluate.metrics import image_auroc

    def auroc(sc: DistillationScorer) -> float:
        s = torch.cat([sc(test_good, (16, 16))[1], sc(test_bad, (16, 16))[1]]).numpy()
        return image_auroc(np.r_[np.zeros(16), np.ones(16)], s)

    layer = DistillationScorer(sigma=0.0, n_layers=1)
    facts = layer.fit(iter(good), mode="layer")
    assert layer.mode == "layer" and facts["layer_norm"]["mode"] == "layer"
    pos = DistillationScorer(sigma=0.0, n_layers=1)
    facts = pos.fit(iter(good), mode="position")
    assert pos.mode == "position" and pos.pos_shift0.shape == (1, 1, 16, 16)
    assert facts["layer_norm"] == {"mode": "position", "images": 40, "mean": facts["layer_norm"]["mean"],
                                   "std": facts["layer_norm"]["std"], "pixels": [40 * 256]}
    assert auroc(layer) < 0.8  # the border decides the score of every image
    assert auroc(pos) == 1.0
    # per-position scale includes the layer variance as a prior: never larger than 1/layer std
    assert float(pos.pos_scale0.max()) <= float(pos.layer_scale[0]) + 1e-6


def test_position_norm_round_trips_through_a_checkpoint_and_rejects_another_size() -> None:
    gen = torch.Generator().manual_seed(3)
    sc = DistillationScorer(sigma=1.0, n_layers=2)
    sc.fit((_layers(gen, 4) for _ in range(3)), mode="position")
    fresh = DistillationScorer(sigma=1.0, n_layers=2)
    assert fresh.mode == "none"
    fresh.load_state_dict(sc.state_dict())
    assert fresh.mode == "position"
    x = _layers(gen, 2)
    torch.testing.assert_close(fresh(x, (32, 32))[0], sc(x, (32, 32))[0])
    big = [torch.rand(1, 1, 32, 32), torch.rand(1, 1, 16, 16)]
    with pytest.raises(ValueError, match="input size it was trained with"):
        sc(big, (64, 64))
    with pytest.raises(ValueError, match="mode"):
        sc.fit(iter([x]), mode="pixel")


def test_old_checkpoint_with_layer_stats_only_loads_as_layer_norm() -> None:
    gen = torch.Generator().manual_seed(4)
    sc = DistillationScorer(sigma=0.0, n_layers=2)
    sc.fit((_layers(gen, 4) for _ in range(3)), mode="layer")
    state = {k: v for k, v in sc.state_dict().items() if not k.startswith("pos_")}
    fresh = DistillationScorer(sigma=0.0, n_layers=2)
    fresh.load_state_dict(state)
    assert fresh.mode == "layer"
    torch.testing.assert_close(fresh.layer_shift, sc.layer_shift)


def test_recipe_layer_norm_accepts_old_booleans() -> None:
    r = recipe_from_dict({**_recipe("tf_efficientnet_lite0"), "score": {"layer_norm": True}})
    assert r.score.layer_norm == "layer"
    r = recipe_from_dict({**_recipe("tf_efficientnet_lite0"), "score": {"layer_norm": False}})
    assert r.score.layer_norm == "none"
    assert recipe_from_dict(_recipe("tf_efficientnet_lite0")).score.layer_norm == "position"


def _edge_maps(gen: torch.Generator, n: int, defect: bool = False) -> torch.Tensor:
    """Final 32×32 maps (map stride 4 → 4 px rings): the same median everywhere, but the outer
    ring is heavy-tailed (a bright edge that sometimes runs into the border), the inside is not."""
    m = 0.3 * torch.randn(n, 1, 32, 32, generator=gen)
    spikes = torch.rand(n, generator=gen) < 0.5  # half the good tiles: one strong border spike
    rows = torch.randint(0, 28, (n,), generator=gen)
    for i in torch.nonzero(spikes).flatten():
        m[i, 0, int(rows[i]):int(rows[i]) + 4, 0:3] += 4.0
    if defect:
        m[:, 0, 16, 16] += 2.5  # a clear defect inside, weaker than the border spikes
    return m


def test_edge_rings_equalise_tails_and_let_an_inside_defect_through_border_spikes() -> None:
    from edgekit.evaluate.metrics import image_auroc

    gen = torch.Generator().manual_seed(5)
    sc = DistillationScorer(sigma=0.0, n_layers=1, map_stride=4)
    assert sc.edge_mode == "none"
    good = [_edge_maps(gen, 8) for _ in range(20)]
    facts = sc.fit_edges(iter(good), quantile=0.99)["edge_norm"]
    assert sc.edge_mode == "ring" and sc.edge_shift.shape == sc.edge_scale.shape == (1, 1, 32, 32)
    assert facts["tiles"] == 160 and facts["ring_px"] == 4 and len(facts["tail"]) == 4
    assert facts["tail"][0] > 2 * facts["tail"][1]  # the border ring's tail is the heavy one
    # on the edge itself and at the centre the calibration is the outer / inner ring's own
    # (median → 0, quantile → 1); between ring centres it is linear in the distance to the edge
    r = sc.ring_index(32, 32, 4)
    assert int(r[0, 10]) == 0 and int(r[15, 15]) == 3 and int(r[5, 10]) == 1
    for (y, x), ring in (((0, 10), 0), ((15, 15), 3)):
        med, tail = facts["median"][ring], facts["tail"][ring]
        assert float(sc.edge_shift[0, 0, y, x]) == pytest.approx(med, abs=1e-4)
        assert 1 / float(sc.edge_scale[0, 0, y, x]) == pytest.approx(tail - med, abs=1e-4)
    mid = float(sc.edge_shift[0, 0, 3, 10])  # d = 3: between ring 0's centre (1.5) and ring 1's (5.5)
    assert mid == pytest.approx(facts["median"][0] * 0.625 + facts["median"][1] * 0.375, abs=1e-4)
    # the fitted ring statistics are the median / quantile of the good maps' pixels in that ring
    allm = torch.cat(good)
    inside = allm[:, 0][:, r == 2]
    assert facts["median"][2] == pytest.approx(float(inside.median()), abs=0.02)
    assert facts["tail"][2] == pytest.approx(float(torch.quantile(inside.flatten(), 0.99)), abs=0.05)

    test_good, test_bad = _edge_maps(gen, 40), _edge_maps(gen, 40, defect=True)

    def auroc(scorer: DistillationScorer) -> float:
        s = torch.cat([scorer([test_good], (32, 32))[1], scorer([test_bad], (32, 32))[1]]).numpy()
        return image_auroc(np.r_[np.zeros(40), np.ones(40)], s)

    plain = DistillationScorer(sigma=0.0, n_layers=1, map_stride=4)
    assert auroc(plain) < 0.8  # the border spikes decide half the good tiles' scores
    assert auroc(sc) > 0.97


def test_edge_calibration_round_trips_resets_and_rejects_another_size() -> None:
    gen = torch.Generator().manual_seed(6)
    sc = DistillationScorer(sigma=1.0, n_layers=2)
    sc.fit((_layers(gen, 4) for _ in range(3)), mode="position")
    sc.fit_edges(sc(_layers(gen, 4), (32, 32))[0] for _ in range(3))
    fresh = DistillationScorer(sigma=1.0, n_layers=2)
    fresh.load_state_dict(sc.state_dict())
    assert fresh.edge_mode == "ring"
    x = _layers(gen, 2)
    torch.testing.assert_close(fresh(x, (32, 32))[0], sc(x, (32, 32))[0])
    old = {k: v for k, v in sc.state_dict().items() if not k.startswith("edge_")}  # a run from before
    fresh.load_state_dict(old)
    assert fresh.edge_mode == "none" and fresh.mode == "position"
    with pytest.raises(ValueError, match="input size it was trained with"):
        sc([torch.rand(1, 1, 16, 16), torch.rand(1, 1, 8, 8)], (16, 16))
    with pytest.raises(ValueError, match="quantile"):
        sc.fit_edges(iter([]), quantile=1.0)
    assert sc.fit_edges(iter([]))["edge_norm"].startswith("not fitted")
    sc.reset()
    assert sc.edge_mode == "none"


def _two_terms(gen: torch.Generator, n: int, defect: bool = False) -> list[torch.Tensor]:
    """Two 32×32 terms (map stride 4): term 0 has heavy-tailed spikes on the border of half the
    tiles (a part's edge meeting the image border), term 1 is plain noise; a defect is a break on
    the border that only term 1 sees."""
    t0 = _edge_maps(gen, n)
    t1 = 0.3 * torch.randn(n, 1, 32, 32, generator=gen)
    if defect:
        t1[:, 0, 10:13, 0:2] += 2.0
    return [t0, t1]


def test_term_rings_let_a_border_defect_of_one_term_through_the_other_terms_border_tail() -> None:
    """With one ring on the sum, the border ring's tail is set by term 0's spikes and a break on
    the border that term 1 sees is scaled down with it; ringing each term first keeps it."""
    from edgekit.evaluate.metrics import image_auroc

    gen = torch.Generator().manual_seed(7)
    good = [_two_terms(gen, 8) for _ in range(20)]
    test_good, test_bad = _two_terms(gen, 40), _two_terms(gen, 40, defect=True)

    def fitted(mode: str) -> DistillationScorer:
        sc = DistillationScorer(sigma=0.0, n_layers=2, map_stride=4)
        if mode == "terms":
            facts = sc.fit_term_edges([sc.terms(t) for t in good], quantile=0.99)["term_edge_norm"]
            assert len(facts["terms"]) == 2 and facts["terms"][0]["tail"][0] > 2 * facts["terms"][1]["tail"][0]
            for i in range(2):
                assert getattr(sc, f"term_shift{i}").shape == getattr(sc, f"term_scale{i}").shape == (1, 1, 32, 32)
        sc.fit_edges((sc(t, (32, 32))[0] for t in good), quantile=0.99)
        assert sc.edge_mode == mode
        return sc

    def auroc(sc: DistillationScorer) -> float:
        s = torch.cat([sc(test_good, (32, 32))[1], sc(test_bad, (32, 32))[1]]).numpy()
        return image_auroc(np.r_[np.zeros(40), np.ones(40)], s)

    ring, terms = fitted("ring"), fitted("terms")
    assert auroc(ring) < 0.85
    assert auroc(terms) > 0.97
    # the good tiles' maps still have ring median 0 and tail 1 after both calibrations
    maps = torch.cat([terms(t, (32, 32))[0] for t in good])[:, 0]
    r = terms.ring_index(32, 32, 4)
    for ring_i in range(4):
        v = maps[:, r == ring_i].flatten()
        assert float(v.median()) == pytest.approx(0.0, abs=0.05)
        assert float(torch.quantile(v, 0.99)) == pytest.approx(1.0, abs=0.05)
    # round trip; a run from before the term rings loads with the final ring only; reset drops both
    fresh = DistillationScorer(sigma=0.0, n_layers=2, map_stride=4)
    fresh.load_state_dict(terms.state_dict())
    assert fresh.edge_mode == "terms"
    torch.testing.assert_close(fresh(test_bad, (32, 32))[0], terms(test_bad, (32, 32))[0])
    fresh.load_state_dict({k: v for k, v in terms.state_dict().items() if not k.startswith("term_")})
    assert fresh.edge_mode == "ring"
    with pytest.raises(ValueError, match="term 0 is .*input size it was trained with"):
        terms([torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)], (16, 16))
    assert terms.fit_term_edges([])["term_edge_norm"].startswith("not fitted") and terms.edge_mode == "none"


@settings(deadline=None, max_examples=40)
@given(side=st.integers(4, 48), wide=st.integers(0, 16), stride=st.sampled_from([1, 2, 4, 8]),
       kind=st.sampled_from(["normal", "constant", "flat_inside", "heavy_border", "ties"]),
       quantile=st.floats(0.6, 0.9999), seed=st.integers(0, 2**16))
def test_edge_fit_is_finite_bounded_and_applies_to_any_map(side: int, wide: int, stride: int, kind: str,
                                                           quantile: float, seed: int) -> None:
    """Any map size (non-square too), ring width, quantile and a degenerate good set (a constant
    map, a flat centre, ties): finite positive scales, no ring amplified beyond 10x the typical
    ring's, and the calibrated map of the fitting tiles is finite."""
    gen = torch.Generator().manual_seed(seed)
    h, w = side, side + wide
    m = torch.randn(6, 1, h, w, generator=gen)
    if kind == "constant":
        m = torch.full_like(m, 0.25)
    elif kind == "flat_inside":
        r = DistillationScorer.ring_index(h, w, stride)
        m[..., r > 0] = 0.0
    elif kind == "heavy_border":
        m[..., 0, :] += 50 * torch.rand(6, 1, w, generator=gen)
    elif kind == "ties":
        m = m.round()
    sc = DistillationScorer(sigma=0.0, n_layers=1, map_stride=stride)
    facts = sc.fit_edges(iter([m[:3], m[3:]]), quantile=quantile)["edge_norm"]
    assert facts["tiles"] == 6 and len(facts["tail"]) == int(DistillationScorer.ring_index(h, w, stride).max()) + 1
    shift, scale = sc.edge_shift, sc.edge_scale
    assert shift.shape == scale.shape == (1, 1, h, w)
    assert torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()
    # the spread (tail - median) of no pixel is below the floor, and the floor is 10 % of the
    # typical ring's: no ring is amplified beyond 10x the typical one
    spreads = torch.tensor(facts["tail"]) - torch.tensor(facts["median"])
    assert facts["spread_floor"] >= 0.1 * float(spreads.median()) - 1e-4
    assert float(1 / scale.max()) >= facts["spread_floor"] * (1 - 1e-5)
    out = (m - shift) * scale
    assert torch.isfinite(out).all()
