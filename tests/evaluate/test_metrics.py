"""Metrics against hand-computed values and brute-force references on constructed cases."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.evaluate import metrics as M


def _brute_auroc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (pos.size * neg.size))


def test_perfect_separator_auroc_1_coverage_1():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert M.image_auroc(y, s) == 1.0
    cov = M.coverage(y, s)
    assert cov["coverage"] == 1.0 and cov["review_share"] == 0.0 and cov["separated"]
    assert cov["lowest_defect_score"] == 0.8 and cov["highest_good_score"] == 0.3
    # separated: one edge in the middle of the gap; the band then decides everything correctly
    assert cov["accept_edge"] == cov["reject_edge"] == pytest.approx(0.55)
    band = M.band_outcome(y, s, cov["accept_edge"], cov["reject_edge"])
    assert band["good_accept"] == 3 and band["defect_reject"] == 2 and band["review_share"] == 0.0


def test_fully_overlapping_coverage_0():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.5, 0.9, 0.1, 0.5, 0.9])
    assert M.image_auroc(y, s) == 0.5
    cov = M.coverage(y, s)
    assert cov["coverage"] == 0.0 and cov["review_share"] == 1.0 and cov["n_review"] == 6


def test_partial_overlap_coverage_and_band_edges():
    # goods 0.1 0.2 0.6 | defects 0.5 0.7 0.9: below 0.5 → 2 auto-accepts, above 0.6 → 2 auto-rejects
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    cov = M.coverage(y, s)
    assert cov["coverage"] == pytest.approx(4 / 6)
    assert (cov["n_auto_accept"], cov["n_auto_reject"], cov["n_review"]) == (2, 2, 2)
    # manifest rule: score >= reject_edge rejects, so the edge sits just above the highest good score
    assert cov["accept_edge"] == 0.5 and 0.6 < cov["reject_edge"] < 0.6 + 1e-12
    band = M.band_outcome(y, s, cov["accept_edge"], cov["reject_edge"])
    assert band["good_reject"] == 0 and band["defect_accept"] == 0
    assert band["good_review"] == 1 and band["defect_review"] == 1


def test_auroc_ties_match_brute_force_and_roc_trapezoid():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # many ties
    ref = _brute_auroc(y, s)
    assert M.image_auroc(y, s) == pytest.approx(ref, abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, s)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and np.isinf(thr[0])
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(ref, abs=1e-12)


def test_degenerate_inputs():
    assert M.image_auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None  # no defects: undefined, not a crash
    assert M.coverage([1, 1], [0.1, 0.2]) is None
    assert M.f1_best([0, 0], [0.1, 0.2]) is None
    assert M.roc_curve([0, 0], [0.1, 0.2]) is None
    with pytest.raises(DataError, match="not finite"):
        M.image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(DataError, match="2 labels but 3 scores"):
        M.image_auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="empty"):
        M.image_auroc([], [])


def test_f1_best_and_threshold_metrics():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.75, 0.6, 0.8, 0.9])
    best = M.f1_best(y, s)
    # candidates: t=0.6 → tp3 fp1 fn0 → F1 6/7; t=0.8 → tp2 fp0 fn1 → F1 4/5
    assert best["threshold"] == 0.6 and best["f1"] == pytest.approx(6 / 7)
    assert best["confusion"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 0}
    m = M.threshold_metrics(y, s, 0.8)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(2 / 3)
    assert m["false_reject_rate"] == 0.0 and m["false_accept_rate"] == pytest.approx(1 / 3)
    assert M.threshold_metrics(y, s, 5.0)["precision"] is None  # nothing rejected


def test_pr_curve_and_average_precision():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    precision, recall, thr = M.pr_curve(y, s)
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1, 1])
    assert M.average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_per_defect_breakdown():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.4, 0.3, 0.9, 0.8])
    types = ["good", "good", "crack", "hole", "hole"]
    rows = {r["defect_type"]: r for r in M.per_defect_breakdown(y, s, types, threshold=0.5)}
    assert rows["good"]["n"] == 2 and rows["good"]["rejected_share"] == 0.0
    assert rows["crack"]["auroc"] == 0.5 and rows["crack"]["rejected_share"] == 0.0
    assert rows["hole"]["auroc"] == 1.0 and rows["hole"]["rejected_share"] == 1.0


def test_pro_hand_computed():
    # one 1×8 image: region R1 = pixels 0-1, region R2 = pixel 6; five good pixels
    m = np.zeros((1, 8), bool)
    m[0, [0, 1, 6]] = True
    a = np.array([[0.9, 0.6, 0.1, 0.3, 0.5, 0.7, 0.8, 0.0]])
    # thresholds (descending) → (FPR, PRO):
    #   0.9 → (0, ½·½) ; 0.8 → (0, (½+1)/2=0.75) ; 0.7 → (1/5, 0.75) ; 0.6 → (1/5, 1) ; 0.5 → (2/5, 1)
    # ∫₀^0.3 PRO dFPR = 0.2·0.75 + 0.1·1 = 0.25 → normalised by 0.3: 5/6
    assert M.pro_score([m], [a], fpr_limit=0.3) == pytest.approx(5 / 6)
    # the same with the thresholds grid instead of exact distinct values
    assert M.pro_score([m], [a], fpr_limit=0.3, max_exact_pixels=0) == pytest.approx(5 / 6)
    # a second, good image with a single very high pixel shifts FPR: 10 good pixels now
    g = np.zeros((1, 5), bool)
    ga = np.array([[0.95, 0.0, 0.0, 0.0, 0.0]])
    # 0.95 → (0.1, 0); 0.9 → (0.1, .25); 0.8 → (.1, .75); 0.7 → (.2, .75); 0.6 → (.2, 1); 0.5 → (.3, 1)
    # ∫ = 0.1·0.75 + 0.1·1 + ... trapezoid (0,0)→(0.1,0): 0; then (.1,.75)→(.2,.75): .075; (.2,1)→(.3,1): .1
    assert M.pro_score([m, g], [a, ga]) == pytest.approx((0.075 + 0.1) / 0.3)


def test_pro_uses_8_connectivity():
    # (0,0) touches (1,1) only diagonally; (1,1)-(1,2) are 4-neighbours. Only (0,0) is detected.
    m = np.zeros((3, 3), bool)
    m[0, 0] = m[1, 1] = m[1, 2] = True
    a = np.zeros((3, 3))
    a[0, 0] = 1.0
    fpr, pro = M.pro_curve([m], [a])
    # 8-connected: one 3-pixel region, 1/3 covered (4-connected would give (1 + 0) / 2)
    assert fpr[1] == 0.0 and pro[1] == pytest.approx(1 / 3)


def _brute_pro(masks, maps, limit):
    import cv2

    regions = []
    negs = []
    for mk, mp in zip(masks, maps):
        n, lab = cv2.connectedComponents(mk.astype(np.uint8), connectivity=8)
        regions += [mp[lab == r] for r in range(1, n)]
        negs.append(mp[~mk])
    negs = np.concatenate(negs)
    ts = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    f = [0.0] + [float(np.mean(negs >= t)) for t in ts] + [1.0]
    p = [0.0] + [float(np.mean([np.mean(r >= t) for r in regions])) for t in ts] + [1.0]
    return M._trapezoid(np.array(f), np.array(p), x_max=limit) / limit


def test_pixel_auroc_and_pro_match_brute_force():
    rng = np.random.default_rng(1)
    maps, masks = [], []
    for i in range(6):
        a = rng.normal(size=(24, 24))
        mk = np.zeros((24, 24), bool)
        if i < 3:
            mk[4 + i : 10 + i, 5:12] = True
            mk[18:21, 18:22] = True
            a[mk] += 1.0 + i * 0.3
        maps.append(np.round(a, 2))
        masks.append(mk)
    pos = np.concatenate([m[k] for m, k in zip(maps, masks)])
    neg = np.concatenate([m[~k] for m, k in zip(maps, masks)])
    lab = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    ref = M.image_auroc(lab, np.r_[pos, neg])
    assert M.pixel_auroc(masks, maps) == pytest.approx(ref, abs=1e-12)
    assert M.pixel_auroc(masks, maps, max_exact_pixels=0) == pytest.approx(ref, abs=2e-3)
    ref_pro = _brute_pro(masks, maps, 0.3)
    assert M.pro_score(masks, maps) == pytest.approx(ref_pro, abs=1e-12)
    assert M.pro_score(masks, maps, max_exact_pixels=0) == pytest.approx(ref_pro, abs=5e-3)


def test_pixel_metrics_degenerate_and_shape_errors():
    a = np.zeros((4, 4))
    assert M.pixel_auroc([np.zeros((4, 4), bool)], [a]) is None  # no defect pixels
    assert M.pro_score([np.zeros((4, 4), bool)], [a]) is None
    with pytest.raises(DataError, match="resize the mask"):
        M.pixel_auroc([np.zeros((4, 5), bool)], [a])


def test_compute_metrics_on_eval_result():
    rng = np.random.default_rng(2)
    recs = []
    for i in range(8):
        label = int(i >= 4)
        a = rng.random((16, 16)).astype(np.float32)
        mk = np.zeros((16, 16), bool)
        if label:
            mk[4:8, 4:8] = True
            a[mk] += 1.0
        recs.append(M.ImageRecord(f"img{i}.png", label, "scratch" if label else "good", float(a.max()), a, mk))
    res = M.EvalResult(recs, name="run", calibration={"threshold": 1.0, "accept_edge": 0.9, "reject_edge": 1.0,
                                                       "method": "coverage"})
    out = M.compute_metrics(res)
    assert out["image_auroc"] == 1.0 and out["coverage"]["coverage"] == 1.0
    assert out["pixel_auroc"] > 0.9 and out["pro"] > 0.9
    assert out["threshold_source"].startswith("calibrated")
    assert out["band"]["good_reject"] == 0
    import json

    json.dumps(out)  # JSON-serialisable
