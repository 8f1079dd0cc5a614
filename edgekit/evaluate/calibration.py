"""Thresholds a plant can trust, set from the images it has (numpy only; no torch, no scipy).

Three methods, all returning a ``Calibration`` (JSON-serialisable; stored as ``run.json``
``calibration`` and as a bundle's ``calibration.json`` + manifest ``thresholds``):

``quantile`` — good images only, distribution-free.
    Sort the n held-out good scores x(1) <= … <= x(n) and reject ``score >= x(k)``. For any
    continuous score distribution the false-reject rate of that edge, FRR = 1 − F(x(k)), follows
    Beta(m, n − m + 1) with m = n − k + 1 (the number of calibration scores at or above the edge),
    so P(FRR <= r) = P(Binomial(n, r) >= m). We take the largest m (lowest edge, fewest missed
    defects) with P(Binomial(n, r) >= m) >= confidence. Even m = 1 (edge = the highest good score)
    needs 1 − (1 − r)^n >= confidence, i.e. n >= ln(1 − confidence) / ln(1 − r): 598 good images
    for r = 0.5 % at 95 %. With fewer images a DataError says how many are needed.

``evt`` — good images only, extreme-value / peaks-over-threshold (Pickands 1975; Balkema & de
    Haan 1974). Scores above the u = 90 % quantile (80 % with fewer than 300 images) are fitted with
    a generalized Pareto distribution by probability-weighted moments (Hosking & Wallis 1987, closed
    form, robust for small samples), and the edge solves (N_u / n)·(1 + ξ (x − u)/σ)^(−1/ξ) = r.
    The confidence bound is a percentile bootstrap: the edge is the ``confidence`` quantile of the
    edges refitted on ``n_bootstrap`` resamples (seeded, reproducible). It extrapolates the tail, so
    it works with far fewer images (>= max(100, 1/(10·r)), at least 20 tail points), at the price of
    a parametric assumption, and the bound is approximate and OPTIMISTIC: in simulations (r = 0.5 %,
    n = 150–600; exponential, normal, log-normal, gamma and beta scores; 100 repetitions each) the
    nominal 95 % bound held in 75–90 % of repetitions (percentile bootstrap of extreme quantiles
    is known to under-cover). Prefer ``quantile`` whenever there are enough images; use ``evt`` to
    get a usable edge early on a new line and re-calibrate once enough good images are collected.

``coverage`` — labelled good and defect images: the accept edge is the lowest defect score, the
    reject edge just above the highest good score (the coverage definition in ``metrics.coverage``;
    a separated set gets one edge at the midpoint of the gap), widened by ``margin`` score units on
    both sides. ``threshold`` (single-threshold use) is the best-F1 threshold, clipped into the band.

For good-only methods the band is one edge, accept_edge = reject_edge = threshold (no defects were
seen to place a review band on); a ``margin`` > 0 lowers only the accept edge, opening a review band
of that width below the edge (fewer missed defects, same false-reject rate).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.evaluate.metrics import coverage as _coverage
from edgekit.evaluate.metrics import f1_best

METHODS = ("quantile", "evt", "coverage")
EVT_MIN_IMAGES = 100
EVT_MIN_TAIL = 20


@dataclass
class Calibration:
    """A calibrated decision band. ``score < accept_edge`` → accept, ``score >= reject_edge`` →
    reject, otherwise review; ``threshold`` is the single edge for binary use."""

    threshold: float
    accept_edge: float
    reject_edge: float
    method: str
    frr_target: float | None
    confidence: float | None
    n_good: int
    n_defect: int
    data_hash: str
    date: str
    margin: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (all fields plus ``source``, so it also reads as thresholds)."""
        return {**asdict(self), "source": f"calibration:{self.method}"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def to_thresholds(self) -> dict[str, Any]:
        """The bundle manifest ``thresholds`` entry (shared contract: threshold, accept_edge,
        reject_edge, source + provenance)."""
        return {
            "threshold": self.threshold,
            "accept_edge": self.accept_edge,
            "reject_edge": self.reject_edge,
            "source": f"calibration:{self.method}",
            "method": self.method,
            "frr_target": self.frr_target,
            "confidence": self.confidence,
            "margin": self.margin,
            "n_good": self.n_good,
            "n_defect": self.n_defect,
            "data_hash": self.data_hash,
            "date": self.date,
        }


# ----------------------------------------------------------------------------- helpers
def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def hash_scores(scores: np.ndarray) -> str:
    """Fallback data hash when no files are given (scores as float64 bytes)."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(scores, dtype=np.float64).tobytes()).hexdigest()


def _check_rate(frr: float, confidence: float) -> None:
    if not 0.0 < frr < 1.0:
        raise DataError(f"false-reject rate {frr} must be between 0 and 1 (e.g. 0.005 for 0.5 %)")
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence {confidence} must be between 0 and 1 (e.g. 0.95)")


def _clean(scores: Any, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise DataError(f"a {what} score is NaN/inf; the model produced non-finite values, check the run")
    return s


def _binom_sf_all(n: int, p: float) -> np.ndarray:
    """sf[m] = P(Binomial(n, p) >= m) for m = 0..n+1, from the log pmf built by the ratio
    pmf(j)/pmf(j−1) = (n−j+1)/j · p/(1−p) (no overflow for large n)."""
    j = np.arange(1, n + 1, dtype=np.float64)
    logpmf = n * math.log1p(-p) + np.r_[0.0, np.cumsum(np.log((n - j + 1) / j) + math.log(p) - math.log1p(-p))]
    pmf = np.exp(logpmf - logpmf.max())
    pmf /= pmf.sum()
    return np.minimum(1.0, np.r_[np.cumsum(pmf[::-1])[::-1], 0.0])


def binom_sf(m: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= m)."""
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    if m == 1:
        return float(-math.expm1(n * math.log1p(-p)))
    return float(_binom_sf_all(n, p)[m])


def min_good_images(frr: float, confidence: float) -> int:
    """Fewest good images for which the quantile method can bound ``frr`` at ``confidence``:
    ceil(ln(1 − confidence) / ln(1 − frr)), e.g. 598 for 0.5 % at 95 %."""
    _check_rate(frr, confidence)
    n = math.ceil(math.log1p(-confidence) / math.log1p(-frr) - 1e-9)
    # guard the float rounding of the closed form with the exact tail
    while binom_sf(1, n, frr) < confidence:
        n += 1
    while n > 1 and binom_sf(1, n - 1, frr) >= confidence:
        n -= 1
    return n


def tightest_frr(n: int, confidence: float) -> float:
    """The smallest false-reject rate ``n`` good images can bound at ``confidence`` with the
    quantile method (the edge at the highest score): 1 − (1 − confidence)^(1/n), rounded up in
    the 4th significant digit so ``min_good_images`` of it is at most ``n``; 1.0 for n = 0."""
    if n < 1:
        return 1.0
    p = -math.expm1(math.log1p(-confidence) / n)
    step = 10.0 ** (math.floor(math.log10(p)) - 3)  # 4 significant digits, rounded up
    q = math.ceil(p / step - 1e-9) * step
    while q < 1.0 and min_good_images(q, confidence) > n:
        q += step
    return float(f"{min(q, 1.0 - 1e-9):.4g}")


def _too_few(n: int, frr: float, confidence: float, need: int, where: str = "") -> str:
    best = tightest_frr(n, confidence)
    return (f"{n} held-out good images are too few to bound a false-reject rate of {frr * 100:.3g} % at "
            f"{confidence * 100:.3g} % confidence: need at least {need}{where}; the tightest rate {n} images can bound is "
            f"{best * 100:.3g} % (--frr auto uses it; or add good images, or --method evt)")


def frr_upper_bound(m: int, n: int, confidence: float) -> float:
    """Upper ``confidence`` bound on the false-reject rate of an edge with m of n calibration
    scores at or above it: the u with P(Binomial(n, u) >= m) = confidence (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_sf(m, n, mid) >= confidence:
            hi = mid
        else:
            lo = mid
    return hi


# ----------------------------------------------------------------------------- quantile
def quantile_edge(good_scores: Any, frr: float, confidence: float) -> tuple[float, dict[str, Any]]:
    """Distribution-free edge with P(false-reject rate <= frr) >= confidence (see module doc).

    Args:
        good_scores: (n,) float, held-out good images (not used in training).
    Returns:
        (edge, details) — details: n, m (calibration scores >= edge), k (1-based order statistic),
        achieved confidence, frr_upper_bound at the requested confidence, empirical FRR.
    Raises:
        DataError naming the number of images needed when n is too small.
    """
    _check_rate(frr, confidence)
    s = np.sort(_clean(good_scores, "good"))
    n = s.size
    need = min_good_images(frr, confidence)
    if n < need:
        raise DataError(_too_few(n, frr, confidence, need))
    # largest m with P(Bin(n, frr) >= m) >= confidence; the tail falls as m grows
    sf = _binom_sf_all(n, frr)
    m = int(np.flatnonzero(sf[1 : n + 1] >= confidence)[-1]) + 1
    k = n - m + 1
    edge = float(s[k - 1])
    details = {
        "n": n,
        "k": k,
        "m": m,
        "achieved_confidence": binom_sf(m, n, frr),
        "frr_upper_bound": frr_upper_bound(m, n, confidence),
        "empirical_frr": float(np.mean(s >= edge)),
        "min_good_images": need,
    }
    return edge, details


# ----------------------------------------------------------------------------- EVT / POT
def gpd_fit_pwm(excess: np.ndarray) -> tuple[float, float]:
    """Generalized Pareto (shape ξ, scale σ) by probability-weighted moments (Hosking & Wallis
    1987): a0 = mean(y), a1 = mean(y(i)·(n − i)/(n − 1)) over ascending y(i), i = 1..n;
    ξ = 2 − a0/(a0 − 2 a1), σ = 2 a0 a1/(a0 − 2 a1).

    Args:
        excess: (n,) float64 > 0, exceedances over the tail threshold.
    """
    y = np.sort(excess)
    n = y.size
    i = np.arange(1, n + 1)
    a0 = y.mean()
    a1 = np.mean(y * (n - i) / (n - 1))
    d = a0 - 2.0 * a1
    if d <= 0 or a0 <= 0:
        # degenerate tail (all exceedances equal): treat as exponential with that mean
        return 0.0, float(max(a0, 1e-12))
    xi = 2.0 - a0 / d
    sigma = 2.0 * a0 * a1 / d
    return float(xi), float(max(sigma, 1e-12))


def _gpd_edge(s_sorted: np.ndarray, frr: float, tail_q: float) -> float:
    n = s_sorted.size
    u = float(np.quantile(s_sorted, tail_q))
    exc = s_sorted[s_sorted > u] - u
    zeta = exc.size / n
    if exc.size < 2:
        return float(s_sorted[-1])
    if frr >= zeta:  # the edge lies in the body: the empirical quantile is enough
        return float(np.quantile(s_sorted, 1.0 - frr))
    xi, sigma = gpd_fit_pwm(exc)
    ratio = frr / zeta
    if abs(xi) < 1e-6:
        return u - sigma * math.log(ratio)
    return u + sigma / xi * (ratio ** (-xi) - 1.0)


def evt_edge(
    good_scores: Any, frr: float, confidence: float, *, n_bootstrap: int = 1000, tail_q: float | None = None,
    seed: int = 0,
) -> tuple[float, dict[str, Any]]:
    """Peaks-over-threshold edge with a bootstrap upper confidence bound (see module doc).

    Args:
        good_scores: (n,) float, held-out good images.
        tail_q: quantile above which the tail is fitted; default 0.9 (0.8 below 300 images).
    Returns:
        (edge = bootstrap ``confidence`` quantile, details: point estimate, ξ, σ, tail threshold,
        tail size, empirical FRR at the edge).
    """
    _check_rate(frr, confidence)
    s = np.sort(_clean(good_scores, "good"))
    n = s.size
    need = max(EVT_MIN_IMAGES, math.ceil(1.0 / (10.0 * frr) - 1e-9))
    q = tail_q if tail_q is not None else (0.9 if n >= 300 else 0.8)
    if n < need or n * (1 - q) < EVT_MIN_TAIL:
        need = max(need, math.ceil(EVT_MIN_TAIL / (1 - q) - 1e-9))
        raise DataError(
            f"{n} held-out good images are too few for the extreme-value method at a false-reject rate of "
            f"{frr:.4g}: need at least {need} (add good images or raise --frr)"
        )
    point = _gpd_edge(s, frr, q)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        boots[b] = _gpd_edge(np.sort(s[rng.integers(0, n, n)]), frr, q)
    edge = float(max(point, np.quantile(boots, confidence)))
    u = float(np.quantile(s, q))
    xi, sigma = gpd_fit_pwm(s[s > u] - u)
    details = {
        "n": n,
        "tail_quantile": q,
        "tail_threshold": u,
        "n_tail": int(np.sum(s > u)),
        "xi": xi,
        "sigma": sigma,
        "point_edge": float(point),
        "n_bootstrap": n_bootstrap,
        "bootstrap_seed": seed,
        "empirical_frr": float(np.mean(s >= edge)),
        "min_good_images": need,
    }
    return edge, details


# ----------------------------------------------------------------------------- entry point
def calibrate(
    good_scores: Any,
    defect_scores: Any | None = None,
    *,
    method: str = "quantile",
    frr: float = 0.005,
    confidence: float = 0.95,
    margin: float = 0.0,
    data_hash: str | None = None,
    date: str | None = None,
    **kw: Any,
) -> Calibration:
    """Calibrate the decision band.

    Args:
        good_scores: (n_good,) float scores of held-out good images.
        defect_scores: (n_defect,) float scores of labelled defect images (required for
            ``coverage``; with a good-only method they are only counted and checked against the edge).
        method: quantile | evt | coverage (see module docstring).
        frr: target false-reject rate (good-only methods).
        confidence: confidence of the bound (good-only methods).
        margin: score units widening the review band: both sides for ``coverage``, below the edge
            for good-only methods.
        data_hash: hash of the calibration image set (``data.dataset.dataset_hash``); default: hash
            of the scores.
    Returns:
        Calibration.
    """
    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if margin < 0:
        raise DataError(f"margin {margin} must be >= 0 (score units added to both sides of the review band)")
    good = _clean(good_scores, "good")
    bad = _clean(defect_scores, "defect") if defect_scores is not None else np.empty(0)
    if good.size == 0:
        raise DataError("no good images to calibrate on; put held-out good images in test/good")
    hash_ = data_hash or hash_scores(np.r_[good, bad])
    date = date or _now_iso()
    details: dict[str, Any]
    if method == "coverage":
        if bad.size == 0:
            raise DataError("the coverage method needs labelled defect images (test/<defect_type>/); "
                            "with good images only use --method quantile or evt")
        labels = np.r_[np.zeros(good.size), np.ones(bad.size)]
        scores = np.r_[good, bad]
        cov = _coverage(labels, scores)
        assert cov is not None  # both classes present
        accept = cov["accept_edge"] - margin
        reject = cov["reject_edge"] + margin
        best = f1_best(labels, scores)
        thr = cov["accept_edge"] if cov["separated"] else float(best["threshold"]) if best else accept
        thr = float(min(max(thr, accept), reject))
        details = {k: cov[k] for k in ("coverage", "review_share", "lowest_defect_score", "highest_good_score", "separated")}
        return Calibration(thr, float(accept), float(reject), method, None, None, int(good.size), int(bad.size),
                           hash_, date, float(margin), details)
    if method == "quantile":
        edge, details = quantile_edge(good, frr, confidence)
    else:
        edge, details = evt_edge(good, frr, confidence, **kw)
    if bad.size:
        details["defect_accept_rate_at_edge"] = float(np.mean(bad < edge))
    # a margin opens a review band below the edge: fewer missed defects, same false-reject rate
    return Calibration(float(edge), float(edge - margin), float(edge), method, float(frr), float(confidence),
                       int(good.size), int(bad.size), hash_, date, float(margin), details)


# ----------------------------------------------------------------------------- edgekit calibrate
@dataclass
class CalibrationImages:
    """Images a calibration scores: held-out goods (never used in training) and labelled defects."""

    goods: list[Path]
    defects: list[tuple[Path, str]]
    sources: dict[str, int]


def _run_info_for(model_dir: Path) -> dict[str, Any] | None:
    """run.json of a run directory, or of the run a bundle was built from (if still on disk)."""
    import json

    cands = [model_dir / "run.json"]
    mf = model_dir / "manifest.json"
    if mf.is_file():
        try:
            run_path = json.loads(mf.read_text(encoding="utf-8")).get("run", {}).get("path")
        except (OSError, ValueError):
            run_path = None
        cands = [Path(run_path) / "run.json"] if run_path else []
    for c in cands:
        if c.is_file():
            try:
                info = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            info["_path"] = str(c.parent)  # where the run is (old runs' relative paths)
            return info
    return None


def collect_images(data_dir: str | Path, run_info: dict[str, Any] | None) -> CalibrationImages:
    """Held-out good images: ``DIR/test/good`` plus the run's held-out ``train/good`` images
    (recorded in run.json ``data.val_images``) that lie inside DIR; defects: ``DIR/test/<type>/``.

    Raises:
        DataError: DIR missing, or no held-out good image at all.
    """
    from edgekit.data.dataset import GOOD, list_images

    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{root}: calibration data folder not found; pass the dataset folder holding test/good/")
    goods = list_images(root / "test" / GOOD)
    sources = {"test/good": len(goods)}
    val = []
    if run_info:
        rroot = root.resolve()
        from edgekit.train import run_val_images

        for vp in run_val_images(run_info, run_info.get("_path", Path.cwd())):
            if rroot in vp.parents:
                val.append(vp)
    if val:
        sources["run held-out train/good"] = len(val)
    seen = {p.resolve() for p in goods}
    goods += [p for p in val if p.resolve() not in seen]
    if not goods:
        raise DataError(
            f"{root / 'test' / GOOD}: no held-out good images (folder missing or empty); put good images the "
            "model was NOT trained on there (at least a few hundred for a rate-based edge)"
        )
    defects: list[tuple[Path, str]] = []
    test = root / "test"
    if test.is_dir():
        for d in sorted(x for x in test.iterdir() if x.is_dir() and x.name != GOOD and not x.name.startswith(".")):
            defects += [(p, d.name) for p in list_images(d)]
    sources["test/<defect>"] = len(defects)
    return CalibrationImages(goods, defects, sources)


def _training_reference(run_info: dict[str, Any] | None, n_sample: int = 8) -> dict[str, Any]:
    """What the training images looked like: tiles per image (from run.json counts) and whether
    they are greyscale (from a few training files, when still on disk)."""
    ref: dict[str, Any] = {"tiles_per_image": None, "grey": None}
    if not run_info:
        return ref
    data = run_info.get("data", {})
    n_img, n_tiles = data.get("n_train_images"), data.get("n_train_tiles")
    if n_img and n_tiles and n_tiles % n_img == 0:
        ref["tiles_per_image"] = n_tiles // n_img
    from edgekit.data.dataset import GOOD, list_images
    from edgekit.data.images import read_image

    greys = []
    for d in data.get("dirs", []):
        for p in list_images(Path(d) / "train" / GOOD)[:n_sample]:
            try:
                img = read_image(p)
            except DataError:
                continue
            greys.append(_is_grey(img))
        if greys:
            break
    if greys:
        ref["grey"] = all(greys) if all(greys) or not any(greys) else None
    return ref


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _check_preprocessing(path: Path, rgb: np.ndarray, spec: Any, ref: dict[str, Any]) -> None:
    """Refuse calibration images that the model would see differently from its training images."""
    from edgekit.data.preprocess import plan_tiles

    h, w = rgb.shape[:2]
    tpi = ref.get("tiles_per_image")
    if tpi is not None:
        n = plan_tiles(h, w, spec).n_tiles
        if n != tpi:
            raise DataError(
                f"{path}: a {w}x{h} image is cut into {n} tile(s) but the model's training images gave {tpi} per "
                "image; calibration images must come from the same camera set-up and preprocessing (size, crop, "
                "aspect) as the training images"
            )
    grey = ref.get("grey")
    if grey is not None and _is_grey(rgb) != grey:
        have, want = ("colour", "greyscale") if grey else ("greyscale", "colour")
        raise DataError(
            f"{path}: {have} image but the model was trained on {want} images; calibrate with images from the "
            "same camera mode and preprocessing as training"
        )


def score_images(scorer: Any, paths: list[Path], ref: dict[str, Any], quiet: bool = True,
                 desc: str = "score") -> tuple[np.ndarray, list[Path], list[str]]:
    """Score image files with a run or bundle scorer (tiles, max over tiles).

    Returns: scores (n,) float64 of the readable images, their paths, skipped-file messages."""
    from tqdm import tqdm

    from edgekit.data.images import read_image
    from edgekit.evaluate.scoring import score_image

    scores, kept, skipped = [], [], []
    for p in tqdm(paths, desc=desc, unit="img", disable=quiet):
        try:
            rgb = read_image(p)
        except DataError as exc:
            skipped.append(str(exc))
            continue
        _check_preprocessing(p, rgb, scorer.spec, ref)
        score, _, _ = score_image(scorer, rgb)
        scores.append(float(score))
        kept.append(p)
    return np.asarray(scores, dtype=np.float64), kept, skipped


def cross_check(good: np.ndarray, *, method: str, frr: float, confidence: float, folds: int = 5, seed: int = 0,
                **kw: Any) -> dict[str, Any]:
    """Honest false-reject measurement by k-fold: split the good scores into ``folds`` parts
    (seeded), calibrate on all but one part, count false rejects on the left-out part, repeat for
    every part. Each edge is set on (k−1)/k of the images, so it is slightly more conservative
    than the final edge set on all of them.

    Returns: {"n", "folds", "false_rejects", "frr"} or {"skipped": reason} when the calibration
    part of a fold is too small for the method."""
    if good.size < 2 * folds:
        return {"skipped": f"{good.size} images are too few for a {folds}-fold check"}
    parts = np.array_split(np.random.default_rng(seed).permutation(good.size), folds)
    fr = 0
    for k in range(folds):
        rest = np.concatenate([parts[j] for j in range(folds) if j != k])
        try:
            edge = calibrate(good[rest], method=method, frr=frr, confidence=confidence, **kw).reject_edge
        except DataError as exc:
            need = re.search(r"need at least (\d+)", str(exc))
            why = f"the method needs at least {need.group(1)}" if need else str(exc)
            return {"skipped": f"{folds}-fold check: {rest.size} images per calibration fold are too few ({why})"}
        fr += int(np.sum(good[parts[k]] >= edge))
    return {"n": int(good.size), "folds": folds, "false_rejects": fr, "frr": fr / good.size}


def write_calibration(model_dir: str | Path, cal: Calibration, spec: Any) -> Path:
    """Store a calibration: a run's ``run.json`` key ``calibration``, or a bundle's
    ``calibration.json`` + manifest ``thresholds`` (re-hashed through ``write_manifest``).

    Raises:
        DataError: the calibration was computed with a different preprocessing than the model's.
    Returns: the file written (run.json or manifest.json).
    """
    import json

    from edgekit.bundle.io import load_bundle, write_json_atomic, write_manifest

    p = Path(model_dir)
    doc = {**cal.to_dict(), "preprocess": spec.to_dict()}
    if (p / "manifest.json").is_file():
        bundle = load_bundle(p)
        if bundle.manifest["preprocess"] != spec.to_dict():
            raise DataError(
                f"{p}: the calibration was computed with a different preprocessing ({spec.to_dict()}) than the "
                f"bundle's ({bundle.manifest['preprocess']}); run `edgekit calibrate {p} --data DIR` on this bundle"
            )
        write_json_atomic(p / "calibration.json", doc)
        manifest = dict(bundle.manifest)
        manifest["thresholds"] = cal.to_thresholds()
        manifest["files"] = {**manifest["files"], "calibration.json": ""}
        write_manifest(p, manifest)
        return p / "manifest.json"
    run_json = p / "run.json"
    info = json.loads(run_json.read_text(encoding="utf-8"))
    if info.get("preprocess") is not None and info["preprocess"] != spec.to_dict():
        raise DataError(
            f"{p}: the calibration was computed with a different preprocessing than the run's; "
            f"run `edgekit calibrate {p} --data DIR` again"
        )
    info["calibration"] = doc
    write_json_atomic(run_json, info)
    return run_json


def calibrate_model(
    model_dir: str | Path, data_dir: str | Path, *, frr: float | str = 0.005, confidence: float = 0.95,
    method: str = "quantile", margin: float = 0.0, device: str = "cpu", write: bool = True, quiet: bool = True,
    **kw: Any,
) -> tuple[Calibration, dict[str, Any]]:
    """``edgekit calibrate``: score held-out images with a run or bundle, calibrate the band and
    (``write``) store it in the run or bundle.

    Returns: (Calibration, facts: image sources, skipped files, measured false-reject rates, path written).
    """
    from edgekit.data.dataset import dataset_hash
    from edgekit.evaluate.scoring import load_scorer

    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    mdir = Path(model_dir)
    run_info = _run_info_for(mdir)
    images = collect_images(data_dir, run_info)
    if frr == "auto":  # the tightest rate these images can bound
        frr = tightest_frr(len(images.goods), confidence)
        if not quiet:
            print(f"--frr auto: {len(images.goods)} held-out good images bound at best {frr * 100:.3g} % "
                  f"at {confidence * 100:.3g} % confidence")
    frr = float(frr)
    _check_rate(frr, confidence)
    if method == "quantile":  # say so before spending minutes scoring
        need = min_good_images(frr, confidence)
        if len(images.goods) < need:
            raise DataError(f"{data_dir}: {_too_few(len(images.goods), frr, confidence, need, ' in test/good')}")
    if method == "coverage" and not images.defects:
        raise DataError(f"{data_dir}: the coverage method needs labelled defect images in test/<defect_type>/; "
                        "with good images only use --method quantile or evt")
    scorer = load_scorer(mdir, device=device)
    ref = _training_reference(run_info)
    good, good_paths, skipped = score_images(scorer, images.goods, ref, quiet, "score good")
    # defects are scored with every method: good-only methods report how many the edge would pass
    bad, bad_paths, skipped_b = score_images(scorer, [p for p, _ in images.defects], ref, quiet, "score defect")
    skipped += skipped_b
    data_hash = dataset_hash(good_paths + bad_paths, root=data_dir) if good_paths else hash_scores(good)
    cal = calibrate(good, bad if bad.size else None, method=method, frr=frr, confidence=confidence, margin=margin,
                    data_hash=data_hash, **kw)
    cal.details["sources"] = images.sources
    facts: dict[str, Any] = {"frr": frr, "sources": images.sources, "n_good": int(good.size), "n_defect": int(bad.size),
                             "skipped": skipped}
    facts["in_sample"] = {"false_rejects": int(np.sum(good >= cal.reject_edge)), "n": int(good.size),
                          "frr": float(np.mean(good >= cal.reject_edge)) if good.size else None}
    if bad.size:
        facts["in_sample"]["false_accepts"] = int(np.sum(bad < cal.accept_edge))
        facts["in_sample"]["review"] = int(np.sum((good >= cal.accept_edge) & (good < cal.reject_edge))
                                           + np.sum((bad >= cal.accept_edge) & (bad < cal.reject_edge)))
    if method != "coverage":
        facts["cross_check"] = cross_check(good, method=method, frr=frr, confidence=confidence, **kw)
        cal.details["cross_check"] = facts["cross_check"]
    if write:
        facts["written"] = str(write_calibration(mdir, cal, scorer.spec))
    return cal, facts


def calibrate_cli(model_dir: str, data_dir: str, *, frr: float | str, confidence: float, method: str, margin: float,
                  device: str = "cpu") -> dict[str, Any]:
    """Run ``calibrate_model`` and print what a line engineer needs to judge the edge."""
    cal, facts = calibrate_model(model_dir, data_dir, frr=frr, confidence=confidence, method=method, margin=margin,
                                 device=device, quiet=False)
    src = ", ".join(f"{k}: {v}" for k, v in facts["sources"].items() if v)
    print(f"scored {facts['n_good']} held-out good and {facts['n_defect']} defect images ({src})")
    if facts["skipped"]:
        print(f"warning: {len(facts['skipped'])} unreadable image(s) skipped, e.g. {facts['skipped'][0]}")
    d = cal.details
    if cal.method == "coverage":
        print(f"coverage band: accept < {cal.accept_edge:.6g}, reject >= {cal.reject_edge:.6g} "
              f"(margin {cal.margin:g}); threshold {cal.threshold:.6g}; coverage on these images "
              f"{d['coverage'] * 100:.1f} %, review {d['review_share'] * 100:.1f} %")
    else:
        band = (f"accept < {cal.accept_edge:.6g}, reject >= {cal.reject_edge:.6g}" if cal.accept_edge != cal.reject_edge
                else f"edge {cal.reject_edge:.6g} (accept below, reject at or above)")
        extra = (f"order statistic {d['k']} of {d['n']}, FRR bound {d['frr_upper_bound'] * 100:.3g} %"
                 if cal.method == "quantile" else
                 f"GPD tail above {d['tail_threshold']:.4g} ({d['n_tail']} images), xi {d['xi']:.3f}, point "
                 f"estimate {d['point_edge']:.6g}; approximate bound, see docs")
        print(f"{cal.method}: {band} ({extra})")
        frr = facts["frr"]  # --frr auto: the rate chosen
        print(f"requested false-reject rate: {frr * 100:.3g} % at {confidence * 100:.3g} % confidence")
        ins = facts["in_sample"]
        print(f"measured false-reject rate on the calibration images: {ins['frr'] * 100:.3g} % "
              f"({ins['false_rejects']}/{ins['n']})")
        cc = facts["cross_check"]
        if "skipped" in cc:
            print(f"measured on held-out folds: skipped: {cc['skipped']}")
        else:
            print(f"measured on held-out folds ({cc['folds']}-fold: calibrate on the rest, count on the left-out "
                  f"fold): {cc['frr'] * 100:.3g} % ({cc['false_rejects']}/{cc['n']})")
        if "defect_accept_rate_at_edge" in d:
            print(f"defect images accepted at this edge: {d['defect_accept_rate_at_edge'] * 100:.3g} %")
    print(f"calibration written to {facts['written']}")
    return {"calibration": cal.to_dict(), **facts}
