"""The operator page: a small web page served by the daemon (``ui:`` block of the deploy config).

Importing this package costs nothing at the line: the server (Starlette + uvicorn, the ``[ui]``
extra) is imported only when the page is enabled. The page reads the event log and a metrics
snapshot in its own threads; it never touches the per-frame path."""

from __future__ import annotations

from typing import Any


def start_ui(daemon: Any) -> tuple[Any, str | None]:
    """Start the operator page of ``daemon`` (its ``cfg.ui``); returns ``(server, None)`` or
    ``(None, note)`` when it cannot run (extra not installed, address in use). The daemon keeps
    running either way."""
    try:
        from edgekit.ui.server import UiServer
    except ImportError as exc:
        return None, (f"operator page disabled: {exc.name or exc} is not installed; "
                      "pip install 'edgekit[ui]' (or set ui.enabled: false)")
    server = UiServer.for_daemon(daemon)
    try:
        server.start()
    except OSError as exc:
        return None, (f"operator page disabled: cannot listen on {daemon.cfg.ui.host}:{daemon.cfg.ui.port} "
                      f"({exc.strerror or exc}); set ui.port to a free port")
    return server, None
