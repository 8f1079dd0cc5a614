"""Operations around a running daemon: sd_notify over a real unix datagram socket, Prometheus
/metrics and /healthz on 127.0.0.1, SIGHUP bundle hot-swap (a bad bundle is refused and the old
one keeps running), the reject-frame archive under its disk quota."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from rt_helpers import write_levels

from edgekit.runtime.archive import Archive
from edgekit.runtime.events import read_events
from edgekit.runtime.sdnotify import SdNotifier
from edgekit.sim.bundles import write_intensity_bundle

ROOT = Path(__file__).resolve().parents[2]


def test_sdnotify_sends_datagrams(tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(2)
    n = SdNotifier(path, watchdog_usec=2_000_000)
    assert n.ready("inspecting") and n.watchdog()
    assert srv.recv(1024) == b"READY=1\nSTATUS=inspecting"
    assert srv.recv(1024) == b"WATCHDOG=1"
    assert n.watchdog_interval_s() == 2.0
    assert not SdNotifier(None).ready()  # no NOTIFY_SOCKET: silently disabled
    n.close()
    srv.close()


def _events(proc: subprocess.Popen, want: str, timeout_s: float = 60.0, **match: object) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith("{"):
            ev = json.loads(line)
            if ev["event"] == want and all(ev.get(k) == v for k, v in match.items()):
                return ev
    raise AssertionError(f"no {want!r} event within {timeout_s} s")


def test_running_daemon_notify_metrics_health_hot_swap(tmp_path) -> None:
    bundle = write_intensity_bundle(tmp_path / "bundle", size=32)
    write_levels(tmp_path / "frames", [20, 200, 130, 240])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "bundle": str(bundle),
        "source": {"type": "folder", "path": str(tmp_path / "frames"), "rate_hz": 25, "loop": True},
        "outputs": [{"type": "fake_gpio", "chip": f"ops-{os.getpid()}"}],
        "decision": {"deadline_ms": 300},
        "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
        "events": {"path": str(tmp_path / "ev.db")},
        "metrics": {"enabled": True, "port": 0},
        "log": {"format": "json", "decisions": True},
    }))
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(20)
    env = dict(os.environ, PYTHONUNBUFFERED="1", NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    try:
        started = _events(proc, "started")
        assert srv.recv(1024).startswith(b"READY=1")
        assert srv.recv(1024) == b"WATCHDOG=1"
        _events(proc, "decision", kind="reject")  # the metric exists once a reject was decided
        base = f"http://127.0.0.1:{started['metrics_port']}"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'edgekit_decisions_total{kind="reject"}' in metrics
        assert 'edgekit_stage_latency_seconds_bucket{le="0.005",stage="infer"}' in metrics
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
        assert health["healthy"] is True and health["frames"] > 0
        old_id = started["bundle_id"]

        # a tampered bundle at the same path is refused; the old model keeps deciding
        (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes() + b"x")
        proc.send_signal(signal.SIGHUP)
        refused = _events(proc, "bundle_refused")
        assert "sha256" in refused["error"]
        d = _events(proc, "decision")
        rows = read_events(tmp_path / "ev.db")
        assert rows[-1]["model_id"] == f"{old_id}:fp32"

        # a good new bundle is swapped in; later decisions use it
        shutil.rmtree(bundle)
        write_intensity_bundle(bundle, size=32)
        proc.send_signal(signal.SIGHUP)
        swapped = _events(proc, "bundle_swapped")
        assert swapped["old_bundle_id"] == old_id and swapped["bundle_id"] != old_id
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = _events(proc, "decision")
            rows = read_events(tmp_path / "ev.db")
            if rows[-1]["model_id"] == f"{swapped['bundle_id']}:fp32":
                break
        else:
            raise AssertionError("no decision from the new bundle")
        assert d["part_id"] >= 0
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'edgekit_bundle_swaps_total{result="refused"} 1.0' in metrics
        assert 'edgekit_bundle_swaps_total{result="ok"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        srv.close()
    assert proc.returncode == 0
    try:
        urllib.request.urlopen(base + "/healthz", timeout=2)
        raise AssertionError("metrics endpoint still up after shutdown")
    except (urllib.error.URLError, ConnectionError):
        pass


def test_archive_respects_quota_oldest_first(tmp_path, intensity_bundle) -> None:
    import cv2
    import numpy as np

    from edgekit.runtime.daemon import replay

    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    for i in range(30):  # bright noise: rejected, and incompressible enough to fill the quota
        cv2.imwrite(str(tmp_path / "frames" / f"f{i:03d}.png"), rng.integers(180, 256, (64, 64, 3), dtype=np.uint8))
    s = replay(intensity_bundle, tmp_path / "frames", out_dir=tmp_path / "out", rate_hz=100,
               overrides={"archive": {"enabled": True, "dir": str(tmp_path / "arch"), "quota_mb": 0.02,
                                      "format": "png", "heatmap": True},
                          "decision.deadline_ms": 500, "scheduler.delay_ms": 550})
    assert s["decisions"] == {"reject": 30}
    files = sorted((tmp_path / "arch").iterdir())
    total = sum(f.stat().st_size for f in files)
    assert 0 < total <= 0.02 * 1024 * 1024
    assert any(f.name.endswith("_heat.png") for f in files)
    # oldest deleted first: what is left are the newest parts
    pids = sorted({int(f.name.split("_p")[1].split("_")[0]) for f in files})
    assert pids[-1] == 29 and pids[0] > 0

    # a restarted archive accounts for what is on disk and stays under the quota
    from edgekit.config.run import ArchiveConfig

    a = Archive(ArchiveConfig(enabled=True, dir=str(tmp_path / "arch"), quota_mb=0.01))
    a.open()
    a.close()
    assert sum(f.stat().st_size for f in (tmp_path / "arch").iterdir()) <= 0.01 * 1024 * 1024


def test_watched_bundle_path_reloads_without_signal(tmp_path) -> None:
    bundle = write_intensity_bundle(tmp_path / "bundle", size=32)
    write_levels(tmp_path / "frames", [20, 200])
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "bundle": str(bundle), "watch_bundle": True,
        "source": {"type": "folder", "path": str(tmp_path / "frames"), "rate_hz": 20, "loop": True},
        "outputs": [{"type": "fake_gpio", "chip": f"watch-{os.getpid()}"}],
        "decision": {"deadline_ms": 300}, "scheduler": {"mode": "time", "delay_ms": 350, "pulse_ms": 5},
        "events": {"path": str(tmp_path / "ev.db")}, "metrics": {"enabled": False},
        "log": {"format": "json", "decisions": True},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        started = _events(proc, "started")
        _events(proc, "decision")
        time.sleep(0.05)
        shutil.rmtree(bundle)
        write_intensity_bundle(bundle, size=32)  # an installer dropping a new bundle in place
        swapped = _events(proc, "bundle_swapped")
        assert swapped["old_bundle_id"] == started["bundle_id"] != swapped["bundle_id"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


class _SlowReloadDaemon:
    """The Daemon surface the supervisor uses; ``reload_bundle`` blocks like a long engine
    deserialisation until the test releases it (the old pipeline stays healthy meanwhile)."""

    def __init__(self) -> None:
        import threading

        self._source_done, self._stop_capture = threading.Event(), threading.Event()
        self.release, self.started = threading.Event(), threading.Event()

    def health(self) -> dict:
        return {"healthy": True}

    def reload_bundle(self) -> bool:
        self.started.set()
        assert self.release.wait(10)
        return True


def test_reload_longer_than_the_watchdog_keeps_pinging_then_ready(tmp_path) -> None:
    """WatchdogSec=10 s, a reload taking 25 s (virtual): the supervisor pings every 5 s through it,
    sends RELOADING=1 with MONOTONIC_USEC first and READY=1 after."""
    from edgekit.runtime.daemon import Supervisor

    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.setblocking(False)
    t = [0.0]
    d = _SlowReloadDaemon()
    sup = Supervisor(d, SdNotifier(path, watchdog_usec=10_000_000), clock=lambda: t[0])

    def msgs() -> list[str]:
        out = []
        while True:
            try:
                out.append(srv.recv(1024).decode())
            except BlockingIOError:
                return out

    assert sup.step() and msgs() == ["WATCHDOG=1"]
    sup.request_reload("SIGHUP")
    t[0] += 1.0
    assert sup.step()
    first = msgs()
    assert first[0].startswith("RELOADING=1\nMONOTONIC_USEC=") and int(first[0].split("=")[-1]) > 0
    assert d.started.wait(5)
    seen = first[1:]
    for _ in range(24):  # 24 more virtual seconds, the reload still running
        t[0] += 1.0
        assert sup.step() and sup.reloading()
        seen += msgs()
    assert seen.count("WATCHDOG=1") == 5 and not any(m.startswith("READY") for m in seen)
    d.release.set()
    sup._reloader.join(5)
    t[0] += 1.0
    assert sup.step()
    assert msgs()[0] == "READY=1\nSTATUS=reloaded (SIGHUP)" and sup.reloads == [("SIGHUP", True)]
    d._stop_capture.set()
    assert not sup.step()
    srv.close()
