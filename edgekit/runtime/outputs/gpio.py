"""GPIO outputs through libgpiod v2 (the ``gpiod`` Python package, kernel character device)
and a fake chip with the same request interface that records every edge with a monotonic
timestamp (simulator, tests, the demo).

libgpiod v2 API used (gpiod >= 2.1): ``gpiod.request_lines(path, consumer=..., config={offset:
gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE, active_low=...)})``
returns a ``LineRequest`` with ``set_value(offset, Value)`` and ``release()``. Values are
logical: with ``active_low`` the kernel inverts the physical level, so ACTIVE always means
"reject now" and the safe state is INACTIVE."""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import DeviceError
from edgekit.runtime.outputs.base import OUTPUTS, Output


class GpioLines(StrictModel):
    """Line offsets on the chip by role; a role left out is not driven."""

    reject: int | None = Field(None, ge=0)
    review: int | None = Field(None, ge=0)
    heartbeat: int | None = Field(None, ge=0)
    ready: int | None = Field(None, ge=0)


class GpiodOutputConfig(StrictModel):
    type: Literal["gpiod"] = "gpiod"
    name: str = "gpio"
    chip: str = "/dev/gpiochip0"  # path, gpiochipN or label (tegra234-gpio): edgekit.runtime.gpiochip
    lines: GpioLines
    active_low: bool = False
    consumer: str = "edgekit"


class FakeGpioOutputConfig(StrictModel):
    type: Literal["fake_gpio"] = "fake_gpio"
    name: str = "fake_gpio"
    chip: str = "fake0"
    lines: GpioLines = GpioLines(reject=17, review=18, heartbeat=19, ready=20)
    active_low: bool = False
    consumer: str = "edgekit"


@dataclass(frozen=True)
class EdgeRecord:
    """One recorded transition on a fake line: logical value and physical level."""

    offset: int
    active: bool
    level: int
    t_ns: int


class FakeGpioChip:
    """GPIO chip simulated in software with the libgpiod v2 request semantics that matter here:
    lines are exclusive across processes (a second request of a held line fails with EBUSY, as
    the kernel does; emulated with one ``flock`` per line, released when the holder exits or
    releases), outputs start at their ``output_value``, ``active_low`` inverts the physical
    level, and every change is recorded as an ``EdgeRecord`` with ``time.monotonic_ns()``.

    Edges are recorded in the process that drives the line (the daemon's line process); it sends
    them back on shutdown and ``add_edges`` merges them into this process's chip object."""

    _chips: dict[str, FakeGpioChip] = {}
    _chips_lock = threading.Lock()

    def __init__(self, name: str, num_lines: int = 64) -> None:
        self.name = name
        self.num_lines = num_lines
        self.edges: list[EdgeRecord] = []
        self.levels: dict[int, int] = {}
        self.owners: dict[int, str] = {}
        self._locks: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def get(cls, name: str) -> FakeGpioChip:
        """The process-wide fake chip called ``name`` (created on first use)."""
        with cls._chips_lock:
            if name not in cls._chips:
                cls._chips[name] = FakeGpioChip(name)
            return cls._chips[name]

    @classmethod
    def reset(cls, name: str) -> FakeGpioChip:
        """A fresh chip under ``name`` (tests, simulator runs)."""
        with cls._chips_lock:
            cls._chips[name] = FakeGpioChip(name)
            return cls._chips[name]

    def _lock_path(self, offset: int) -> Path:
        d = Path(tempfile.gettempdir()) / f"edgekit-fakegpio-{os.getuid()}"
        d.mkdir(exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in self.name)
        return d / f"{safe}.{offset}.lock"

    def request_lines(self, config: dict[int, dict[str, Any]], consumer: str) -> FakeLineRequest:
        import fcntl

        with self._lock:
            taken: dict[int, Any] = {}
            try:
                for off in config:
                    if not 0 <= off < self.num_lines:
                        raise OSError(errno.EINVAL, f"line {off} out of range on {self.name}")
                    f = open(self._lock_path(off), "a+")  # noqa: SIM115 (held until release)
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        f.close()
                        raise OSError(errno.EBUSY, f"line {off} on {self.name} is busy") from None
                    taken[off] = f
            except OSError:
                for f in taken.values():
                    f.close()
                raise
            for off, s in config.items():
                self.owners[off] = consumer
                self._locks[off] = taken[off]
                self._write(off, bool(s["output_value"]), bool(s["active_low"]))
        return FakeLineRequest(self, {o: bool(s["active_low"]) for o, s in config.items()})

    def _write(self, offset: int, active: bool, active_low: bool) -> None:
        level = int(active) ^ int(active_low)
        if self.levels.get(offset) != level:
            self.levels[offset] = level
            self.edges.append(EdgeRecord(offset, active, level, time.monotonic_ns()))

    def release(self, offsets: list[int]) -> None:
        with self._lock:
            for off in offsets:
                self.owners.pop(off, None)
                f = self._locks.pop(off, None)
                if f is not None:
                    f.close()  # closing the descriptor drops the flock

    def add_edges(self, edges: list[EdgeRecord]) -> None:
        """Merge edges recorded by another process (the line process) into this chip."""
        with self._lock:
            self.edges.extend(edges)
            self.edges.sort(key=lambda e: e.t_ns)
            for e in edges:
                self.levels[e.offset] = e.level

    def edges_for(self, offset: int) -> list[EdgeRecord]:
        with self._lock:
            return [e for e in self.edges if e.offset == offset]


class FakeLineRequest:
    """What ``FakeGpioChip.request_lines`` returns (mirrors ``gpiod.LineRequest``)."""

    def __init__(self, chip: FakeGpioChip, active_low: dict[int, bool]) -> None:
        self.chip = chip
        self._active_low = active_low
        self._released = False

    def set_value(self, offset: int, active: bool) -> None:
        if self._released:
            raise OSError(errno.EBADF, "request released")
        with self.chip._lock:
            self.chip._write(offset, active, self._active_low[offset])

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.chip.release(list(self._active_low))


class _GpioOutputBase(Output):
    """Role → offset mapping shared by the real and the fake chip."""

    can_pulse = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._offsets = {r: o for r, o in cfg.lines.model_dump().items() if o is not None}
        self._req: Any = None
        self._lock = threading.Lock()
        offs = list(self._offsets.values())
        if len(set(offs)) != len(offs):
            raise DeviceError(f"outputs.{self.name}: two roles on the same line {offs}; give each role its own offset")

    def roles(self) -> set[str]:
        return set(self._offsets)

    def _request(self) -> Any:
        raise NotImplementedError

    def _value(self, active: bool) -> Any:
        return active

    def open(self) -> None:
        if not self._offsets:
            return
        try:
            self._req = self._request()
        except OSError as exc:
            what = "busy (another process holds it; stop it or pick a free line)" if exc.errno == errno.EBUSY \
                else f"unavailable ({exc.strerror or exc})"
            raise DeviceError(f"outputs.{self.name}: {self.cfg.chip} lines {sorted(self._offsets.values())} {what}") from None

    def set_line(self, role: str, active: bool) -> None:
        off = self._offsets.get(role)
        if off is None or self._req is None:
            return
        try:
            with self._lock:
                self._req.set_value(off, self._value(active))
        except OSError:
            self.errors += 1
            raise

    def close(self) -> None:
        req, self._req = self._req, None
        if req is None:
            return
        for off in self._offsets.values():
            try:
                req.set_value(off, self._value(False))
            except OSError:
                self.errors += 1
        req.release()


@OUTPUTS.register("fake_gpio", can_pulse=True)
class FakeGpioOutput(_GpioOutputBase):
    """GPIO output on a ``FakeGpioChip`` (records edges with monotonic timestamps)."""

    config_model = FakeGpioOutputConfig

    @property
    def chip(self) -> FakeGpioChip:
        return FakeGpioChip.get(self.cfg.chip)

    def recorded_edges(self) -> list[EdgeRecord]:
        """Every edge this process recorded on the chip (sent back to the daemon at shutdown)."""
        return list(self.chip.edges)

    def _request(self) -> Any:
        cfg = {o: {"output_value": False, "active_low": self.cfg.active_low} for o in self._offsets.values()}
        return self.chip.request_lines(cfg, consumer=self.cfg.consumer)


@OUTPUTS.register("gpiod", can_pulse=True)
class GpiodOutput(_GpioOutputBase):
    """GPIO output through libgpiod v2 on a real ``/dev/gpiochipN``."""

    config_model = GpiodOutputConfig

    def _request(self) -> Any:
        try:
            import gpiod
            from gpiod.line import Direction, Value
        except ImportError:
            raise DeviceError("the gpiod output needs libgpiod v2 bindings: pip install 'gpiod>=2.1'") from None
        from edgekit.runtime.gpiochip import resolve_chip

        path = resolve_chip(self.cfg.chip, who=f"outputs.{self.name}").path  # path, gpiochipN or label
        self._Value = Value
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE,
                                      active_low=self.cfg.active_low)
        return gpiod.request_lines(path, consumer=self.cfg.consumer,
                                   config={tuple(self._offsets.values()): settings})

    def _value(self, active: bool) -> Any:
        return self._Value.ACTIVE if active else self._Value.INACTIVE
