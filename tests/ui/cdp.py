"""Headless Chromium driven over the Chrome DevTools Protocol (websocket-client), for the
operator-page browser tests. Uses the system browser (Debian ``chromium``); downloads nothing."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


class Browser:
    """One headless Chromium with one page; ``js()`` evaluates in it, ``screenshot()`` saves a PNG."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1050) -> None:
        import websocket  # websocket-client

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium not found")
        args = [exe, "--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-dev-shm-usage", "--disable-extensions", "--remote-debugging-port=0",
                f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # root (CI containers): Chromium refuses its sandbox
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        ws_url = None
        end = time.monotonic() + 60
        assert self.proc.stderr is not None
        while time.monotonic() < end:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            self.log.append(line.rstrip())
            if "DevTools listening on " in line:
                ws_url = line.split("DevTools listening on ", 1)[1].strip()
                break
        if ws_url is None:
            self.close()
            raise RuntimeError("chromium did not start: " + " | ".join(self.log[-5:]))
        threading.Thread(target=self._drain, daemon=True).start()  # a full stderr pipe would stall it
        port = ws_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"js error in {expression[:60]!r}: {r['exceptionDetails'].get('exception', r)}")
        return r["result"].get("value")

    def goto(self, url: str, timeout_s: float = 20.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href.startsWith(" + json.dumps(url) + ")",
                      timeout_s)

    def wait_for(self, expression: str, timeout_s: float = 10.0, poll_s: float = 0.05) -> Any:
        end = time.monotonic() + timeout_s
        while True:
            v = self.js(expression)
            if v:
                return v
            if time.monotonic() > end:
                raise TimeoutError(f"not true within {timeout_s} s: {expression}")
            time.sleep(poll_s)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # the browser may be gone already
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
