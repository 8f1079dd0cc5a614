"""`edgekit evaluate`: score the test split of a dataset with a run or bundle and report metrics."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgekit.errors import DataError
from edgekit.evaluate.metrics import EvalResult, ImageRecord, compute_metrics
from edgekit.evaluate.scoring import Scorer, load_scorer, score_image

log = logging.getLogger(__name__)


def score_test_set(scorer: Scorer, data_dir: str | Path, keep_maps: bool = True,
                   quiet: bool = False) -> tuple[EvalResult, list[str]]:
    """Score every test image. Unreadable images are skipped with a warning and returned as
    messages (counted in the metrics as ``n_skipped``)."""
    from edgekit.data.dataset import read_mask, scan_dataset
    from edgekit.data.images import read_image

    index = scan_dataset(data_dir, require_test=True)
    records: list[ImageRecord] = []
    skipped: list[str] = []
    t0 = time.perf_counter()
    for s in tqdm(index.test, desc="evaluate", unit="img", disable=quiet):
        try:
            rgb = read_image(s.path)
        except DataError as exc:
            log.warning("skipping %s", exc)
            skipped.append(str(exc))
            continue
        score, amap, _ = score_image(scorer, rgb)
        mask = None
        if keep_maps and s.mask_path is not None:
            mask = read_mask(s.mask_path, amap.shape)
        elif keep_maps and s.label == 0:
            mask = np.zeros(amap.shape, dtype=bool)
        records.append(ImageRecord(str(s.path), int(s.label), s.defect_type, float(score),
                                   amap.astype(np.float32) if keep_maps else None, mask))
    from edgekit import __version__

    info = {"scorer": scorer.kind, "bundle_id": scorer.info.get("bundle_id") or "- (a run, not a bundle)",
            "edgekit_version": __version__, "model edgekit_version": scorer.info.get("edgekit_version"),
            "seconds": round(time.perf_counter() - t0, 2),
            "method": scorer.info.get("method"), "backbone": scorer.info.get("backbone")}
    cal = scorer.thresholds if scorer.thresholds and scorer.thresholds.get("threshold") is not None else None
    return EvalResult(records, name=str(data_dir), data=str(data_dir), calibration=cal, info=info), skipped


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v * 100:.2f} %"


def print_summary(metrics: dict[str, Any]) -> None:
    """The metrics a line engineer reads first, one per line (everything else is in --json)."""
    m = metrics
    for k in ("n_good", "n_defect", "n_skipped", "image_auroc", "average_precision", "pixel_auroc", "pro"):
        print(f"{k:>18}: {_fmt(m.get(k))}")
    best = m.get("f1_best")
    if best:
        print(f"{'best F1':>18}: {_fmt(best['f1'])} at score >= {best['threshold']:.6g} "
              f"(precision {_fmt(best['precision'])}, recall {_fmt(best['recall'])})")
    at = m.get("at_threshold")
    if at and m.get("threshold_source", "").startswith("calibrated"):
        c = at["confusion"]
        print(f"{'calibrated thr.':>18}: {m['threshold']:.6g} ({m['threshold_source']}): F1 {_fmt(at['f1'])}, "
              f"precision {_fmt(at['precision'])}, recall {_fmt(at['recall'])}, "
              f"false rejects {c['fp']}/{c['fp'] + c['tn']} ({_pct(at['false_reject_rate'])}), "
              f"false accepts {c['fn']}/{c['fn'] + c['tp']}")
    cov = m.get("coverage")
    if cov:
        print(f"{'coverage':>18}: {_pct(cov['coverage'])} (auto-accept below {cov['lowest_defect_score']:.6g}, "
              f"auto-reject above {cov['highest_good_score']:.6g}; review share {_pct(cov['review_share'])})")
    band = m.get("band")
    if band:
        print(f"{'calibrated band':>18}: accept < {band['accept_edge']:.6g}, reject >= {band['reject_edge']:.6g}: "
              f"auto {_pct(band['auto_share'])}, review {_pct(band['review_share'])}, false rejects "
              f"{band['good_reject']}, false accepts {band['defect_accept']}")
    for r in m.get("per_defect", []):
        if r["defect_type"] != "good":
            print(f"{'  ' + r['defect_type']:>18}: n {r['n']}, AUROC {_fmt(r['auroc'])}, rejected {_pct(r['rejected_share'])}")


def evaluate_cli(model_dir: str, data_dir: str, json_path: str | None = None, report_path: str | None = None) -> dict[str, Any]:
    scorer = load_scorer(model_dir)
    result, skipped = score_test_set(scorer, data_dir)
    result.name = str(model_dir)
    metrics = compute_metrics(result)
    metrics["n_skipped"] = len(skipped)
    print_summary(metrics)
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}")
    if json_path:
        doc = {**metrics, "model": str(model_dir), "data": str(data_dir), "scorer": scorer.kind,
               "images": [{"path": r.path, "label": r.label, "defect_type": r.defect_type, "score": r.score}
                          for r in result.records], "skipped": skipped}
        Path(json_path).write_text(json.dumps(doc, indent=2, default=float), encoding="utf-8")
    if report_path:
        from edgekit.evaluate.report import write_report

        write_report(report_path, result, metrics)
        print(f"report written to {report_path}")
    return metrics
