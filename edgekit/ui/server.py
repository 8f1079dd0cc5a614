"""The operator page's HTTP server: Starlette on uvicorn (pure-Python h11, fits a Jetson), in its
own thread with its own event loop, plus one poll thread that builds the page state
(``edgekit.ui.state``) every ``ui.refresh_ms`` and pushes it to every open page over
Server-Sent Events. Nothing here runs in, or waits for, the per-frame path.

Routes: ``/`` page, ``/static/*`` its script and style (package data, no CDN), ``/api/state``
(JSON), ``/api/stream`` (SSE), ``/archive/NAME`` (archived reject images and heat maps),
``POST /api/control/{reset_fault,enable,disable}`` (token only: header ``X-Edgekit-Token`` or
``Authorization: Bearer``; applied by ``Daemon.control`` and recorded in the event log).

Access: on loopback the page is open and actions need the token. On any other address every
route needs the token (header, or once as ``/?token=...``, which sets a cookie) or basic auth
(``ui.user`` / ``ui.password``)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgekit.ui.config import UiConfig, is_loopback
from edgekit.ui.state import ARCHIVE_NAME, LineView

ACTIONS = ("reset_fault", "enable", "disable")
COOKIE = "edgekit_ui_token"
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "style.css": "text/css; charset=utf-8"}
log = logging.getLogger("edgekit.ui")


def _static(name: str) -> bytes:
    return resources.files("edgekit.ui").joinpath("static", name).read_bytes()


class UiServer:
    """Serve the page for one view.

    Args:
        cfg: the ``ui`` block.
        snapshot: builds the page state (called only in the poll thread); ``snapshot(final=True)``
            once at stop, after the daemon's last commit.
        control: ``Daemon.control(action, source) -> dict`` or None (actions refused).
        archive_dir: where archived images are, or None.
    """

    def __init__(self, cfg: UiConfig, snapshot: Callable[..., dict[str, Any]],
                 control: Callable[[str, str], dict[str, Any]] | None = None, archive_dir: Path | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.snapshot = snapshot
        self.control = control
        self.archive_dir = Path(archive_dir).resolve() if archive_dir is not None else None
        self.on_close = on_close
        self.port: int | None = None
        self._assets = {n: _static(n) for n in _STATIC}
        self._latest: tuple[int, bytes] = (0, b"{}")
        self._last_body = b""
        self._sent: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._stop_poll = threading.Event()
        self._kick = threading.Event()
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self.poll_errors = 0

    @classmethod
    def for_daemon(cls, daemon: Any) -> UiServer:
        view = LineView(daemon)
        arch = daemon.archive
        return cls(daemon.cfg.ui, view.snapshot, daemon.control, Path(arch.dir) if arch is not None else None,
                   on_close=view.close)

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        host = self.cfg.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> int:
        """Bind (OSError when the address is taken), start the server and poll threads; returns the port."""
        host = self.cfg.host
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self.cfg.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_config=None, access_log=False, lifespan="off", ws="none",
                                http="h11", timeout_graceful_shutdown=1, log_level="warning")
        self._server = uvicorn.Server(config)
        self._publish(self._safe_snapshot())
        for name, fn in (("ui", lambda: self._server.run(sockets=[sock])), ("ui-poll", self._poll_loop)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        end = time.monotonic() + 10.0
        while not self._server.started and time.monotonic() < end and self._threads[0].is_alive():
            time.sleep(0.01)
        if not self._server.started:
            self.stop(flush_s=0.0)
            raise OSError(f"the page server did not start on {host}:{self.port}")
        return self.port

    def stop(self, flush_s: float = 1.0) -> None:
        """Last state (after the daemon's final commit) to every open page, then close."""
        self._stop_poll.set()
        self._kick.set()
        if len(self._threads) > 1:
            self._threads[1].join(timeout=5.0)
        self._publish(self._safe_snapshot(final=True))
        final = self._latest[0]
        end = time.monotonic() + flush_s
        while any(v < final for v in list(self._sent.values())) and time.monotonic() < end:
            time.sleep(0.01)
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._threads:
            self._threads[0].join(timeout=5.0)
        if self.on_close is not None:
            self.on_close()

    # ------------------------------------------------------------------ state
    def _safe_snapshot(self, final: bool = False) -> dict[str, Any] | None:
        try:
            return self.snapshot(final=final) if final else self.snapshot()
        except Exception as exc:  # the page must never take the daemon down
            self.poll_errors += 1
            log.warning("operator page state failed: %r", exc)
            return None

    def _publish(self, snap: dict[str, Any] | None) -> None:
        if snap is None:
            return
        body = json.dumps({k: v for k, v in snap.items() if k != "t"}, default=str, separators=(",", ":")).encode()
        if body == self._last_body:
            return
        self._last_body = body
        self._latest = (self._latest[0] + 1, body)

    def _poll_loop(self) -> None:
        period = self.cfg.refresh_ms / 1e3
        while not self._stop_poll.is_set():
            self._publish(self._safe_snapshot())
            self._kick.wait(period)
            self._kick.clear()

    # ------------------------------------------------------------------ access
    def _token_ok(self, given: str | None) -> bool:
        token = self.cfg.resolved_token()
        return bool(token and given and hmac.compare_digest(given.encode(), token.encode()))

    @staticmethod
    def _header_token(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.headers.get("x-edgekit-token")

    def _basic_ok(self, request: Request) -> bool:
        user, password = self.cfg.user, self.cfg.resolved_password()
        auth = request.headers.get("authorization", "")
        if not user or not password or not auth.lower().startswith("basic "):
            return False
        try:
            u, _, p = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(u.encode(), user.encode()) and hmac.compare_digest(p.encode(), password.encode())

    def _viewer_denied(self, request: Request) -> Response | None:
        if is_loopback(self.cfg.host):
            return None
        if (self._token_ok(self._header_token(request)) or self._token_ok(request.cookies.get(COOKIE))
                or self._token_ok(request.query_params.get("token")) or self._basic_ok(request)):
            return None
        headers = {"WWW-Authenticate": 'Basic realm="edgekit"'} if self.cfg.user else {}
        return Response("operator page: open it as /?token=TOKEN (ui.token) or log in (ui.user)\n", 401,
                        headers=headers, media_type="text/plain")

    # ------------------------------------------------------------------ routes
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/", self._index),
            Route("/static/{name}", self._asset),
            Route("/api/state", self._state),
            Route("/api/stream", self._stream),
            Route("/archive/{name}", self._archive),
            Route("/api/control/{action}", self._control, methods=["POST"]),
        ])

    async def _index(self, request: Request) -> Response:
        denied = self._viewer_denied(request)
        if denied is not None:
            return denied
        resp = Response(self._assets["index.html"], media_type=_STATIC["index.html"],
                        headers={"Cache-Control": "no-cache"})
        q = request.query_params.get("token")
        if q and self._token_ok(q):
            resp.set_cookie(COOKIE, q, httponly=True, samesite="strict")
        return resp

    async def _asset(self, request: Request) -> Response:
        denied = self._viewer_denied(request)
        if denied is not None:
            return denied
        name = request.path_params["name"]
        if name not in self._assets or name == "index.html":
            return Response("not found\n", 404, media_type="text/plain")
        return Response(self._assets[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    async def _state(self, request: Request) -> Response:
        denied = self._viewer_denied(request)
        if denied is not None:
            return denied
        return Response(self._latest[1], media_type="application/json", headers={"Cache-Control": "no-store"})

    async def _stream(self, request: Request) -> Response:
        denied = self._viewer_denied(request)
        if denied is not None:
            return denied
        sid = next(self._ids)

        async def events() -> Any:
            last, idle = -1, 0
            try:
                yield b"retry: 1000\n\n"
                while True:
                    version, body = self._latest
                    if version != last:
                        yield b"data: " + body + b"\n\n"
                        last, idle = version, 0
                        self._sent[sid] = version
                    elif self._stopping:
                        return
                    else:
                        idle += 1
                        if idle >= 300:  # a comment every ~15 s keeps proxies from closing it
                            yield b": keep-alive\n\n"
                            idle = 0
                        await asyncio.sleep(0.05)
            finally:
                self._sent.pop(sid, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _archive(self, request: Request) -> Response:
        denied = self._viewer_denied(request)
        if denied is not None:
            return denied
        name = request.path_params["name"]
        if self.archive_dir is None or not ARCHIVE_NAME.match(name):
            return Response("not found\n", 404, media_type="text/plain")
        path = (self.archive_dir / name).resolve()
        if path.parent != self.archive_dir or not path.is_file():
            return Response("not found (deleted by the archive quota?)\n", 404, media_type="text/plain")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    async def _control(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ACTIONS:
            return JSONResponse({"ok": False, "message": f"unknown action {action!r}; use {', '.join(ACTIONS)}"}, 404)
        if self.cfg.resolved_token() is None:
            return JSONResponse({"ok": False, "message": "actions are off: set ui.token in the deploy config "
                                                         "or EDGEKIT_UI_TOKEN in the environment"}, 403)
        client = request.client.host if request.client else "?"
        if not self._token_ok(self._header_token(request)):
            log.warning("operator page: %s refused for %s (wrong or missing token)", action, client)
            return JSONResponse({"ok": False, "message": "wrong or missing token: enter the station's ui.token"}, 403)
        if self.control is None:
            return JSONResponse({"ok": False, "message": "this page has no daemon to control"}, 503)
        result = await run_in_threadpool(self.control, action, f"operator page {client}")
        self._kick.set()  # the page shows the new state at once
        return JSONResponse(result, 200 if result.get("ok") else 409)
