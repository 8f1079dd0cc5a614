"""The page server on loopback (real uvicorn + Starlette): assets, state, SSE push, archive files,
token-only actions and viewing auth off loopback."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the [ui] extra (starlette, uvicorn) is not installed")

from edgekit.ui.config import UiConfig  # noqa: E402
from edgekit.ui.server import UiServer  # noqa: E402


class State:
    """The page state the server pushes (what LineView builds for a daemon)."""

    def __init__(self) -> None:
        self.n = 0
        self.final = False

    def __call__(self, final: bool = False) -> dict[str, Any]:
        self.final = self.final or final
        return {"t": 0.0, "counts": {"parts": self.n}, "final": self.final}


class Controls:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, action: str, source: str) -> dict[str, Any]:
        self.calls.append((action, source))
        return {"ok": True, "action": action, "source": source, "message": "done", "enabled": action != "disable"}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, method="POST", headers=headers or {}, data=b"")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture()
def served(tmp_path: Path):
    state, controls = State(), Controls()
    arch = tmp_path / "archive"
    arch.mkdir()
    (arch / "1000_cam_p7_reject.jpg").write_bytes(b"\xff\xd8jpeg")
    (tmp_path / "secret.jpg").write_bytes(b"no")
    srv = UiServer(UiConfig(enabled=True, port=0, token="t0k", refresh_ms=50), state, controls, arch)
    srv.start()
    yield srv, state, controls, f"http://127.0.0.1:{srv.port}"
    srv.stop(flush_s=0.2)


def test_page_assets_and_state(served) -> None:
    srv, state, _, base = served
    code, body, headers = get(base + "/")
    assert code == 200 and b'<script src="/static/app.js">' in body and b"http" not in body.split(b"<body>")[0]
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        code, body, headers = get(f"{base}/static/{name}")
        assert code == 200 and headers["content-type"].startswith(ctype) and len(body) > 500
    assert get(base + "/static/../config.py")[0] == 404
    assert json.loads(get(base + "/api/state")[1]) == {"counts": {"parts": 0}, "final": False}
    assert srv.url == f"http://127.0.0.1:{srv.port}/"


def test_archive_files_only_by_archive_name(served) -> None:
    _, _, _, base = served
    code, body, _ = get(base + "/archive/1000_cam_p7_reject.jpg")
    assert code == 200 and body == b"\xff\xd8jpeg"
    assert get(base + "/archive/..%2Fsecret.jpg")[0] == 404
    assert get(base + "/archive/secret.jpg")[0] == 404
    assert get(base + "/archive/1001_cam_p8_reject.jpg")[0] == 404  # deleted by the quota


def test_sse_pushes_each_new_state_and_the_final_one(served) -> None:
    srv, state, _, base = served
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/api/stream")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    seen: list[dict[str, Any]] = []
    got = threading.Event()

    def read() -> None:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                got.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert got.wait(5) and seen[0]["counts"]["parts"] == 0
    got.clear()
    state.n = 3
    assert got.wait(5) and seen[-1]["counts"]["parts"] == 3
    got.clear()
    state.n = 4  # changed right before shutdown: stop() sends it before closing the stream
    srv.stop(flush_s=2.0)
    t.join(5)
    assert seen[-1] == {"counts": {"parts": 4}, "final": True}
    conn.close()


def test_actions_need_the_token(served) -> None:
    _, _, controls, base = served
    assert post(base + "/api/control/disable")[0] == 403
    code, body = post(base + "/api/control/disable", {"X-Edgekit-Token": "wrong"})
    assert code == 403 and "token" in body["message"] and controls.calls == []
    code, body = post(base + "/api/control/disable", {"X-Edgekit-Token": "t0k"})
    assert code == 200 and body["ok"] and body["enabled"] is False
    code, body = post(base + "/api/control/reset_fault", {"Authorization": "Bearer t0k"})
    assert code == 200
    assert controls.calls == [("disable", "operator page 127.0.0.1"), ("reset_fault", "operator page 127.0.0.1")]
    code, body = post(base + "/api/control/trigger", {"X-Edgekit-Token": "t0k"})
    assert code == 404 and "reset_fault, enable, disable" in body["message"]
    assert get(base + "/api/control/disable")[0] == 405  # GET never changes state


def test_no_token_configured_means_no_actions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKIT_UI_TOKEN", raising=False)
    controls = Controls()
    srv = UiServer(UiConfig(enabled=True, port=0), State(), controls)
    srv.start()
    try:
        code, body = post(f"http://127.0.0.1:{srv.port}/api/control/enable", {"X-Edgekit-Token": ""})
        assert code == 403 and "EDGEKIT_UI_TOKEN" in body["message"] and controls.calls == []
    finally:
        srv.stop(flush_s=0.1)


def test_off_loopback_viewing_needs_token_or_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_UI_PASSWORD", "pw")
    monkeypatch.setenv("EDGEKIT_UI_TOKEN", "envtok")  # the token may come from the environment
    cfg = UiConfig(enabled=True, host="0.0.0.0", port=0, user="op")
    srv = UiServer(cfg, State(), Controls())
    srv.start()
    base = f"http://127.0.0.1:{srv.port}"
    try:
        code, _, headers = get(base + "/api/state")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        basic = "Basic " + base64.b64encode(b"op:pw").decode()
        assert get(base + "/api/state", {"Authorization": basic})[0] == 200
        assert get(base + "/api/state", {"Authorization": "Basic " + base64.b64encode(b"op:no").decode()})[0] == 401
        assert get(base + "/api/state", {"Authorization": "Bearer envtok"})[0] == 200
        code, _, headers = get(base + "/?token=envtok")
        assert code == 200 and "edgekit_ui_token=envtok" in headers["set-cookie"]
        assert get(base + "/api/state", {"Cookie": "edgekit_ui_token=envtok"})[0] == 200
    finally:
        srv.stop(flush_s=0.1)


def test_config_refuses_an_open_page_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.config.run import parse_run_config
    from edgekit.errors import ConfigError

    monkeypatch.delenv("EDGEKIT_UI_TOKEN", raising=False)
    base = {"bundle": "/b", "source": {"type": "folder", "path": "/f"}}
    with pytest.raises(ConfigError) as e:
        parse_run_config({**base, "ui": {"enabled": True, "host": "192.168.1.20"}}, "station.yaml")
    assert str(e.value).count("\n") == 0 and "station.yaml: ui" in str(e.value) and "EDGEKIT_UI_TOKEN" in str(e.value)
    cfg = parse_run_config({**base, "ui": {"enabled": True, "host": "192.168.1.20", "token": "x"}})
    assert cfg.model_dump(mode="json")["ui"]["token"] == "**********"  # never in the event log or --check
