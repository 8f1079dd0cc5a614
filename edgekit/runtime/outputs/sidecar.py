"""Run an output plug-in in a process of its own (``process: own`` in the OPC UA and MQTT output
configs, the default there).

Why: the line process times the reject edges; every thread in it shares its GIL. An OPC UA server
(asyncua: pure-Python encoding, subscriptions) or an MQTT client with its SQLite outbox runs
Python for milliseconds at a time, and a pulse due meanwhile waits for the GIL (up to the switch
interval, 5 ms). In a child process they have a GIL of their own; the line process only hands
each call to a writer thread (``queue.put``), which pickles and sends it over a socketpair.

``IsolatedOutput`` is the line-process side: the ``Output`` interface, forwarding ``set_line``,
``publish_dict``, ``set_band``, ``set_fault``, ``reset_fault``, ``set_enabled`` and ``close``;
errors, control requests and figures come back from the child every 50 ms (``pop_errors``,
``pop_controls``, ``stats``). ``python -m edgekit.runtime.outputs.sidecar FD`` is the child: it
builds the real output (``process: line``), opens it, reports ready (or the open error), serves
the calls and closes the output when asked or when the line process is gone."""

from __future__ import annotations

import collections
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from edgekit.errors import DeviceError, EdgekitError
from edgekit.runtime.outputs.base import Output

_FORWARD = ("set_line", "publish_dict", "set_band", "set_fault", "reset_fault", "set_enabled")


class IsolatedOutput(Output):
    """An output of class ``cls`` running in a child process (see the module docstring)."""

    def __init__(self, cls: type[Output], cfg: Any, start_timeout_s: float = 60.0) -> None:
        super().__init__(cfg)
        self.inner_cls = cls
        self.config_model = cls.config_model
        self.can_pulse = False
        self._roles = cls(cfg).roles()  # constructing an output does no I/O
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._out: queue.Queue[Any] = queue.Queue()
        self._errors: collections.deque[str] = collections.deque(maxlen=200)
        self._controls: list[tuple[str, str, int]] = []
        self._stats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._dead = False
        self.notes: list[str] = []

    def roles(self) -> set[str]:
        return set(self._roles)

    def open(self) -> None:
        a, b = socket.socketpair()
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "edgekit.runtime.outputs.sidecar", str(b.fileno())],
                                          pass_fds=(b.fileno(),), close_fds=True)
        finally:
            b.close()
        conn = Connection(a.detach())
        conn.send((self.inner_cls.__module__, self.inner_cls.__name__, self.cfg.model_dump(mode="json")))
        if not conn.poll(self.start_timeout_s):
            self._proc.kill()
            raise DeviceError(f"outputs.{self.name}: its process did not open the output within "
                              f"{self.start_timeout_s:.0f} s")
        try:
            msg = conn.recv()
        except EOFError:
            raise DeviceError(f"outputs.{self.name}: its process died while opening the output (see its stderr)") \
                from None
        if msg[0] == "open_error":
            self._proc.wait(timeout=10)
            raise DeviceError(msg[1])
        self.notes = list(msg[1])
        self._conn = conn
        for target, name in ((self._writer, "send"), (self._reader, "recv")):
            t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _writer(self) -> None:
        assert self._conn is not None
        while True:
            item = self._out.get()
            try:
                self._conn.send(item)
            except (OSError, ValueError):
                self._gone()
                return
            if item[0] == "close":
                return

    def _reader(self) -> None:
        assert self._conn is not None
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                self._gone()
                return
            kind = msg[0]
            with self._lock:
                if kind == "report":
                    _, errors, controls, stats = msg
                    self._errors.extend(errors)
                    self._controls.extend(controls)
                    if stats:
                        self._stats = dict(stats)
                elif kind == "closed":
                    self._closed.set()
                    return

    def _gone(self) -> None:
        if not self._closed.is_set() and not self._dead:
            self._dead = True
            with self._lock:
                self._errors.append(f"the process of output {self.name} died; its results are no longer sent "
                                    "(restart the service)")

    def _send(self, method: str, *args: Any) -> None:
        if not self._dead:
            self._out.put((method, args))

    def set_line(self, role: str, active: bool) -> None:
        if role in self._roles:
            self._send("set_line", role, active)

    def publish_dict(self, decision: dict[str, Any]) -> None:
        self._send("publish_dict", decision)

    def set_band(self, accept_edge: float, reject_edge: float) -> None:
        self._send("set_band", accept_edge, reject_edge)

    def set_fault(self, code: int) -> None:
        self._send("set_fault", code)

    def reset_fault(self) -> None:
        self._send("reset_fault")

    def set_enabled(self, enabled: bool) -> None:
        self._send("set_enabled", enabled)

    def healthy(self) -> bool:
        return not self._dead and self._proc is not None and self._proc.poll() is None

    def pop_errors(self) -> list[str]:
        with self._lock:
            out = list(self._errors)
            self._errors.clear()
        self.errors += len(out)
        return out

    def pop_controls(self) -> list[tuple[str, str, int]]:
        with self._lock:
            out, self._controls = self._controls, []
        return out

    def stats(self) -> dict[str, float]:
        with self._lock:
            return dict(self._stats)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._proc is None:
            return
        self._send("close")
        self._closed.wait(timeout_s)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        if self._conn is not None:
            self._conn.close()
        self._proc = None


def _child(fd: int) -> None:
    """The output's own process."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the line process closes us in order
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        module, cls_name, cfg = conn.recv()
    except EOFError:
        return
    try:
        cls = getattr(importlib.import_module(module), cls_name)
        out = cls(cls.config_model.model_validate({**cfg, "process": "line"}))
        out.open()
    except EdgekitError as exc:
        conn.send(("open_error", str(exc)))
        return
    conn.send(("ready", list(getattr(out, "notes", []))))
    failed: list[str] = []

    def report() -> None:
        errors = out.pop_errors() + failed
        failed.clear()
        conn.send(("report", errors, out.pop_controls(), out.stats() if hasattr(out, "stats") else {}))

    parent_gone = False
    try:
        next_report = 0.0
        running = True
        while running:
            ready = conn.poll(0.05)
            while ready:
                method, args = conn.recv()
                if method == "close":
                    running = False
                    break
                if method in _FORWARD:
                    try:
                        getattr(out, method)(*args)
                    except Exception as exc:  # one bad call must not end the output
                        failed.append(f"{method}: {exc.__class__.__name__}: {exc}")
                ready = conn.poll(0)
            now = time.monotonic()
            if now >= next_report:
                next_report = now + 0.05
                report()
    except (EOFError, OSError):
        parent_gone = True  # the line process is gone: close the output (safe state), then exit
    out.close()
    if not parent_gone:
        try:
            report()
            conn.send(("closed",))
        except (OSError, ValueError) as exc:
            print(f"edgekit output {out.name}: line process gone before the close report: {exc}", file=sys.stderr)
    conn.close()
    os._exit(0)


if __name__ == "__main__":
    _child(int(sys.argv[1]))
