"""systemd notify protocol (``Type=notify`` + ``WatchdogSec=``): datagrams like ``READY=1`` and
``WATCHDOG=1`` sent to the unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the
abstract namespace). Without the variable every call is a no-op, so the daemon runs the same
under systemd, in a terminal and in tests."""

from __future__ import annotations

import os
import socket


class SdNotifier:
    """Tiny sd_notify client.

    Args:
        address: socket path from NOTIFY_SOCKET, or None (disabled).
        watchdog_usec: WATCHDOG_USEC from systemd (ping at least every half of it).
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls) -> SdNotifier:
        addr = os.environ.get("NOTIFY_SOCKET") or None
        wd = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        usec = int(wd) if wd and wd.isdigit() and (not pid or pid == str(os.getpid())) else None
        return cls(addr, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval_s(self) -> float | None:
        return self.watchdog_usec / 1e6 if self.watchdog_usec else None

    def notify(self, state: str) -> bool:
        """Send one state string (``KEY=VALUE`` lines); False if disabled or the send failed."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode("utf-8"), addr)
            return True
        except OSError:
            return False  # systemd gone (e.g. during shutdown); never fatal for the line

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
