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
    info = {"scorer": scorer.kind, "seconds": round(time.perf_counter() - t0, 2),
            "method": scorer.info.get("method"), "backbone": scorer.info.get("backbone")}
    cal = scorer.thresholds if scorer.thresholds and scorer.thresholds.get("threshold") is not None else None
    return EvalResult(records, name=str(data_dir), data=str(data_dir), calibration=cal, info=info), skipped


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def evaluate_cli(model_dir: str, data_dir: str, json_path: str | None = None, report_path: str | None = None) -> dict[str, Any]:
    scorer = load_scorer(model_dir)
    result, skipped = score_test_set(scorer, data_dir)
    result.name = str(model_dir)
    metrics = compute_metrics(result)
    metrics["n_skipped"] = len(skipped)
    for k in ("n_good", "n_defect", "n_skipped", "image_auroc", "pixel_auroc", "pro"):
        print(f"{k:>12}: {_fmt(metrics.get(k))}")
    cov = metrics.get("coverage")
    if cov:
        print(f"{'coverage':>12}: {_fmt(cov.get('coverage'))}")
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}")
    if json_path:
        doc = {**metrics, "model": str(model_dir), "data": str(data_dir), "scorer": scorer.kind,
               "images": [{"path": r.path, "label": r.label, "defect_type": r.defect_type, "score": r.score}
                          for r in result.records], "skipped": skipped}
        Path(json_path).write_text(json.dumps(doc, indent=2, default=float), encoding="utf-8")
    if report_path:
        from edgekit.evaluate.report import write_report

        write_report(report_path, result)
        print(f"report written to {report_path}")
    return metrics
