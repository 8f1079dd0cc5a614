"""One self-contained HTML evaluation report (numpy + OpenCV + matplotlib Agg; no torch).

Everything is inline (CSS, PNG plots and gallery images as base64 data URIs), so the file opens
from a USB stick on a machine without network or edgekit. Contents: headline metrics, ROC and PR
curves, good-vs-defect score histograms with the accept / review / reject band shaded, scores per
defect type, confusion counts, band outcome, per-defect table, calibration provenance, and a
gallery of the worst false rejects / false accepts with anomaly-map overlays and mask outlines.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgekit.errors import DataError
from edgekit.evaluate.metrics import EvalResult, ImageRecord, compute_metrics, pr_curve, roc_curve
from edgekit.paths import shown

GOOD_COLOR = "#2b7bba"
DEFECT_COLOR = "#d7301f"
ACCEPT_SHADE = "#4daf4a"
REVIEW_SHADE = "#ffb000"
REJECT_SHADE = "#e41a1c"
GALLERY_N = 8
CARD_MAX_SIDE = 180


# ----------------------------------------------------------------------------- plots
def _mpl() -> Any:
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the install
        raise DataError("the HTML report needs matplotlib; install it with `pip install edgekit[report]`") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 12, "axes.titlesize": 14, "axes.labelsize": 12, "legend.fontsize": 11,
        "xtick.labelsize": 11, "ytick.labelsize": 11, "axes.grid": True, "grid.alpha": 0.3,
    })
    return plt


def _fig_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _roc_plot(y: np.ndarray, s: np.ndarray, auroc: float | None) -> str | None:
    curve = roc_curve(y, s)
    if curve is None:
        return None
    plt = _mpl()
    fpr, tpr, _ = curve
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.plot(fpr, tpr, color=DEFECT_COLOR, lw=2.2, drawstyle="default", label=f"AUROC = {auroc:.4f}")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False-reject rate (good parts rejected)",
           ylabel="Detection rate (defects rejected)", title="ROC curve (image level)")
    ax.legend(loc="lower right")
    return _fig_uri(fig)


def _pr_plot(y: np.ndarray, s: np.ndarray, ap: float | None) -> str | None:
    curve = pr_curve(y, s)
    if curve is None:
        return None
    plt = _mpl()
    precision, recall, _ = curve
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    # precision p_k holds on the recall interval (r_{k-1}, r_k]: the steps the AP sum integrates
    ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="pre", color=GOOD_COLOR, lw=2.2,
            label=f"AP = {ap:.4f}")
    base = float(np.mean(y))
    ax.axhline(base, color="gray", ls="--", lw=1, label=f"defect share {base:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), xlabel="Recall (defects found)",
           ylabel="Precision (rejects that are defects)", title="Precision-recall curve")
    ax.legend(loc="lower left")
    return _fig_uri(fig)


def _shade_band(ax: Any, lo: float, hi: float, accept: float | None, reject: float | None) -> None:
    if accept is None or reject is None:
        return
    ax.axvspan(lo, accept, color=ACCEPT_SHADE, alpha=0.12, lw=0)
    if reject > accept:
        ax.axvspan(accept, reject, color=REVIEW_SHADE, alpha=0.25, lw=0)
    ax.axvspan(reject, hi, color=REJECT_SHADE, alpha=0.10, lw=0)
    ax.axvline(accept, color="#1a7f37", lw=1.8, ls="-")
    ax.axvline(reject, color="#b3001b", lw=1.8, ls="-")


def _hist_plot(y: np.ndarray, s: np.ndarray, accept: float | None, reject: float | None, band_label: str,
               threshold: float | None) -> str:
    plt = _mpl()
    from matplotlib.patches import Patch

    fig, (ax, zx) = plt.subplots(1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    edges_all = [v for v in (accept, reject, threshold) if v is not None]
    lo, hi = float(min([s.min(), *edges_all])), float(max([s.max(), *edges_all]))
    pad = (hi - lo) * 0.04 or 1.0
    lo, hi = lo - pad, hi + pad
    bins = np.linspace(lo, hi, 50)
    _shade_band(ax, lo, hi, accept, reject)
    good, bad = s[y == 0], s[y == 1]
    if good.size:
        ax.hist(good, bins=bins, color=GOOD_COLOR, alpha=0.65, label=f"good (n={good.size})")
    if bad.size:
        ax.hist(bad, bins=bins, color=DEFECT_COLOR, alpha=0.55, label=f"defect (n={bad.size})")
    if threshold is not None and (accept is None or threshold not in (accept, reject)):
        ax.axvline(threshold, color="black", lw=1.5, ls="--")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlim=(lo, hi), xlabel="Image anomaly score", ylabel="Images",
           title=f"Score distribution with the decision band ({band_label})")
    handles, _ = ax.get_legend_handles_labels()
    if accept is not None:
        handles += [Patch(color=ACCEPT_SHADE, alpha=0.3, label=f"accept  < {accept:.4g}")]
        if reject is not None and reject > accept:
            handles += [Patch(color=REVIEW_SHADE, alpha=0.5, label="review")]
        handles += [Patch(color=REJECT_SHADE, alpha=0.3, label=f"reject  \u2265 {reject:.4g}")]
    ax.legend(handles=handles, loc="upper right", framealpha=0.95)
    # the region that decides: where good and defect scores meet around the edges, on its own axis
    marks = [v for v in (accept, reject, threshold) if v is not None]
    if good.size:
        marks.append(float(good.max()))
    if bad.size:
        marks.append(float(bad.min()))
    z_lo, z_hi = min(marks), max(marks)
    span = (z_hi - z_lo) or (abs(z_hi) * 0.05 + 1e-6)
    z_lo, z_hi = z_lo - 0.6 * span, z_hi + 0.6 * span
    zbins = np.linspace(z_lo, z_hi, 40)
    _shade_band(zx, z_lo, z_hi, accept, reject)
    if good.size:
        zx.hist(good[(good >= z_lo) & (good <= z_hi)], bins=zbins, color=GOOD_COLOR, alpha=0.65)
    if bad.size:
        zx.hist(bad[(bad >= z_lo) & (bad <= z_hi)], bins=zbins, color=DEFECT_COLOR, alpha=0.55)
    for v, st in ((float(good.max()) if good.size else None, ":"), (float(bad.min()) if bad.size else None, "-.")):
        if v is not None:
            zx.axvline(v, color="#444", lw=1, ls=st)
    zx.yaxis.set_major_locator(MaxNLocator(integer=True))
    zx.set(xlim=(z_lo, z_hi), xlabel="Image anomaly score (zoom)",
           title="Decision region: highest good (dotted) / lowest defect (dash-dot)")
    fig.tight_layout()
    return _fig_uri(fig)


def _per_type_plot(y: np.ndarray, s: np.ndarray, types: list[str], accept: float | None,
                   reject: float | None) -> str | None:
    names = sorted({t for t, lab in zip(types, y) if lab == 1})
    if not names:
        return None
    plt = _mpl()
    rows = ["good", *names]
    data = [s[y == 0]] + [s[(y == 1) & (np.asarray(types, dtype=object) == n)] for n in names]
    fig, ax = plt.subplots(figsize=(11.5, 0.9 + 0.55 * len(rows)))
    lo, hi = float(s.min()), float(s.max())
    pad = (hi - lo) * 0.04 or 1.0
    _shade_band(ax, lo - pad, hi + pad, accept, reject)
    rng = np.random.default_rng(0)
    for i, v in enumerate(data):
        if v.size == 0:
            continue
        jitter = rng.uniform(-0.18, 0.18, v.size)
        ax.scatter(v, np.full(v.size, i) + jitter, s=16, alpha=0.7,
                   color=GOOD_COLOR if i == 0 else DEFECT_COLOR, edgecolors="none")
    ax.set_yticks(range(len(rows)), [f"{r} ({d.size})" for r, d in zip(rows, data)])
    ax.set(xlim=(lo - pad, hi + pad), ylim=(len(rows) - 0.5, -0.5), xlabel="Image anomaly score",
           title="Scores per defect type")
    ax.grid(axis="y", alpha=0)
    return _fig_uri(fig)


# ----------------------------------------------------------------------------- gallery
def _read_rgb(path: str) -> np.ndarray | None:
    data = np.fromfile(path, dtype=np.uint8) if Path(path).is_file() else None
    if data is None or data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _card_png(rec: ImageRecord, vmin: float, vmax: float) -> str:
    """Image with the anomaly map blended in (JET, common scale) and the mask outlined in white."""
    amap = rec.anomaly_map
    img = _read_rgb(rec.path)
    if amap is not None:
        h, w = amap.shape
    elif img is not None:
        h, w = img.shape[:2]
    else:
        h, w = 128, 128
    if img is None:
        img = np.full((h, w, 3), 90, np.uint8)
        cv2.putText(img, "image not found", (4, h // 2), cv2.FONT_HERSHEY_SIMPLEX, max(0.3, w / 400), (255, 255, 255), 1)
    elif img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    out = img.copy()
    if amap is not None:
        norm = np.clip((np.asarray(amap, np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
        heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
        out = cv2.addWeighted(img, 0.55, heat, 0.45, 0)
    # side by side: original | overlay, scaled so the longer side of each is <= CARD_MAX_SIDE (wide strips: 2x)
    scale = min(1.0 * (2 if w > 2 * h else 1) * CARD_MAX_SIDE / max(h, w), 4.0)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    left = cv2.resize(img, size, interpolation=interp)
    right = cv2.resize(out, size, interpolation=interp)
    if rec.mask is not None and rec.mask.any():
        m = cv2.resize(rec.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(right, contours, -1, (255, 255, 255), 2)
    gap = np.full((size[1], 6, 3), 255, np.uint8)
    both = np.concatenate([left, gap, right], axis=1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(both, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise DataError(f"{rec.path}: could not encode the gallery image")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _colour_scale(recs: list[ImageRecord], reject: float | None) -> tuple[float, float, float]:
    """(blue, green, red) map values shared by every gallery card. Blue is the typical low level of
    good maps; green is the reject edge when there is one (for max-of-map scores a red spot is
    then exactly what pushed the image over the edge), else the 99th percentile of map maxima."""
    goods = [r.anomaly_map for r in recs if r.anomaly_map is not None and r.label == 0]
    maps = [r.anomaly_map for r in recs if r.anomaly_map is not None]
    if not maps:
        return 0.0, 0.5, 1.0
    vmin = float(np.median([np.percentile(a, 1) for a in (goods or maps)]))
    peak = float(np.percentile([float(a.max()) for a in maps], 99))
    edge = reject if reject is not None and vmin < reject < 10 * max(abs(peak), 1e-12) + abs(vmin) else None
    if edge is None:
        edge = (vmin + peak) / 2
    vmax = 2 * edge - vmin
    if not vmax > vmin:
        vmax = vmin + 1.0
    return vmin, edge, vmax


def _decision(score: float, accept: float | None, reject: float | None) -> str:
    if accept is None or reject is None:
        return "-"
    return "accept" if score < accept else "reject" if score >= reject else "review"


def _gallery(title: str, note: str, recs: list[ImageRecord], accept: float | None, reject: float | None,
             vmin: float, vmax: float) -> str:
    if not recs:
        return f"<h3>{html.escape(title)}</h3><p class='note'>none</p>"
    cards = []
    for r in recs:
        dec = _decision(r.score, accept, reject)
        cards.append(
            f"<figure class='card'><img alt='{html.escape(shown(Path(r.path).name))}' src='{_card_png(r, vmin, vmax)}'>"
            f"<figcaption><b>{html.escape(r.defect_type)}</b> · score <b>{r.score:.4g}</b> · "
            f"<span class='dec {dec}'>{dec}</span><br><span class='path'>{html.escape(shown(r.path))}</span>"
            "</figcaption></figure>"
        )
    return f"<h3>{html.escape(title)}</h3><p class='note'>{note}</p><div class='gallery'>{''.join(cards)}</div>"


# ----------------------------------------------------------------------------- html
def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "<span class='na'>n/a</span>"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "<span class='na'>n/a</span>"
        return f"{v * 100:.2f} %" if pct else f"{v:.4g}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
 color:#1b1b1b;line-height:1.45;padding:0 16px;font-size:15px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:34px}
h3{font-size:17px;margin-bottom:4px}.sub{color:#555;margin-top:0}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.kpi{border:1px solid #ddd;border-radius:8px;padding:10px 16px;min-width:130px;background:#fafafa}
.kpi .v{font-size:24px;font-weight:600}.kpi .l{font-size:13px;color:#555}
table{border-collapse:collapse;margin:8px 0 14px 0;font-size:14px}
th,td{border:1px solid #ccc;padding:5px 10px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots img{max-width:100%;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:14px}.card{margin:0;border:1px solid #ddd;border-radius:6px;
 padding:6px;background:#fafafa;max-width:100%}.card img{display:block;max-width:100%}
figcaption{font-size:13px;margin-top:4px}.path{color:#666;font-size:12px;word-break:break-all}
.dec{padding:1px 6px;border-radius:4px;color:#fff}.accept{background:#1a7f37}.review{background:#b87500}
.reject{background:#b3001b}.note{color:#555;font-size:14px}.na{color:#999}
.conf td{min-width:90px}
"""


def write_report(path: str | Path, result: EvalResult, metrics: dict[str, Any] | None = None) -> Path:
    """Write one self-contained HTML report.

    Args:
        path: output .html file (parent directories are created).
        result: per-image records (+ optional calibration) — see ``EvalResult``.
        metrics: ``compute_metrics(result)`` if already computed (else computed here).
    Returns:
        The written path.
    """
    if not result.records:
        raise DataError("no evaluated images to report; the test set is empty")
    m = metrics if metrics is not None else compute_metrics(result)
    y, s, types = result.labels, result.scores, result.defect_types
    cal = result.calibration
    cov = m.get("coverage")
    if cal and cal.get("accept_edge") is not None:
        accept, reject = float(cal["accept_edge"]), float(cal["reject_edge"])
        band_label = f"calibrated: {cal.get('method') or str(cal.get('source', '?')).split(':')[0]}"
    elif cov is not None:
        accept, reject = float(cov["accept_edge"]), float(cov["reject_edge"])
        band_label = "coverage band of this test set; not calibrated"
    else:
        accept = reject = None
        band_label = "no band"
    thr = m.get("threshold")

    parts: list[str] = []
    title = f"edgekit evaluation — {result.name}" if result.name else "edgekit evaluation"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ids = " · ".join(f"{k} {html.escape(str(result.info[k]))}" for k in ("bundle_id", "edgekit_version")
                     if result.info.get(k))
    parts.append(f"<h1>{html.escape(title)}</h1><p class='sub'>data: {html.escape(shown(result.data or '-'))} · "
                 f"{m['n_images']} images ({m['n_good']} good, {m['n_defect']} defect) · written {now}"
                 f"{' · ' + ids if ids else ''}</p>")

    f1 = (m.get("f1_best") or {}).get("f1")
    kpis = [
        ("Image AUROC", _fmt(m.get("image_auroc"))),
        ("Best F1", _fmt(f1)),
        ("Coverage", _fmt(cov["coverage"], pct=True) if cov else _fmt(None)),
        # the share the band that ships sends to review (0 when accept edge = reject edge), not the
        # coverage band's: that one is in the Decisions section
        ("Review share (shipped band)", _fmt(m["band"]["review_share"], pct=True) if m.get("band") else _fmt(None)),
        ("Pixel AUROC", _fmt(m.get("pixel_auroc"))),
        (f"PRO (FPR \u2264 {m.get('pro_fpr_limit', 0.3):g})", _fmt(m.get("pro"))),
    ]
    parts.append("<div class='kpis'>" + "".join(
        f"<div class='kpi'><div class='v'>{v}</div><div class='l'>{html.escape(k)}</div></div>" for k, v in kpis
    ) + "</div>")
    if result.info:
        parts.append(_table(["fact", "value"], [[html.escape(str(k)), _fmt(v)] for k, v in result.info.items()]))

    # plots
    parts.append("<h2>Curves and score distributions</h2><div class='plots'>")
    for uri in (_roc_plot(y, s, m.get("image_auroc")), _pr_plot(y, s, m.get("average_precision"))):
        if uri:
            parts.append(f"<img alt='curve' src='{uri}'>")
    parts.append(f"<img alt='score histogram' src='{_hist_plot(y, s, accept, reject, band_label, thr)}'>")
    per_type = _per_type_plot(y, s, types, accept, reject)
    if per_type:
        parts.append(f"<img alt='scores per defect type' src='{per_type}'>")
    parts.append("</div>")

    # decisions
    parts.append("<h2>Decisions</h2>")
    if cov:
        parts.append(
            "<p>Coverage (share of test images decidable with 100 % precision and recall): "
            f"<b>{_fmt(cov['coverage'], pct=True)}</b> — {cov['n_auto_accept']} auto-accepted (score below the "
            f"lowest defect score {_fmt(cov['lowest_defect_score'])}), {cov['n_auto_reject']} auto-rejected (above "
            f"the highest good score {_fmt(cov['highest_good_score'])}), {cov['n_review']} to review "
            f"(<b>{_fmt(cov['review_share'], pct=True)}</b>).</p>")
    at = m.get("at_threshold")
    if at:
        c = at["confusion"]
        parts.append(f"<h3>Single threshold {_fmt(thr)} ({html.escape(m['threshold_source'])})</h3>")
        parts.append(_table(["", "predicted good (accept)", "predicted defect (reject)"], [
            ["actual good", f"{c['tn']}", f"{c['fp']} false rejects"],
            ["actual defect", f"{c['fn']} false accepts", f"{c['tp']}"],
        ], "conf"))
        parts.append(_table(["precision", "recall", "F1", "false-reject rate", "false-accept rate"], [[
            _fmt(at["precision"]), _fmt(at["recall"]), _fmt(at["f1"]),
            _fmt(at["false_reject_rate"], pct=True), _fmt(at["false_accept_rate"], pct=True)]]))
    band = m.get("band")
    if band:
        parts.append(f"<h3>Calibrated band: accept &lt; {_fmt(band['accept_edge'])}, reject \u2265 "
                     f"{_fmt(band['reject_edge'])}</h3>")
        parts.append(_table(["", "accept", "review", "reject"], [
            ["good", str(band["good_accept"]), str(band["good_review"]), str(band["good_reject"])],
            ["defect", str(band["defect_accept"]), str(band["defect_review"]), str(band["defect_reject"])],
        ], "conf"))
        parts.append(f"<p>Decided automatically: <b>{_fmt(band['auto_share'], pct=True)}</b>, review "
                     f"{_fmt(band['review_share'], pct=True)}; false-reject rate "
                     f"{_fmt(band['false_reject_rate'], pct=True)}, false-accept rate "
                     f"{_fmt(band['false_accept_rate'], pct=True)}.</p>")

    # per-defect table
    parts.append("<h2>Per defect type</h2>")
    rows = []
    for r in m["per_defect"]:
        rows.append([html.escape(r["defect_type"]), str(r["n"]), _fmt(r["auroc"]), _fmt(r["score_min"]),
                     _fmt(r["score_median"]), _fmt(r["score_max"]), _fmt(r["rejected_share"], pct=True)])
    parts.append(_table(["type", "images", "AUROC vs good", "min score", "median", "max score",
                         f"rejected at {_fmt(thr)}"], rows))

    if cal:
        keys = ["method", "threshold", "accept_edge", "reject_edge", "frr_target", "confidence", "margin",
                "n_good", "n_defect", "data_hash", "date"]
        parts.append("<h2>Calibration</h2>")
        rows = [[k, _fmt(cal.get(k), pct=k == "frr_target")] for k in keys if k in cal]
        d = cal.get("details") or {}
        if d.get("frr_upper_bound") is not None:
            rows.append(["false-reject bound at this confidence", _fmt(d["frr_upper_bound"], pct=True)])
        cc = d.get("cross_check") or {}
        if cc.get("frr") is not None:
            rows.append([f"measured false-reject rate ({cc.get('folds', '?')}-fold, left-out images)",
                         f"{_fmt(cc['frr'], pct=True)} ({cc['false_rejects']}/{cc['n']})"])
        parts.append(_table(["field", "value"], rows))

    # gallery: ranked by how wrong they are under the band (or the threshold)
    recs = result.records
    vmin, edge, vmax = _colour_scale(recs, reject)
    # only the real errors under the band shown (good not accepted, defect accepted), or "none"
    a_edge = accept if accept is not None else thr
    goods = sorted((r for r in recs if r.label == 0 and a_edge is not None and r.score >= a_edge),
                   key=lambda r: -r.score)[:GALLERY_N]
    defects = sorted((r for r in recs if r.label == 1 and a_edge is not None and r.score < a_edge),
                     key=lambda r: r.score)[:GALLERY_N]
    parts.append("<h2>Hardest images</h2><p class='note'>Left: image; right: anomaly map overlay on one colour "
                 f"scale for all images: blue = {vmin:.4g}, green = {edge:.4g}{' (the reject edge)' if reject is not None else ''}, "
                 f"red \u2265 {vmax:.4g}; white outline: ground-truth defect.</p>")
    parts.append(_gallery("False rejects and reviews: good images not accepted, highest score first",
                          "Highest first; the badge is the decision under the band shown above (a good image that is "
                          "not accepted is a false reject or goes to review).", goods, accept, reject, vmin, vmax))
    parts.append(_gallery("False accepts: defect images accepted, lowest score first",
                          "Lowest first; a defect image marked accept is a false accept.", defects, accept, reject,
                          vmin, vmax))

    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8", errors="backslashreplace")  # any name left: \udcXX, no crash
    return out
