"""Calibration: order-statistic bound math, EVT edge, coverage band, errors and serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.errors import DataError
from edgekit.evaluate import calibration as C


def test_min_good_images_closed_form():
    # ln(0.05)/ln(0.995) = 597.6 → 598
    assert C.min_good_images(0.005, 0.95) == 598
    assert C.min_good_images(0.01, 0.95) == 299
    assert C.min_good_images(0.05, 0.9) == math.ceil(math.log(0.1) / math.log(0.95))
    # the defining property: the max of n good scores bounds the rate iff 1-(1-r)^n >= conf
    assert 1 - (1 - 0.005) ** 598 >= 0.95 > 1 - (1 - 0.005) ** 597


def test_binom_sf_against_direct_sum():
    n, p = 40, 0.1
    pmf = [math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(n + 1)]
    for m in (0, 1, 3, 7, 40):
        assert C.binom_sf(m, n, p) == pytest.approx(sum(pmf[m:]), rel=1e-10)
    assert C.binom_sf(41, n, p) == 0.0


def test_quantile_edge_order_statistic():
    n = 1000
    scores = np.arange(n, dtype=float)  # x(k) = k - 1
    edge, d = C.quantile_edge(scores, 0.005, 0.95)
    m = d["m"]
    # m is the largest count with P(Bin(n, r) >= m) >= conf
    assert C.binom_sf(m, n, 0.005) >= 0.95 > C.binom_sf(m + 1, n, 0.005)
    assert m == 2  # P(Bin(1000, .005) >= 2) = 0.9599, >= 3: 0.8760
    assert edge == n - m  # the m-th largest score
    assert d["k"] == n - m + 1 and d["empirical_frr"] == m / n
    assert d["frr_upper_bound"] <= 0.005 and C.binom_sf(m, n, d["frr_upper_bound"]) == pytest.approx(0.95, abs=1e-6)


def test_quantile_edge_holds_its_confidence_on_simulated_scores():
    # repeated calibrations on exponential scores: the true FRR exp(-edge) must be <= r in >= ~95 %
    rng = np.random.default_rng(0)
    ok = sum(math.exp(-C.quantile_edge(rng.exponential(size=700), 0.005, 0.95)[0]) <= 0.005 for _ in range(100))
    assert ok / 100 >= 0.9


def test_too_few_images_names_the_number():
    with pytest.raises(DataError, match=r"100 held-out good images are too few .* need at least 598"):
        C.quantile_edge(np.random.default_rng(0).normal(size=100), 0.005, 0.95)
    with pytest.raises(DataError, match=r"need at least 100"):
        C.evt_edge(np.random.default_rng(0).normal(size=50), 0.005, 0.95)
    with pytest.raises(DataError, match="between 0 and 1"):
        C.calibrate(np.zeros(10), frr=5)
    with pytest.raises(DataError, match="no good images"):
        C.calibrate([], method="quantile")


def test_gpd_pwm_recovers_parameters():
    rng = np.random.default_rng(1)
    xi, sigma = 0.2, 2.0
    u = rng.random(20000)
    y = sigma / xi * (u ** (-xi) - 1)  # GPD(xi, sigma) by inversion
    xi_hat, sigma_hat = C.gpd_fit_pwm(y)
    assert xi_hat == pytest.approx(xi, abs=0.05) and sigma_hat == pytest.approx(sigma, rel=0.05)


def test_evt_edge_near_true_quantile_with_few_images():
    rng = np.random.default_rng(2)
    scores = rng.exponential(size=300)  # true 99.5 % quantile: -ln(0.005) = 5.30
    edge, d = C.evt_edge(scores, 0.005, 0.95, n_bootstrap=300)
    assert 4.0 < d["point_edge"] < 7.0
    assert edge >= d["point_edge"]  # the bound is on the conservative side of the point estimate
    assert d["n_tail"] == 30 and d["tail_quantile"] == 0.9
    again, _ = C.evt_edge(scores, 0.005, 0.95, n_bootstrap=300)
    assert again == edge  # seeded bootstrap: reproducible


def test_coverage_method_band_and_margin():
    good = np.array([0.1, 0.2, 0.6])
    bad = np.array([0.5, 0.7, 0.9])
    cal = C.calibrate(good, bad, method="coverage", margin=0.05, data_hash="sha256:x", date="2026-01-01T00:00:00+00:00")
    assert cal.accept_edge == pytest.approx(0.45) and cal.reject_edge == pytest.approx(0.65)
    assert cal.accept_edge <= cal.threshold <= cal.reject_edge
    assert cal.details["coverage"] == pytest.approx(4 / 6)
    sep = C.calibrate([0.1, 0.2], [0.8, 0.9], method="coverage")
    assert sep.accept_edge == sep.reject_edge == sep.threshold == pytest.approx(0.5)
    with pytest.raises(DataError, match="needs labelled defect images"):
        C.calibrate(good, method="coverage")


def test_good_only_margin_opens_review_band_below_edge():
    scores = np.arange(600, dtype=float)
    cal = C.calibrate(scores, method="quantile", margin=2.0)
    assert cal.reject_edge == cal.threshold == 599.0 and cal.accept_edge == 597.0


def test_calibration_serialises_to_manifest_thresholds():
    h = "sha256:" + "0" * 64
    cal = C.calibrate(np.linspace(0, 1, 700), np.array([2.0, 3.0]), data_hash=h)
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["source"] == "calibration:quantile" and d["date"].endswith("+00:00")
    assert C.Calibration.from_dict(d) == cal
    t = cal.to_thresholds()
    assert {"threshold", "accept_edge", "reject_edge", "source"} <= set(t)
    assert t["source"] == "calibration:quantile" and t["data_hash"] == h and t["n_defect"] == 2
    assert cal.details["defect_accept_rate_at_edge"] == 0.0


# ----------------------------------------------------------------------------- edgekit calibrate on a real run/bundle
def _copy_run(tiny_run, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def test_calibrate_run_writes_run_json(tiny_run, tiny_dataset, tmp_path):
    from edgekit.evaluate.scoring import load_scorer

    run = _copy_run(tiny_run, tmp_path)
    cal, facts = C.calibrate_model(run, tiny_dataset, frr=0.2, confidence=0.8, method="quantile")
    info = json.loads((run / "run.json").read_text())
    n_val = len(info["data"]["val_images"])
    assert facts["sources"]["test/good"] == 8 and facts["sources"]["run held-out train/good"] == n_val
    assert cal.n_good == 8 + n_val and cal.n_defect == 8
    stored = info["calibration"]
    assert stored["method"] == "quantile" and stored["source"] == "calibration:quantile"
    assert stored["preprocess"]["size"] == 64 and stored["data_hash"].startswith("sha256:")
    assert stored["accept_edge"] == stored["reject_edge"] == cal.threshold
    # the in-sample count is what the edge really does on these scores
    assert facts["in_sample"]["false_rejects"] == round(facts["in_sample"]["frr"] * cal.n_good)
    assert "skipped" in facts["cross_check"] or facts["cross_check"]["n"] == cal.n_good
    # the scorer (evaluate/build) now reads the calibrated band
    assert load_scorer(run).thresholds["threshold"] == cal.threshold


def test_calibrate_bundle_rewrites_manifest_and_hashes(bundle_copy, tiny_dataset):
    from edgekit.bundle.io import load_bundle

    cal, facts = C.calibrate_model(bundle_copy, tiny_dataset, method="coverage", margin=0.001)
    b = load_bundle(bundle_copy)  # verifies every sha256, calibration.json included
    t = b.thresholds
    assert t["source"] == "calibration:coverage" and t["accept_edge"] == cal.accept_edge
    assert t["reject_edge"] == cal.reject_edge and t["data_hash"] == cal.data_hash and t["date"] == cal.date
    doc = json.loads((bundle_copy / "calibration.json").read_text())
    assert doc["preprocess"] == b.manifest["preprocess"] and doc["margin"] == 0.001
    assert facts["written"].endswith("manifest.json")


def test_calibrate_errors(tiny_run, tiny_dataset, tmp_path):
    import shutil

    import cv2

    run = _copy_run(tiny_run, tmp_path)
    with pytest.raises(DataError, match=r"too few .* need at least 598 in test/good"):
        C.calibrate_model(run, tiny_dataset)  # default 0.5 % at 95 %
    empty = tmp_path / "nogood"
    (empty / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="no held-out good images"):
        C.calibrate_model(run, empty, frr=0.2, confidence=0.8)
    # strips from another camera set-up: each image becomes several tiles, training images one
    wide = tmp_path / "wide"
    (wide / "test" / "good").mkdir(parents=True)
    src = sorted((tiny_dataset / "test" / "good").iterdir())[0]
    img = cv2.imread(str(src))
    for i in range(9):
        cv2.imwrite(str(wide / "test" / "good" / f"{i}.png"), np.concatenate([img] * 3, axis=1))
    with pytest.raises(DataError, match=r"cut into [2-9] tile\(s\) but the model's training images gave 1 per image"):
        C.calibrate_model(run, wide, frr=0.2, confidence=0.8)
    # greyscale images for a colour-trained model
    grey = tmp_path / "grey"
    shutil.copytree(tiny_dataset / "test" / "good", grey / "test" / "good")
    for p in (grey / "test" / "good").iterdir():
        g = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(p), g)
    with pytest.raises(DataError, match="greyscale image but the model was trained on colour"):
        C.calibrate_model(run, grey, frr=0.2, confidence=0.8)
    assert json.loads((run / "run.json").read_text())["calibration"]["source"].startswith("provisional")


def test_calibrate_cli_prints_measured_rate(tiny_run, tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import main

    run = _copy_run(tiny_run, tmp_path)
    res = CliRunner().invoke(main, ["calibrate", str(run), "--data", str(tiny_dataset), "--frr", "0.2",
                                    "--confidence", "0.8"])
    assert res.exit_code == 0, res.output
    assert "requested false-reject rate: 20 % at 80 % confidence" in res.output
    assert "measured false-reject rate on the calibration images" in res.output
    assert "calibration written to" in res.output
    bad = CliRunner().invoke(main, ["calibrate", str(run), "--data", str(tiny_dataset)])
    assert bad.exit_code == 2 and "need at least 598" in bad.output and "Traceback" not in bad.output


def test_cross_check_counts_left_out_false_rejects():
    rng = np.random.default_rng(3)
    good = rng.exponential(size=400)
    cc = C.cross_check(good, method="quantile", frr=0.02, confidence=0.9, folds=5)
    # every fold calibrates on 320 images, enough for 2 % at 90 % (114 needed)
    assert cc["n"] == 400 and cc["folds"] == 5
    parts = np.array_split(np.random.default_rng(0).permutation(400), 5)
    expect = 0
    for k in range(5):
        rest = np.concatenate([parts[j] for j in range(5) if j != k])
        expect += int(np.sum(good[parts[k]] >= C.quantile_edge(good[rest], 0.02, 0.9)[0]))
    assert cc["false_rejects"] == expect and cc["frr"] == expect / 400
    assert cc["frr"] < 0.05  # the bound is conservative: well below 2 % + noise
    skipped = C.cross_check(good[:150], method="quantile", frr=0.005, confidence=0.95)
    assert "need" in skipped["skipped"] and "598" in skipped["skipped"]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from([0.9, 0.95, 0.99]))
def test_tightest_frr_is_the_smallest_rate_n_images_can_bound(n: int, confidence: float) -> None:
    from edgekit.evaluate.calibration import min_good_images, tightest_frr

    q = tightest_frr(n, confidence)
    assert min_good_images(q, confidence) <= n
    assert q * 0.998 <= 0 or min_good_images(q * 0.998, confidence) > n  # 0.2 % tighter: not boundable


def test_too_few_images_names_the_tightest_rate_and_frr_auto_uses_it(tiny_run, tiny_dataset, tmp_path) -> None:
    import shutil

    from click.testing import CliRunner

    from edgekit.cli import main

    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # calibrate writes into the run

    r = CliRunner().invoke(main, ["calibrate", str(tiny_run), "--data", str(tiny_dataset)])
    assert r.exit_code != 0 and "the tightest rate" in r.output and "--frr auto" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run), "--data", str(tiny_dataset), "--frr", "auto"])
    assert r.exit_code == 0, r.output
    assert "--frr auto:" in r.output and "bound at best" in r.output
    r = CliRunner().invoke(main, ["calibrate", str(tiny_run), "--data", str(tiny_dataset), "--frr", "half"])
    assert r.exit_code != 0 and "--frr 'half'" in r.output
