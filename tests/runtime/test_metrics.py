"""Prometheus metrics as a scraper sees them: no ``*_created`` series, every counter's label sets
exported as 0 before their first event, ``edgekit_build_info``, missed PLC acknowledgements
counted apart from connection errors, GET/HEAD/404/405 on the endpoint, and a second daemon on
a metrics port in use refusing to start with one line. promtool (when installed) lints the
scrape."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from rt_helpers import PlcServer, write_levels

from edgekit import __version__
from edgekit.config.run import parse_run_config
from edgekit.errors import ConfigError
from edgekit.runtime import lineproc
from edgekit.runtime.daemon import Daemon
from edgekit.runtime.metrics import FAILSAFE_REASONS, LATE_CAUSES, Metrics, MetricsServer
from edgekit.runtime.outputs.modbus_server import FAILSAFE_CODES

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")


def _promtool_lint(text: str) -> None:
    if PROMTOOL is None:
        return
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def _series(text: str) -> dict[str, float]:
    out = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, value = ln.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_label_vocabularies_match_the_code() -> None:
    assert LATE_CAUSES == lineproc._LATE_CAUSES
    assert set(FAILSAFE_CODES) <= set(FAILSAFE_REASONS)  # every reason the PLC map knows is pre-created


def test_registry_exports_zeros_info_and_no_created_series() -> None:
    m = Metrics()
    m.precreate(["cam0"], ["gpio", "plc"], {"reject", "heartbeat", "ready"}, ["plc"])
    m.set_build("b-1", "int8", "onnxruntime")
    text = m.render().decode()
    assert "_created" not in text
    s = _series(text)
    for reason in FAILSAFE_REASONS:
        assert s[f'edgekit_failsafe_total{{reason="{reason}"}}'] == 0.0
    for name in ("edgekit_frames_total", "edgekit_camera_reconnects_total", "edgekit_frames_missed_total"):
        assert s[f'{name}{{source="cam0"}}'] == 0.0
    assert s['edgekit_output_errors_total{output="gpio"}'] == s['edgekit_output_errors_total{output="plc"}'] == 0.0
    assert s['edgekit_plc_acks_missed_total{output="plc"}'] == 0.0
    assert 'edgekit_plc_acks_missed_total{output="gpio"}' not in s  # only Modbus client outputs get acks
    assert {k for k in s if k.startswith("edgekit_late_pulses_total")} == {
        f'edgekit_late_pulses_total{{cause="{c}",role="reject"}}' for c in LATE_CAUSES}  # no review line here
    assert s['edgekit_pulses_total{role="reject"}'] == 0.0 and 'edgekit_pulses_total{role="review"}' not in s
    assert s['edgekit_bundle_swaps_total{result="ok"}'] == s['edgekit_bundle_swaps_total{result="refused"}'] == 0.0
    assert {k: v for k, v in s.items() if k.startswith("edgekit_build_info")} == {
        f'edgekit_build_info{{backend="onnxruntime",bundle_id="b-1",edgekit_version="{__version__}",'
        'precision="int8"}': 1.0}
    m.set_build("b-2", "fp32", "onnxruntime")  # a swap replaces the one series
    assert [k for k in _series(m.render().decode()) if k.startswith("edgekit_build_info")] == [
        f'edgekit_build_info{{backend="onnxruntime",bundle_id="b-2",edgekit_version="{__version__}",precision="fp32"}}']
    _promtool_lint(text)


def _request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_endpoint_get_head_404_405() -> None:
    state = {"healthy": True}
    srv = MetricsServer(Metrics(), lambda: dict(state), "127.0.0.1", 0)
    port = srv.start()
    try:
        code, h, body = _request(port, "GET", "/metrics")
        assert code == 200 and h["content-type"].startswith("text/plain; version=") and b"edgekit_decisions_total" in body
        assert int(h["content-length"]) == len(body)
        code, hh, head_body = _request(port, "HEAD", "/metrics")
        assert code == 200 and head_body == b"" and hh["content-type"] == h["content-type"]
        assert int(hh["content-length"]) > 0
        assert _request(port, "GET", "/metrics?name[]=edgekit_frames_total")[0] == 200  # scrapers add queries
        code, _, body = _request(port, "GET", "/healthz")
        assert code == 200 and json.loads(body) == {"healthy": True}
        state["healthy"] = False
        assert _request(port, "GET", "/healthz")[0] == 503 and _request(port, "HEAD", "/healthz")[:1] == (503,)
        for path in ("/", "/metricsfoo", "/metrics/x", "/healthzz", "/favicon.ico"):
            code, _, body = _request(port, "GET", path)
            assert code == 404 and b"/metrics" in body, path
            assert _request(port, "HEAD", path)[0] == 404
        code, h, _ = _request(port, "POST", "/metrics")
        assert code == 405 and h["allow"] == "GET, HEAD"
    finally:
        srv.stop()


def test_port_in_use_is_refused_with_one_line() -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        srv = MetricsServer(Metrics(), dict, "127.0.0.1", port)
        with pytest.raises(ConfigError, match=f"metrics.port {port} on 127.0.0.1 is already in use") as e:
            srv.bind()
        assert "\n" not in str(e.value)
        srv.stop()  # never served: stop returns at once
    finally:
        held.close()


def _config(tmp_path: Path, bundle: Path, **extra: object) -> dict:
    write_levels(tmp_path / "frames", [20, 200])
    return {
        "bundle": str(bundle),
        "source": {"type": "folder", "path": str(tmp_path / "frames"), "rate_hz": 2},
        "outputs": [{"type": "fake_gpio", "chip": f"metrics-{os.getpid()}-{time.monotonic_ns()}"}],
        "decision": {"deadline_ms": 300},
        "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
        "events": {"path": str(tmp_path / "ev.db")},
        "metrics": {"enabled": True, "port": 0},
        **extra,
    }


def test_second_daemon_on_a_port_in_use_refuses_to_start(tmp_path: Path, intensity_bundle: Path) -> None:
    held = socket.socket()  # the first daemon's endpoint
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    cfg = _config(tmp_path, intensity_bundle, metrics={"enabled": True, "port": port})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    try:
        r = subprocess.run([sys.executable, "-m", "edgekit.cli", "run", str(tmp_path / "run.yaml")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    finally:
        held.close()
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"error: metrics.port {port} on 127.0.0.1 is already in use (another edgekit "
                                     "daemon on this station?); stop it, or set another metrics.port in the config"]
    assert '"started"' not in r.stdout  # nothing ran
    assert not (tmp_path / "ev.db").exists()  # refused before the event log (or any output) was opened


def test_running_daemon_exports_zeros_and_build_info(tmp_path: Path, intensity_bundle: Path) -> None:
    d = Daemon(parse_run_config(_config(tmp_path, intensity_bundle)))
    d.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        d.request_stop()
        d.wait()
    s = _series(text)
    assert "_created" not in text
    cam, out = d.camera.name, d.output_specs[0].name
    for name in ("edgekit_camera_reconnects_total", "edgekit_frames_missed_total"):
        assert s[f'{name}{{source="{cam}"}}'] == 0.0
    assert s[f'edgekit_output_errors_total{{output="{out}"}}'] == 0.0
    assert s['edgekit_bundle_swaps_total{result="refused"}'] == 0.0
    assert s['edgekit_failsafe_total{reason="decode_error"}'] == 0.0
    assert all(f'edgekit_late_pulses_total{{cause="{c}",role="reject"}}' in s for c in LATE_CAUSES)
    bid = d.pipeline.bundle.bundle_id
    assert s[f'edgekit_build_info{{backend="onnxruntime",bundle_id="{bid}",edgekit_version="{__version__}",'
             'precision="fp32"}'] == 1.0
    _promtool_lint(text)


def test_missed_plc_acks_are_not_connection_errors(tmp_path: Path, intensity_bundle: Path) -> None:
    plc = PlcServer().start()  # a PLC that is connected but never writes ACK_SEQ
    try:
        cfg = _config(tmp_path, intensity_bundle, health={"heartbeat_period_ms": 100})
        cfg["outputs"].append({"type": "modbus", "name": "plc", "host": "127.0.0.1", "port": plc.port,
                               "ack_timeout_ms": 50, "plc_heartbeat_timeout_ms": 600000})
        d = Daemon(parse_run_config(cfg))
        d.start()
        try:
            deadline = time.monotonic() + 30
            while d.summary()["plc_acks_missed"].get("plc", 0) < 1:
                assert time.monotonic() < deadline, d.summary()
                time.sleep(0.05)
            text = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read().decode()
        finally:
            d.request_stop()
            d.wait()
    finally:
        plc.stop()
    s = _series(text)
    assert s['edgekit_plc_acks_missed_total{output="plc"}'] >= 1.0
    assert s['edgekit_output_errors_total{output="plc"}'] == 0.0  # connected all along: no connection error
    assert d.summary()["output_errors"].get("plc", 0) == 0
    assert re.search(r'edgekit_output_errors_total\{output="fake_gpio"\} 0\.0', text)
