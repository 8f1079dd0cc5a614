"""The HTML report is one valid, self-contained file with embedded PNGs."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.evaluate.calibration import calibrate
from edgekit.evaluate.metrics import EvalResult, ImageRecord
from edgekit.evaluate.report import write_report

pytest.importorskip("matplotlib")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.stack: list[str] = []
        self.unclosed = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("link", "script") or (tag == "a" and a.get("href", "").startswith("http")):
            self.links.append(tag)
        if tag not in ("img", "meta", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def _records(tmp_path, with_maps=True):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        label = int(i >= 7)
        img = rng.integers(90, 160, (40, 40, 3), dtype=np.uint8)
        mask = np.zeros((40, 40), bool)
        amap = rng.random((40, 40)).astype(np.float32) * 0.3
        if label:
            mask[10:18, 12:20] = True
            amap[mask] += 0.2 + 0.1 * i
        p = tmp_path / f"img_{i}.png"
        cv2.imwrite(str(p), img)
        recs.append(ImageRecord(str(p), label, ["scratch", "dent"][i % 2] if label else "good", float(amap.max()),
                                amap if with_maps else None, mask if with_maps else None))
    return recs


def _check_html(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    p = _Collect()
    p.feed(text)
    p.close()
    assert p.stack == ["html"] or p.stack == [], p.stack  # </html> closes everything opened
    assert not p.links, "report must not load external assets"
    assert not re.search(r"(src|href)=['\"](https?:|file:|/)", text), "no external or absolute references"
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) is not None
    return text, p.imgs


def test_report_is_valid_self_contained_html(tmp_path):
    recs = _records(tmp_path)
    good = [r.score for r in recs if r.label == 0]
    bad = [r.score for r in recs if r.label == 1]
    cal = calibrate(good, bad, method="coverage", margin=0.01)
    res = EvalResult(recs, name="runs/demo", data=str(tmp_path), calibration=cal.to_dict(), info={"method": "cse"})
    out = write_report(tmp_path / "sub" / "report.html", res)
    text, imgs = _check_html(out)
    # ROC, PR, histogram, per-type plot + the galleries: only images the band does not accept /
    # accepts wrongly (a coverage band on separable scores: none of either)
    n_err = sum(1 for r in recs if (r.label == 0) == (r.score >= cal.accept_edge))
    assert len(imgs) == 4 + n_err
    for needle in ("Image AUROC", "Coverage", "Review share", "PRO", "Per defect type", "scratch", "dent",
                   "False rejects and reviews", "False accepts", "Calibration", "coverage"):
        assert needle in text


def test_report_without_maps_or_defects(tmp_path):
    recs = [r for r in _records(tmp_path, with_maps=False) if r.label == 0]
    out = write_report(tmp_path / "r.html", EvalResult(recs, name="goods only"))
    text, imgs = _check_html(out)
    assert "n/a" in text  # AUROC undefined without defects, shown as n/a instead of crashing
    assert len(imgs) == 1  # histogram only: no band and no defects, so no image is shown as an error
    with pytest.raises(DataError, match="no evaluated images"):
        write_report(tmp_path / "x.html", EvalResult([]))


def test_evaluate_cli_writes_every_metric_and_report(tiny_bundle, tiny_dataset, tmp_path, capsys):
    import json

    from edgekit.evaluate.run import evaluate_cli

    evaluate_cli(str(tiny_bundle), str(tiny_dataset), json_path=str(tmp_path / "m.json"),
                 report_path=str(tmp_path / "r.html"))
    doc = json.loads((tmp_path / "m.json").read_text())
    for key in ("image_auroc", "average_precision", "pixel_auroc", "pro", "f1_best", "at_threshold", "coverage",
                "band", "per_defect", "threshold_source"):
        assert key in doc
    assert doc["pixel_auroc"] is not None and doc["pro"] is not None  # synthetic data ships masks
    assert 0.0 <= doc["coverage"]["coverage"] <= 1.0
    out = capsys.readouterr().out
    assert "coverage:" in out and "best F1:" in out
    _check_html(tmp_path / "r.html")


def test_report_shows_the_shipped_band_the_real_errors_and_the_ids(tmp_path) -> None:
    """A shipped band with accept edge = reject edge has no review share; the galleries hold only
    images the band gets wrong (or say none); the bundle id and version are in the header."""
    recs = _records(tmp_path)
    goods = sorted(r.score for r in recs if r.label == 0)
    edge = (goods[-1] + goods[-2]) / 2  # one good image above it: exactly one false reject
    lowest_defect = min(r.score for r in recs if r.label == 1)
    cal = {"threshold": edge, "accept_edge": edge, "reject_edge": edge, "source": "provisional: test"}
    res = EvalResult(recs, name="bundle", data=str(tmp_path), calibration=cal,
                     info={"bundle_id": "abc123def4567890", "edgekit_version": "9.9.9"})
    text, imgs = _check_html(write_report(tmp_path / "r.html", res))
    assert "abc123def4567890" in text and "edgekit_version 9.9.9" in text
    kpi = re.search(r"<div class='v'>([^<]*)</div><div class='l'>Review share \(shipped band\)", text)
    assert kpi and kpi.group(1) == "0.00 %"
    fr = text.split("False rejects and reviews")[1].split("<h3>")[0]
    assert fr.count("<figure") == 1  # only the good image above the edge, not the top-N goods
    fa = text.split("False accepts")[1]
    assert ("none" in fa.split("</p>")[0]) == (lowest_defect >= edge)
    assert len(imgs) >= 3  # ROC, PR, histogram with its zoom panel
