"""firmware_scripts/monitoring: Prometheus config, alert/recording rules and the Grafana dashboard,
checked with the real tools (promtool check config / check rules / test rules, Debian package
`prometheus`) and against a running simulated daemon: every metric an expression names must be
one the daemon exports, and a real Prometheus scraping that daemon evaluates every expression."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "firmware_scripts" / "monitoring"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus; .ci/run installs it)")
RULE_TESTS = ("alerts.test.yml", "alerts-drift.test.yml")
# labels Prometheus adds to every series of a station (file_sd + the scrape itself)
TARGET_LABELS = {"job", "instance", "line", "station"}


def _promtool(*args: str, cwd: Path = MON) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MON / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads((MON / "grafana-dashboard.json").read_text())


def _dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets, template queries, annotations."""
    d = _dashboard()
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    out += [a["expr"] for a in d["annotations"]["list"]]
    return out


def _concrete(expr: str, line: str = ".*", station: str = ".*") -> str:
    """A dashboard expression with Grafana's variables filled in, as Grafana sends it."""
    expr = expr.replace("$__rate_interval", "1m").replace("$line", line).replace("$station", station)
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
    return f"group by ({m.group(2)}) ({m.group(1)})" if m else expr


_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)*)\s*(\{[^}]*\})?")
_KEYWORDS = {"sum", "by", "rate", "increase", "and", "or", "unless", "on", "ignoring", "group_left", "count",
             "histogram_quantile", "abs", "changes", "group", "le", "bool", "without", "max", "min", "avg"}


def _selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in a PromQL expression."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # no names inside label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    for m in _SELECTOR.finditer(expr):
        name, braces = m.group(1), m.group(2)
        nxt = expr[m.end():].lstrip()[:1]
        if name in _KEYWORDS or nxt == "(" or re.fullmatch(r"\d.*", name):
            continue
        # the label list of `by (...)` / `on (...)` is not a selector
        before = expr[: m.start()].rstrip()
        if re.search(r"\b(by|on|ignoring|without|group_left|group_right)\s*\([^)]*$", before):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", braces or ""))
        yield name, labels


def _all_exprs() -> list[str]:
    return [r["expr"] for r in _rules()] + [_concrete(e) for e in _dashboard_exprs()]


# ----------------------------------------------------------------------------- promtool
@needs_promtool
def test_prometheus_config_and_station_discovery(tmp_path: Path) -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml").stdout
    # the example targets as a plant installs them, plus a station listed without a name
    work = tmp_path / "monitoring"
    shutil.copytree(MON, work)
    shutil.copy(work / "stations" / "stations.yml.example", work / "stations" / "line-1.yml")
    (work / "stations" / "unnamed.yml").write_text('- targets: ["10.9.9.9:9108"]\n  labels: {line: line-9}\n')
    res = _promtool("check", "config", "prometheus.yml", cwd=work)
    assert res.returncode == 0 and "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr
    # file SD answers at once; the default --timeout (30 s) is how long promtool waits for more
    sd = _promtool("check", "service-discovery", "--timeout=2s", "prometheus.yml", "edgekit", cwd=work)
    assert sd.returncode == 0, sd.stderr
    labels = sorted((t["labels"]["line"], t["labels"]["station"], t["labels"]["instance"]) for t in json.loads(sd.stdout))
    assert labels == [("line-1", "line-1-infeed", "10.20.1.11:9108"), ("line-1", "line-1-outfeed", "10.20.1.12:9108"),
                      ("line-2", "line-2-infeed", "10.20.2.11:9108"), ("line-9", "10.9.9.9:9108", "10.9.9.9:9108")]
    # a broken targets file is what promtool rejects
    (work / "stations" / "broken.yml").write_text("- targets: 5\n")
    assert _promtool("check", "config", "prometheus.yml", cwd=work).returncode == 1


@needs_promtool
def test_alert_rules_check_and_unit_tests() -> None:
    res = _promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0 and f"SUCCESS: {len(_rules())} rules found" in res.stdout, res.stdout + res.stderr
    res = _promtool("test", "rules", *RULE_TESTS)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert {"EdgekitStationDown", "EdgekitHeartbeatLost", "EdgekitFailsafeRateHigh", "EdgekitRejectRateDrift",
            "EdgekitCameraReconnects", "EdgekitArchiveDiskShort", "EdgekitBundleMismatch"} <= alerts
    tests = [t for f in RULE_TESTS for t in yaml.safe_load((MON / f).read_text())["tests"]]
    fired = {a["alertname"] for t in tests for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert fired == alerts


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each dashboard expression as a recording rule."""
    exprs = [_concrete(e) for e in _dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(rules))
    res = _promtool("check", "rules", "dash.yml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    d = _dashboard()
    assert d["uid"] == "edgekit-fleet" and len({p["id"] for p in d["panels"]}) == len(d["panels"])
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for want in ("throughput", "reject", "review", "fail-safe", "latency p99", "placement error", "timer jitter"):
        assert want in titles, want


def test_selector_parser() -> None:
    got = list(_selectors('sum by (line, station) (rate(edgekit_decisions_total{kind="reject",line=~"a|b"}[5m])) '
                          '/ station:edgekit_decisions:rate5m and up{job="edgekit"} == 0'))
    assert got == [("edgekit_decisions_total", {"kind", "line"}), ("station:edgekit_decisions:rate5m", set()),
                   ("up", {"job"})]


# ----------------------------------------------------------------------------- a running daemon
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _event(proc: subprocess.Popen[str], want: str, timeout_s: float = 60.0) -> dict[str, Any]:
    assert proc.stdout is not None
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        if line.startswith("{") and json.loads(line)["event"] == want:
            return json.loads(line)
    raise AssertionError(f"daemon: no {want!r} event")


def _get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=10).read().decode()


@pytest.fixture(scope="module")
def sim_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``edgekit run`` on a looping folder of frames (intensity bundle: the score is the mean
    intensity; the darkest level scores NaN and fails safe), fake GPIO, archive on, metrics on
    a free port. Yields the port, the started event and the first /metrics scrape."""
    import cv2
    import numpy as np

    from edgekit.sim.bundles import write_intensity_bundle

    tmp = tmp_path_factory.mktemp("station")
    bundle = write_intensity_bundle(tmp / "bundle", size=32, nan_below=0.05)
    (tmp / "frames").mkdir()
    for i, level in enumerate([5, 20, 200, 115, 240, 60]):  # score level/255: accept < 0.4 <= review < 0.5 <= reject
        cv2.imwrite(str(tmp / "frames" / f"f{i:02d}.png"), np.full((40, 56, 3), level, np.uint8))
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "source": {"type": "folder", "path": str(tmp / "frames"), "rate_hz": 25, "loop": True},
        "outputs": [{"type": "fake_gpio", "chip": f"mon-{os.getpid()}"}],
        "decision": {"deadline_ms": 300},
        "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
        "events": {"path": str(tmp / "ev.db")},
        "archive": {"enabled": True, "dir": str(tmp / "archive"), "quota_mb": 5},
        "metrics": {"enabled": True, "port": 0},
        "log": {"format": "json", "decisions": True},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        started = _event(proc, "started")
        port = started["metrics_port"]
        for _ in range(12):  # every level once or twice, the NaN frame among them
            _event(proc, "decision")
        yield {"port": port, "started": started, "scrape": _get(f"http://127.0.0.1:{port}/metrics")}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _exported(text: str) -> dict[str, set[str]]:
    """Sample name → label names, from the exposition text with prometheus-client's parser. A
    labelled family with no child yet (no fail-safe so far...) has no sample but is declared:
    its sample names are derived from its type."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        names = {"counter": [f"{fam.name}_total"], "histogram": [f"{fam.name}_bucket", f"{fam.name}_sum", f"{fam.name}_count"],
                 "summary": [f"{fam.name}_sum", f"{fam.name}_count", fam.name]}.get(fam.type, [fam.name])
        for n in names:
            out.setdefault(n, set())
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_every_expression_names_metrics_the_daemon_exports(sim_station: dict[str, Any]) -> None:
    exported = _exported(sim_station["scrape"])
    recorded = {r["record"] for r in _rules() if "record" in r}
    missing, bad_labels = [], []
    for expr in _all_exprs():
        for name, labels in _selectors(expr):
            if name in recorded or name == "up":
                continue
            if name not in exported:
                missing.append(f"{name} (in {expr.strip()[:80]})")
            elif exported[name] and not labels <= exported[name] | TARGET_LABELS:
                bad_labels.append(f"{name}{{{','.join(sorted(labels - exported[name] - TARGET_LABELS))}}}")
    assert not missing, missing
    assert not bad_labels, bad_labels
    # the fleet metrics this directory relies on
    started = sim_station["started"]
    assert f'edgekit_bundle_info{{bundle_id="{started["bundle_id"]}",model_id="{started["model_id"]}"}} 1.0' in sim_station["scrape"]
    assert exported["edgekit_archive_quota_bytes"] == set() and "edgekit_archive_quota_bytes 5.24288e+06" in sim_station["scrape"]
    assert exported["edgekit_failsafe_total"] == {"reason"}  # the NaN frame failed safe


@needs_promtool
def test_daemon_exposition_passes_promtool_lint(sim_station: dict[str, Any]) -> None:
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=sim_station["scrape"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package prometheus; .ci/run installs it)")
def test_prometheus_scrapes_the_station_and_evaluates_every_expression(tmp_path: Path, sim_station: dict[str, Any]) -> None:
    """The shipped config and rules in a real Prometheus (1 s scrape and rule interval instead of
    5 s / 15 s) scraping the simulated station through file_sd: every alert and dashboard
    expression evaluates without error, and the main ones have the station's data."""
    work = tmp_path / "monitoring"
    shutil.copytree(MON, work)
    cfg = yaml.safe_load((work / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["scrape_configs"][0].update(scrape_interval="1s", scrape_timeout="1s")
    cfg.pop("alerting")  # no Alertmanager here
    (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    (work / "stations" / "sim.yml").write_text(yaml.safe_dump(
        [{"targets": [f"127.0.0.1:{sim_station['port']}"], "labels": {"line": "sim-line", "station": "sim-1"}}]))
    port = _free_port()
    prom = subprocess.Popen([str(PROMETHEUS), "--config.file=prometheus.yml", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        doc = json.loads(_get(f"{api}/query?{urllib.parse.urlencode({'query': expr})}"))
        assert doc["status"] == "success", (expr, doc)
        return doc["data"]["result"]

    try:
        deadline = time.monotonic() + 60  # hang guard; a second or two of scrapes suffices
        while True:
            try:
                if query("station:edgekit_decisions:rate5m > 0"):
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline and prom.poll() is None, "Prometheus got no rate from the station"
            time.sleep(0.5)
        for r in _rules():
            query(r["expr"])
        empty = [e for e in _dashboard_exprs() if not query(_concrete(e, "sim-line", "sim-1"))]
        # series that only exist after an event this short run does not have
        allowed = ("camera_reconnects", "frames_missed", "output_errors", "late_pulses", "bundle_swaps",
                   "placement_error", "timer_jitter", "output_value")
        assert all(any(a in e for a in allowed) for e in empty), empty
        up = query('up{job="edgekit"}')
        assert [(s["metric"]["line"], s["metric"]["station"], s["value"][1]) for s in up] == [("sim-line", "sim-1", "1")]
        info = query('edgekit_bundle_info{station="sim-1"}')
        assert [s["metric"]["bundle_id"] for s in info] == [sim_station["started"]["bundle_id"]]
    finally:
        prom.terminate()
        prom.communicate(timeout=30)


def test_bundle_info_names_one_bundle_and_archive_gauges_read_at_scrape(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from edgekit.runtime.archive import Archive
    from edgekit.runtime.metrics import Metrics

    m = Metrics()
    m.set_bundle("fabric-0041", "fabric-0041:int8")
    m.set_bundle("fabric-0042", "fabric-0042:int8")  # a hot swap replaces the series
    snap = m.snapshot()
    assert [k for k in snap if k.startswith("edgekit_bundle_info")] == [
        "edgekit_bundle_info{bundle_id=fabric-0042,model_id=fabric-0042:int8}"]
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "old.jpg").write_bytes(b"x" * 1234)  # left by an earlier run
    arch = Archive(SimpleNamespace(dir=str(tmp_path / "arch"), quota_mb=1.0, queue=4, format="jpg", heatmap=False))
    arch.open()
    try:
        m.watch_archive(arch)
        snap = m.snapshot()
        assert snap["edgekit_archive_bytes"] == 1234.0 and snap["edgekit_archive_quota_bytes"] == 1024 * 1024
        assert snap["edgekit_archive_disk_free_bytes"] == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.01)
        shutil.rmtree(tmp_path / "arch")
        assert math.isnan(m.snapshot()["edgekit_archive_disk_free_bytes"])  # folder gone: NaN, the scrape still works
    finally:
        arch.close()
