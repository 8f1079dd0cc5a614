"""Evaluation metrics on per-image scores and per-pixel anomaly maps (numpy + OpenCV, no torch).

Conventions used everywhere in this module:
- ``labels`` are 0 (good) / 1 (defect); ``scores`` are higher-is-more-anomalous.
- A part is rejected when ``score >= threshold`` (the manifest band rule: ``score < accept_edge``
  → accept, ``score >= reject_edge`` → reject, otherwise review).
- "False reject" = a good part rejected (FP), "false accept" = a defect passed (FN).
- A metric that is undefined for the data (AUROC without defects, PRO without masks) is
  ``None``, never an exception; malformed input (NaN scores, mismatched lengths, empty) raises
  DataError with a one-line message.

Pixel metrics (pixel AUROC, PRO) stream over the maps one at a time and only keep per-threshold
counts, so thousands of 256×256 maps cost O(one map + thresholds) memory. With at most
``max_exact_pixels`` pixels in total every distinct map value is a threshold and the result is
exact; above that, thresholds are a dense grid (quantiles of a fixed-seed pixel subsample plus a
uniform grid). The counts at every grid threshold are still exact; only pairs of a good and a
defect pixel falling between two neighbouring thresholds are counted as ties (½), which bounds
the pixel-AUROC error by ½·Σ_b P_b·N_b / (P·N) (typically < 1e-4 with 4k thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edgekit.errors import DataError


# ----------------------------------------------------------------------------- input records
@dataclass
class ImageRecord:
    """One evaluated image.

    Attributes:
        path: image file (the report reads it for the gallery; may be absent on disk).
        label: 0 good, 1 defect.
        defect_type: folder name of the defect class; ``"good"`` for good images.
        score: image anomaly score (max over tiles).
        anomaly_map: optional (H, W) float32 map (stitched over the scaled image).
        mask: optional (H, W) bool ground-truth defect mask, same shape as ``anomaly_map``
            (all False for good images).
    """

    path: str
    label: int
    defect_type: str
    score: float
    anomaly_map: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class EvalResult:
    """Everything an evaluation produced; input to ``compute_metrics`` and ``write_report``.

    Attributes:
        records: one ImageRecord per test image.
        name: model name shown in the report (run or bundle directory).
        data: dataset path shown in the report.
        calibration: optional calibration dict (``Calibration.to_dict()``) whose band is drawn and
            evaluated; without it the report uses the best-F1 threshold.
        info: free-form facts to show (method, backbone, device, timings ...), JSON-serialisable.
    """

    records: list[ImageRecord]
    name: str = ""
    data: str = ""
    calibration: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels."""
        return np.array([r.label for r in self.records], dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        """(N,) float64 image scores."""
        return np.array([r.score for r in self.records], dtype=np.float64)

    @property
    def defect_types(self) -> list[str]:
        return [r.defect_type for r in self.records]


# ----------------------------------------------------------------------------- validation
def _check_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise DataError(f"{y.size} labels but {s.size} scores; pass one score per labelled image")
    if s.size == 0:
        raise DataError("no scores to evaluate; the test set is empty (add images under test/)")
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise DataError(f"score #{bad} is {s[bad]} (not finite); the model produced NaN/inf, check the run")
    if not np.all((y == 0) | (y == 1)):
        raise DataError("labels must be 0 (good) or 1 (defect)")
    return y.astype(np.int64), s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any() and (~y.astype(bool)).any())


def _f(x: float | None) -> float | None:
    """Plain float (JSON) or None."""
    return None if x is None else float(x)


# ----------------------------------------------------------------------------- image-level
def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,) with ties given their average rank (like scipy rankdata)."""
    x = np.asarray(x).reshape(-1)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    first = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], n]  # exclusive
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def image_auroc(labels: Any, scores: Any) -> float | None:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count ½).

    Args:
        labels: (N,) 0/1.
        scores: (N,) float, higher = more anomalous.
    Returns:
        AUROC in [0, 1], or None when only one class is present (undefined).
    """
    y, s = _check_scores(labels, scores)
    if not _both_classes(y):
        return None
    r = average_ranks(s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _curve_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP/FP counts when rejecting ``score >= t`` for each distinct t (descending)."""
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    ys = y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # last index of each tie group
    tps = np.cumsum(ys)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps, ss[last]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """ROC curve with one point per distinct score.

    Returns:
        (fpr, tpr, thresholds), each (K+1,) float64, starting at (0, 0) with threshold +inf;
        point k rejects ``score >= thresholds[k]``. None when only one class is present.
    """
    y, s = _check_scores(labels, scores)
    if not _both_classes(y):
        return None
    tps, fps, thr = _curve_counts(y, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def pr_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Precision-recall curve (defect = positive) with one point per distinct score.

    Returns:
        (precision, recall, thresholds) as (K,) float64 ordered by decreasing threshold, plus a
        final point (precision 1, recall 0) is NOT added: every point is an achievable threshold.
        None when there are no defects.
    """
    y, s = _check_scores(labels, scores)
    if not y.any():
        return None
    tps, fps, thr = _curve_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return precision, recall, thr


def average_precision(labels: Any, scores: Any) -> float | None:
    """Average precision Σ (R_k − R_{k−1})·P_k (step integral of the PR curve); None without defects."""
    pr = pr_curve(labels, scores)
    if pr is None:
        return None
    precision, recall, _ = pr
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """Confusion counts when rejecting ``score >= threshold``.

    Returns: {"tp": defects rejected, "fp": goods rejected (false rejects), "tn": goods accepted,
    "fn": defects accepted (false accepts)}.
    """
    y, s = _check_scores(labels, scores)
    rej = s >= threshold
    pos = y == 1
    return {
        "tp": int(np.sum(rej & pos)),
        "fp": int(np.sum(rej & ~pos)),
        "tn": int(np.sum(~rej & ~pos)),
        "fn": int(np.sum(~rej & pos)),
    }


def threshold_metrics(labels: Any, scores: Any, threshold: float) -> dict[str, Any]:
    """Precision, recall, F1, false-reject/-accept rates and confusion counts at one threshold.

    Rates with an empty denominator are None (e.g. precision when nothing is rejected).
    """
    c = confusion(labels, scores, threshold)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_reject_rate": fp / (fp + tn) if fp + tn else None,
        "false_accept_rate": fn / (fn + tp) if fn + tp else None,
        "accuracy": (tp + tn) / (tp + fp + tn + fn),
        "confusion": c,
    }


def f1_best(labels: Any, scores: Any) -> dict[str, Any] | None:
    """Best F1 over all thresholds (reject ``score >= threshold``; the threshold is an observed score).

    Returns: ``threshold_metrics`` at the best threshold (ties: the highest threshold, i.e. the
    fewest rejects), or None without defects.
    """
    y, s = _check_scores(labels, scores)
    if not y.any():
        return None
    tps, fps, thr = _curve_counts(y, s)
    fns = tps[-1] - tps
    f1 = 2 * tps / (2 * tps + fps + fns)
    k = int(np.argmax(f1))  # first max = highest threshold
    return threshold_metrics(y, s, float(thr[k]))


# ----------------------------------------------------------------------------- coverage / band
def _next_up(x: float) -> float:
    """Smallest float64 above x: ``score >= _next_up(x)`` is exactly ``score > x``."""
    return float(np.nextafter(np.float64(x), np.inf))


def coverage(labels: Any, scores: Any) -> dict[str, Any] | None:
    """Share of images decidable with 100 % precision and 100 % recall (the fabric-inspection
    coverage definition): scores below the lowest defect score are auto-accepted, scores above the
    highest good score are auto-rejected, the overlap in between goes to human review.

    Perfect separation gives coverage 1, identical good and defect score ranges give 0.

    Returns: dict with ``coverage``, ``review_share`` (= 1 − coverage), ``lowest_defect_score``,
    ``highest_good_score``, counts ``n_auto_accept``/``n_auto_reject``/``n_review``, ``separated``
    and the operational band (``accept_edge``, ``reject_edge``) under the manifest rule
    (``score < accept_edge`` accept, ``score >= reject_edge`` reject): accept_edge = lowest defect
    score, reject_edge = just above the highest good score; when the classes are separated both
    edges are the midpoint of the gap. None when one class is missing (undefined).
    """
    y, s = _check_scores(labels, scores)
    if not _both_classes(y):
        return None
    good, bad = s[y == 0], s[y == 1]
    lo, hi = float(bad.min()), float(good.max())
    n_acc = int(np.sum(s < lo))
    n_rej = int(np.sum(s > hi))
    separated = hi < lo
    if separated:
        accept_edge = reject_edge = (lo + hi) / 2.0
    else:
        accept_edge, reject_edge = lo, _next_up(hi)
    n = s.size
    cov = (n_acc + n_rej) / n
    return {
        "coverage": cov,
        "review_share": 1.0 - cov,
        "lowest_defect_score": lo,
        "highest_good_score": hi,
        "accept_edge": accept_edge,
        "reject_edge": reject_edge,
        "separated": bool(separated),
        "n_auto_accept": n_acc,
        "n_auto_reject": n_rej,
        "n_review": n - n_acc - n_rej,
        "n": n,
    }


def band_outcome(labels: Any, scores: Any, accept_edge: float, reject_edge: float) -> dict[str, Any]:
    """Apply an accept/review/reject band and count outcomes per class.

    Returns: counts ``good_accept/good_review/good_reject/defect_accept/defect_review/
    defect_reject``, ``auto_share`` (decided without a person), ``review_share``, and the error
    rates among all goods (``false_reject_rate``) and all defects (``false_accept_rate``).
    """
    y, s = _check_scores(labels, scores)
    if accept_edge > reject_edge:
        raise DataError(f"accept_edge {accept_edge} is above reject_edge {reject_edge}; the band must satisfy accept <= reject")
    acc = s < accept_edge
    rej = s >= reject_edge
    rev = ~acc & ~rej
    pos = y == 1
    out: dict[str, Any] = {"accept_edge": float(accept_edge), "reject_edge": float(reject_edge)}
    for name, cls in (("good", ~pos), ("defect", pos)):
        out[f"{name}_accept"] = int(np.sum(acc & cls))
        out[f"{name}_review"] = int(np.sum(rev & cls))
        out[f"{name}_reject"] = int(np.sum(rej & cls))
    n = s.size
    out["review_share"] = float(rev.sum() / n)
    out["auto_share"] = 1.0 - out["review_share"]
    n_good, n_def = int((~pos).sum()), int(pos.sum())
    out["false_reject_rate"] = out["good_reject"] / n_good if n_good else None
    out["false_accept_rate"] = out["defect_accept"] / n_def if n_def else None
    return out


def per_defect_breakdown(
    labels: Any, scores: Any, defect_types: Sequence[str], threshold: float | None = None
) -> list[dict[str, Any]]:
    """One row per defect type (and one for ``good``): count, score min/median/max, AUROC of that
    type against all good images, and at ``threshold`` the share rejected (recall for defects,
    false-reject rate for goods).

    Args:
        labels: (N,) 0/1; scores: (N,) float; defect_types: N names (``"good"`` for good images).
    """
    y, s = _check_scores(labels, scores)
    types = np.asarray(list(defect_types), dtype=object)
    if types.size != y.size:
        raise DataError(f"{types.size} defect types for {y.size} images; pass one per image")
    good = y == 0
    rows = []
    names = sorted({str(t) for t in types[~good]})
    for name in (["good"] if good.any() else []) + names:
        sel = good if name == "good" else (~good & (types == name))
        v = s[sel]
        row: dict[str, Any] = {
            "defect_type": name,
            "n": int(sel.sum()),
            "score_min": float(v.min()),
            "score_median": float(np.median(v)),
            "score_max": float(v.max()),
            "auroc": None,
            "rejected_share": None,
        }
        if name != "good" and good.any():
            sub = good | sel
            row["auroc"] = image_auroc(y[sub], s[sub])
        if threshold is not None:
            row["rejected_share"] = float(np.mean(v >= threshold))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- pixel-level
def _check_maps(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> None:
    if len(masks) != len(maps):
        raise DataError(f"{len(masks)} masks but {len(maps)} anomaly maps; pass one mask per map (all-False for good images)")
    if len(maps) == 0:
        raise DataError("no anomaly maps to evaluate; the model produced no maps for the test set")
    for i, (mk, mp) in enumerate(zip(masks, maps)):
        if np.shape(mk) != np.shape(mp):
            raise DataError(
                f"mask #{i} has shape {np.shape(mk)} but its anomaly map {np.shape(mp)}; resize the mask to the map first"
            )


def _thresholds(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, levels: np.ndarray, negatives_only: bool,
    max_exact_pixels: int, n_uniform: int = 1024, per_map_sample: int = 4096, seed: int = 0,
) -> np.ndarray:
    """Ascending thresholds; the first is the global minimum so every pixel falls in a bin."""
    total = sum(int(np.size(m)) for m in maps)
    if total <= max_exact_pixels:
        return np.unique(np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps]))
    rng = np.random.default_rng(seed)
    lo, hi = math.inf, -math.inf
    samples = []
    for mk, mp in zip(masks, maps):
        v = np.asarray(mp, dtype=np.float64).ravel()
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
        if negatives_only:
            v = v[~np.asarray(mk, dtype=bool).ravel()]
        if v.size:
            samples.append(v[rng.integers(0, v.size, size=min(per_map_sample, v.size))])
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise DataError("an anomaly map contains NaN/inf; the model produced non-finite values, check the run")
    parts = [np.linspace(lo, hi, n_uniform), [lo]]
    if samples:
        parts.append(np.quantile(np.concatenate(samples), levels))
    return np.unique(np.concatenate(parts))


def _bins(m: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the largest threshold <= value, per pixel (thresholds[0] is the global min)."""
    v = np.asarray(m, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)):
        raise DataError("an anomaly map contains NaN/inf; the model produced non-finite values, check the run")
    return np.clip(np.searchsorted(thresholds, v, side="right") - 1, 0, thresholds.size - 1)


def _at_or_above(counts: np.ndarray) -> np.ndarray:
    """counts per bin → number of pixels >= each threshold (reverse cumulative sum)."""
    return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]


def pixel_auroc(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, max_exact_pixels: int = 100_000,
    n_thresholds: int = 4096,
) -> float | None:
    """Pixel-level AUROC over all pixels of all images (defect pixels = positives).

    Streams over the maps (see module docstring for exactness): ROC points at every threshold,
    trapezoid integral (equivalent to counting in-bin ties as ½).

    Args:
        masks: N (H, W) bool ground-truth masks (all False for good images).
        maps: N (H, W) float anomaly maps, same shapes as the masks.
    Returns:
        AUROC, or None when there are no defect pixels or no good pixels.
    """
    _check_maps(masks, maps)
    thr = _thresholds(masks, maps, levels=np.linspace(0, 1, n_thresholds), negatives_only=False,
                      max_exact_pixels=max_exact_pixels)
    pos = np.zeros(thr.size, dtype=np.int64)
    neg = np.zeros(thr.size, dtype=np.int64)
    for mk, mp in zip(masks, maps):
        b = _bins(mp, thr)
        m = np.asarray(mk, dtype=bool).ravel()
        pos += np.bincount(b[m], minlength=thr.size)
        neg += np.bincount(b[~m], minlength=thr.size)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # one ROC point per threshold (ascending → rates decreasing) plus (0, 0) above the maximum
    tpr = np.r_[_at_or_above(pos) / n_pos, 0.0]
    fpr = np.r_[_at_or_above(neg) / n_neg, 0.0]
    return float(_trapezoid(fpr[::-1], tpr[::-1]))


def _trapezoid(x: np.ndarray, y: np.ndarray, x_max: float | None = None) -> float:
    """Trapezoid integral of y(x) for non-decreasing x, optionally up to x_max (linear
    interpolation at x_max, as the MVTec AD evaluation code does)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x_max is not None:
        keep = x <= x_max
        i = int(np.searchsorted(x, x_max, side="right"))  # first point beyond x_max
        xs, ys = x[keep], y[keep]
        if i < x.size and (xs.size == 0 or xs[-1] < x_max):
            x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
            y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
            xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
        x, y = xs, ys
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def pro_curve(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, fpr_limit: float = 0.3,
    max_exact_pixels: int = 100_000, n_thresholds: int = 4096,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-region-overlap curve (Bergmann et al., MVTec AD, IJCV 2021).

    For each threshold t: PRO(t) = mean over all ground-truth regions (8-connected components of
    every mask, over all images) of the fraction of the region's pixels with map >= t; FPR(t) =
    fraction of all good pixels (outside every mask, good images included) with map >= t.

    Returns:
        (fpr, pro), (K,) float64 with fpr non-decreasing, from (0, 0) to (1, 1); None when there
        are no defect regions or no good pixels.
    """
    _check_maps(masks, maps)
    levels = np.linspace(max(0.0, 1.0 - 2.0 * fpr_limit), 1.0, n_thresholds)
    thr = _thresholds(masks, maps, levels=levels, negatives_only=True, max_exact_pixels=max_exact_pixels)
    k = thr.size
    neg = np.zeros(k, dtype=np.int64)
    pro_sum = np.zeros(k, dtype=np.float64)
    n_regions = 0
    for mk, mp in zip(masks, maps):
        b = _bins(mp, thr)
        m = np.asarray(mk, dtype=bool)
        neg += np.bincount(b[~m.ravel()], minlength=k)
        if not m.any():
            continue
        n_cc, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        lab = lab.ravel()
        inside = lab > 0
        # one bincount for all regions of this image: row = region, column = threshold bin
        counts = np.bincount((lab[inside] - 1) * k + b[inside], minlength=(n_cc - 1) * k).reshape(n_cc - 1, k)
        sizes = counts.sum(axis=1, keepdims=True)
        pro_sum += (_at_or_above(counts) / sizes).sum(axis=0)
        n_regions += n_cc - 1
    n_neg = int(neg.sum())
    if n_regions == 0 or n_neg == 0:
        return None
    fpr = _at_or_above(neg) / n_neg  # ascending thresholds: decreasing
    pro = pro_sum / n_regions
    fpr = np.r_[0.0, fpr[::-1], 1.0]
    pro = np.r_[0.0, pro[::-1], 1.0]
    return fpr, pro


def pro_score(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3, **kw: Any
) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD definition: trapezoid
    integral with linear interpolation at the limit, divided by the limit, so a perfect map
    scores 1). Arguments as ``pro_curve``; None when undefined."""
    if not 0 < fpr_limit <= 1:
        raise DataError(f"fpr_limit {fpr_limit} must be in (0, 1]")
    curve = pro_curve(masks, maps, fpr_limit=fpr_limit, **kw)
    if curve is None:
        return None
    fpr, pro = curve
    return _trapezoid(fpr, pro, x_max=fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------- everything
def decision_threshold(result: EvalResult) -> tuple[float | None, str]:
    """Threshold used for confusion counts: the calibrated one if present, else best F1."""
    cal = result.calibration
    if cal and cal.get("threshold") is not None:
        return float(cal["threshold"]), f"calibrated, {cal.get('method') or cal.get('source') or '?'}"
    best = f1_best(result.labels, result.scores)
    if best is None:
        return None, "none (no defects in the test set)"
    return best["threshold"], "best F1 on this test set"


def compute_metrics(result: EvalResult, *, fpr_limit: float = 0.3) -> dict[str, Any]:
    """Every metric for an EvalResult as a JSON-serialisable dict (None where undefined).

    Keys: n_images, n_good, n_defect, image_auroc, average_precision, f1_best, threshold +
    threshold_source, at_threshold, coverage, band (outcome of the calibrated band, if any),
    per_defect, pixel_auroc, pro (when maps and masks exist), n_pixel_images.
    """
    y, s = _check_scores(result.labels, result.scores)
    thr, thr_source = decision_threshold(result)
    out: dict[str, Any] = {
        "n_images": int(y.size),
        "n_good": int((y == 0).sum()),
        "n_defect": int((y == 1).sum()),
        "image_auroc": image_auroc(y, s),
        "average_precision": average_precision(y, s),
        "f1_best": f1_best(y, s),
        "threshold": thr,
        "threshold_source": thr_source,
        "at_threshold": threshold_metrics(y, s, thr) if thr is not None else None,
        "coverage": coverage(y, s),
        "band": None,
        "per_defect": per_defect_breakdown(y, s, result.defect_types, thr),
    }
    cal = result.calibration
    if cal and cal.get("accept_edge") is not None and cal.get("reject_edge") is not None:
        out["band"] = band_outcome(y, s, float(cal["accept_edge"]), float(cal["reject_edge"]))
    pix = [r for r in result.records if r.anomaly_map is not None and r.mask is not None]
    out["n_pixel_images"] = len(pix)
    out["pixel_auroc"] = None
    out["pro"] = None
    out["pro_fpr_limit"] = fpr_limit
    if pix:
        masks = [r.mask for r in pix]
        maps = [r.anomaly_map for r in pix]
        out["pixel_auroc"] = pixel_auroc(masks, maps)
        out["pro"] = pro_score(masks, maps, fpr_limit=fpr_limit)
    return out
