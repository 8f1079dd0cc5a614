"""The operator page in a real browser (headless Chromium over CDP) during a simulated run: the
real daemon on the virtual conveyor with the page enabled. The DOM's counts must equal the
checker's report, every reject must show up on the page (within 1 s of its capture: asserted in the slow run), a thumbnail click
enlarges it, an action with the token reaches the daemon and is logged. A screenshot is saved
(``$EDGEKIT_ARTIFACTS`` or the test's tmp dir; ``EDGEKIT_UPDATE_DOCS=1`` also writes
docs/operator-page.png)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the [ui] extra (starlette, uvicorn) is not installed")
pytest.importorskip("websocket", reason="websocket-client (dev extra) drives the browser")

from edgekit.config.run import parse_run_config  # noqa: E402
from edgekit.runtime.events import read_events  # noqa: E402
from edgekit.sim.bundles import write_intensity_bundle, write_intensity_dataset  # noqa: E402
from edgekit.sim.run import prepare_config, simulate_config  # noqa: E402
from tests.ui.cdp import Browser, chromium_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


@pytest.fixture()
def browser(tmp_path: Path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def test_operator_page_follows_a_simulated_run(browser: Browser, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    bundle = write_intensity_bundle(tmp_path / "bundle", size=32)
    data = write_intensity_dataset(tmp_path / "data", n_good=10, n_defect=10)
    port = free_port()
    parts = 90
    cfg = prepare_config(parse_run_config({
        "bundle": str(bundle),
        # 10 parts/s for 9 s; two corrupt frames and one that never arrives: fail-safes by reason
        "source": {"type": "sim", "name": "line-3", "dataset": str(data), "parts": parts, "spacing_mm": 10.0,
                   "reject_distance_mm": 60.0, "seed": 2, "faults": {"corrupt": [30, 61], "drop": [45]}},
        "encoder": {"type": "sim", "speed_mm_s": 100.0, "ticks_per_mm": 1.0},
        "scheduler": {"mode": "encoder", "pulse_ms": 8.0},
        "decision": {"deadline_ms": 300.0},
        "outputs": [{"type": "fake_gpio"}],
        "events": {"path": str(tmp_path / "events.db")},
        "archive": {"enabled": True, "dir": str(tmp_path / "archive")},
        "metrics": {"enabled": False},
        "line": {"jitter_probe_ms": 0},
        "ui": {"enabled": True, "port": port, "token": "line3-token", "refresh_ms": 200},
    }))
    report: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            report.update(simulate_config(cfg))
        except BaseException as exc:  # reported below
            errors.append(exc)

    sim = threading.Thread(target=run, daemon=True)
    sim.start()
    url = f"http://127.0.0.1:{port}/"
    wait_http(url + "api/state")
    browser.goto(url)
    browser.wait_for("document.body.dataset.version !== undefined", 10)
    # when each part first appears in the strip, by the browser's clock (same host clock as t_wall)
    browser.js("""window.__seen = {};
        new MutationObserver(() => { const now = Date.now();
          for (const c of document.querySelectorAll('#strip .chip'))
            if (!(c.dataset.part in window.__seen)) window.__seen[c.dataset.part] = now; })
        .observe(document.getElementById('strip'), {childList: true}); true""")
    t_watch = time.time()

    # archived rejects with heat maps: click one, it opens enlarged
    browser.wait_for("document.querySelectorAll('#rejects figure').length >= 3", 30)
    browser.js("document.querySelector('#rejects figure').click(); true")
    assert browser.wait_for("!document.getElementById('modal').hidden && "
                            "document.getElementById('modal-img').complete && "
                            "document.getElementById('modal-img').naturalWidth > 0 && "
                            "document.getElementById('modal-heat').naturalWidth > 0", 5)
    assert browser.js("document.getElementById('modal-img').src").startswith(url + "archive/")
    browser.js("document.getElementById('modal-close').click(); true")
    assert browser.js("document.getElementById('modal').hidden")

    # an action without the token is refused; with it the daemon applies it and logs it
    browser.js("document.getElementById('act-disable').click(); true")
    browser.wait_for("document.getElementById('action-result').textContent.includes('token')", 5)
    assert browser.js("document.getElementById('line-rejection').textContent") == "REJECTION ON"
    browser.js("document.getElementById('token').value = 'line3-token';"
               "document.getElementById('act-disable').click(); true")
    browser.wait_for("document.getElementById('line-rejection').textContent === 'REJECTION OFF'", 5)
    browser.js("document.getElementById('act-enable').click(); true")
    browser.wait_for("document.getElementById('line-rejection').textContent === 'REJECTION ON'", 5)
    browser.wait_for("document.getElementById('notes').textContent.includes('enable from operator page')", 5)

    browser.wait_for(f"Number(document.getElementById('parts').textContent) >= {parts // 2}", 30)
    shot = browser.screenshot(Path(os.environ.get("EDGEKIT_ARTIFACTS", tmp_path)) / "operator-page.png")
    if os.environ.get("EDGEKIT_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "operator-page.png")

    sim.join(120)
    assert not errors, errors
    assert not sim.is_alive()
    # the final state is pushed after the last commit, before the page server closes
    browser.wait_for(f"Number(document.getElementById('parts').textContent) === {parts}", 5)
    dom = browser.js("""(() => { const n = (id) => Number(document.getElementById(id).textContent);
        const fs = {}; for (const li of document.querySelectorAll('#failsafe-reasons li'))
          fs[li.dataset.reason] = Number(li.dataset.count);
        return {parts: n('parts'), accept: n('accepted'), reject: n('rejected'), review: n('review'),
                failsafe: n('failsafe-total'), reasons: fs, seen: window.__seen}; })()""")
    dec = report["decisions"]
    assert dom["parts"] == report["parts"] == report["events_logged"] == parts
    assert (dom["accept"], dom["reject"], dom["review"]) == (dec.get("accept", 0), dec.get("reject", 0),
                                                             dec.get("review", 0))
    assert dom["reasons"] == report["failsafe"] == {"decode_error": 2, "missing_frame": 1}
    assert dom["failsafe"] == 3

    # every reject captured while the page watched appeared within 1 s of its capture
    rows = read_events(cfg.events.path, report["run_id"])
    watched = [r for r in rows if r["decision"] == "reject" and r["t_wall"] > t_watch + 0.2]
    assert len(watched) >= 10
    assert all(str(r["part_id"]) in dom["seen"] for r in watched)  # every one was pushed to the page
    lat = [dom["seen"][str(r["part_id"])] / 1e3 - r["t_wall"] for r in watched]
    print(f"reject capture -> visible in the page: max {max(lat):.3f} s, n={len(lat)}")
    # the 1 s figure is wall-clock: asserted only in the slow run (-m slow), reported always
    if "slow" in (request.config.getoption("markexpr") or "").replace("not slow", ""):
        assert max(lat) <= 1.0, sorted(lat)[-5:]
    # the page's actions are in the event log as control notes
    import sqlite3

    with sqlite3.connect(cfg.events.path) as conn:
        notes = [m for (m,) in conn.execute("SELECT message FROM notes WHERE kind = 'control' ORDER BY id")]
    assert [n.split(" from ")[0] for n in notes] == ["disable", "enable"]
    assert json.loads(json.dumps(report["decisions"]))  # report is plain data
