"""A fake of the ``gpiod`` Python package (libgpiod v2 bindings, 2.x API) with the real module's
surface, for machines without a GPIO chip: ``request_lines``, ``Chip``, ``LineSettings``,
``LineRequest`` (``get_value(s)``, ``set_value(s)``, ``wait_edge_events``, ``read_edge_events``,
``fd``/``fileno``, ``release``), ``EdgeEvent`` with kernel-style timestamps and sequence numbers,
``ChipInfo``/``LineInfo``, ``is_gpiochip_device`` and the ``gpiod.line`` enums.

``install()`` puts it in ``sys.modules`` as ``gpiod`` and ``gpiod.line``, so production code that
does ``import gpiod`` runs unchanged against it. What the real package does not have lives in
``sim``: chips are added with ``sim.add_chip(path, label, num_lines)`` and inputs are driven with
``sim.chip(path).drive(offset, level, timestamp_ns)``.

Kernel behaviour reproduced (gpiolib-cdev, uAPI v2): lines are exclusive (a second request of a
held line fails with EBUSY); each request has an edge-event FIFO of ``event_buffer_size`` (default
16 × the number of lines requested, rounded up to a power of two as kfifo does) that **drops the
oldest event** when full; ``line_seqno`` counts events per line and ``global_seqno`` per request,
both from 1, assigned when the edge happens, so an overflow shows as a gap; ``active_low`` inverts
values; edge detection honours RISING / FALLING / BOTH; the request's fd is readable while events
are queued (a real pipe, so ``select``/``poll`` work)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import types
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any

from edgekit.sim.fake_gpiod import line
from edgekit.sim.fake_gpiod.line import Bias, Clock, Direction, Drive, Edge, Value

__version__ = "2.5.0"
api_version = "2.3"

__all__ = ["Chip", "ChipClosedError", "ChipInfo", "EdgeEvent", "LineInfo", "LineRequest", "LineSettings",
           "RequestReleasedError", "api_version", "install", "is_gpiochip_device", "line", "request_lines", "sim"]


class ChipClosedError(Exception):
    def __init__(self) -> None:
        super().__init__("I/O operation on closed chip")


class RequestReleasedError(Exception):
    def __init__(self) -> None:
        super().__init__("GPIO lines have been released")


@dataclass(repr=False)
class LineSettings:
    direction: Direction = Direction.AS_IS
    edge_detection: Edge = Edge.NONE
    bias: Bias = Bias.AS_IS
    drive: Drive = Drive.PUSH_PULL
    active_low: bool = False
    debounce_period: timedelta = timedelta()
    event_clock: Clock = Clock.MONOTONIC
    output_value: Value = Value.INACTIVE


@dataclass(frozen=True)
class ChipInfo:
    name: str
    label: str
    num_lines: int


@dataclass(frozen=True)
class LineInfo:
    offset: int
    name: str
    used: bool
    consumer: str
    direction: Direction
    active_low: bool
    bias: Bias
    drive: Drive
    edge_detection: Edge
    event_clock: Clock
    debounced: bool
    debounce_period: timedelta


class EdgeEvent:
    """Immutable edge event, fields as in gpiod.EdgeEvent."""

    class Type(Enum):
        RISING_EDGE = 1
        FALLING_EDGE = 2

    __slots__ = ("event_type", "global_seqno", "line_offset", "line_seqno", "timestamp_ns")

    def __init__(self, event_type: EdgeEvent.Type, timestamp_ns: int, line_offset: int, global_seqno: int,
                 line_seqno: int) -> None:
        object.__setattr__(self, "event_type", event_type)
        object.__setattr__(self, "timestamp_ns", timestamp_ns)
        object.__setattr__(self, "line_offset", line_offset)
        object.__setattr__(self, "global_seqno", global_seqno)
        object.__setattr__(self, "line_seqno", line_seqno)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("EdgeEvent is immutable")

    def __repr__(self) -> str:
        return (f"<EdgeEvent type={self.event_type} timestamp_ns={self.timestamp_ns} line_offset={self.line_offset} "
                f"global_seqno={self.global_seqno} line_seqno={self.line_seqno}>")


# ------------------------------------------------------------------ the simulated hardware
@dataclass
class _Line:
    level: int = 0  # physical level (inputs: driven by the test; outputs: by the request)
    name: str = ""
    owner: _Request | None = None
    settings: LineSettings = field(default_factory=LineSettings)
    seqno: int = 0
    history: list[tuple[int, int]] = field(default_factory=list)  # (timestamp_ns, physical level) of outputs


class FakeChipDevice:
    """One simulated /dev/gpiochipN."""

    def __init__(self, path: str, label: str, num_lines: int, names: dict[int, str] | None = None) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.label = label
        self.lines = [_Line(name=(names or {}).get(i, "")) for i in range(num_lines)]
        self.lock = threading.Lock()

    def drive(self, offset: int, level: int, timestamp_ns: int) -> None:
        """An external signal sets input ``offset`` to physical ``level`` at ``timestamp_ns``
        (an edge event is queued for a request watching that edge)."""
        with self.lock:
            ln = self.lines[offset]
            level = int(bool(level))
            if ln.level == level:
                return
            ln.level = level
            req = ln.owner
            if req is None or ln.settings.direction != Direction.INPUT:
                return
            logical = level ^ int(ln.settings.active_low)
            edge = ln.settings.edge_detection
            if edge == Edge.NONE or (edge == Edge.RISING and not logical) or (edge == Edge.FALLING and logical):
                return
            ln.seqno += 1
            req._seq += 1
            req._put(EdgeEvent(EdgeEvent.Type.RISING_EDGE if logical else EdgeEvent.Type.FALLING_EDGE,
                               timestamp_ns, offset, req._seq, ln.seqno))

    def output_history(self, offset: int) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.lines[offset].history)


class _Sim:
    """What the real package does not have: adding chips and driving inputs."""

    def __init__(self) -> None:
        self.chips: dict[str, FakeChipDevice] = {}
        self.clock = lambda: __import__("time").monotonic_ns()

    def add_chip(self, path: str, label: str = "fake-gpio", num_lines: int = 64,
                 names: dict[int, str] | None = None) -> FakeChipDevice:
        dev = FakeChipDevice(path, label, num_lines, names)
        self.chips[path] = dev
        parent = os.path.dirname(path)
        if not path.startswith("/dev/") and os.path.isdir(parent) and not os.path.exists(path):
            open(path, "w").close()  # a node to glob for, like /dev/gpiochipN (tests use a temp dir)
        return dev

    def chip(self, path: str) -> FakeChipDevice:
        return self.chips[path]

    def reset(self) -> None:
        self.chips.clear()


sim = _Sim()


def is_gpiochip_device(path: str) -> bool:
    return os.path.realpath(path) in sim.chips or path in sim.chips


def _device(path: str) -> FakeChipDevice:
    dev = sim.chips.get(path)
    if dev is None:
        if os.path.exists(path):
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
    return dev


class _Request:
    """Kernel side of one line request: its lines, edge FIFO, sequence counter and a pipe as fd."""

    def __init__(self, dev: FakeChipDevice, offsets: list[int], buffer_size: int) -> None:
        self.dev = dev
        self.offsets = offsets
        size = 1
        while size < buffer_size:
            size *= 2
        self.capacity = size
        self.events: deque[EdgeEvent] = deque()
        self._seq = 0
        self.overflows = 0
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)

    def _put(self, ev: EdgeEvent) -> None:  # called with dev.lock held
        if len(self.events) >= self.capacity:
            self.events.popleft()  # kfifo_skip: the oldest event is lost
            self.overflows += 1
        self.events.append(ev)
        if len(self.events) == 1:
            os.write(self.wfd, b"\0")

    def take(self, n: int | None) -> list[EdgeEvent]:
        with self.dev.lock:
            k = len(self.events) if n is None else min(n, len(self.events))
            out = [self.events.popleft() for _ in range(k)]
            if not self.events:
                try:
                    while os.read(self.rfd, 4096):
                        pass
                except BlockingIOError:
                    pass
            return out

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


def _offsets_of(dev: FakeChipDevice, key: Any) -> list[int]:
    keys = list(key) if isinstance(key, (tuple, list, set, frozenset)) else [key]
    out = []
    for k in keys:
        if isinstance(k, str):
            names = [i for i, ln in enumerate(dev.lines) if ln.name == k]
            if not names:
                raise ValueError(f"unknown line name: {k}")
            out.append(names[0])
        else:
            if not 0 <= int(k) < len(dev.lines):
                raise ValueError("invalid line offset")
            out.append(int(k))
    return out


class Chip:
    def __init__(self, path: str) -> None:
        self._dev: FakeChipDevice | None = _device(path)
        self._path = path

    def __enter__(self) -> Chip:
        self._check_closed()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __bool__(self) -> bool:
        return self._dev is not None

    def _check_closed(self) -> None:
        if self._dev is None:
            raise ChipClosedError()

    def close(self) -> None:
        self._check_closed()
        self._dev = None

    @property
    def path(self) -> str:
        return self._path

    def get_info(self) -> ChipInfo:
        self._check_closed()
        d = self._dev
        return ChipInfo(d.name, d.label, len(d.lines))

    def line_offset_from_id(self, id: str | int) -> int:  # noqa: A002 (the real parameter name)
        self._check_closed()
        return _offsets_of(self._dev, id)[0]

    def get_line_info(self, line: int | str) -> LineInfo:
        self._check_closed()
        off = self.line_offset_from_id(line)
        ln = self._dev.lines[off]
        s = ln.settings if ln.owner is not None else LineSettings()
        consumer = ln.owner.consumer if ln.owner is not None else ""
        return LineInfo(off, ln.name, ln.owner is not None, consumer, s.direction if ln.owner else Direction.INPUT,
                        s.active_low, s.bias, s.drive, s.edge_detection, s.event_clock,
                        s.debounce_period > timedelta(), s.debounce_period)

    def request_lines(self, config: dict[Iterable[int | str] | int | str, LineSettings | None],
                      consumer: str | None = None, event_buffer_size: int | None = None,
                      output_values: dict[int | str, Value] | None = None) -> LineRequest:
        self._check_closed()
        dev = self._dev
        wanted: dict[int, LineSettings] = {}
        for key, settings in config.items():
            for off in _offsets_of(dev, key):
                if off in wanted:
                    raise ValueError(f"line must be configured exactly once - offset {off} repeats")
                wanted[off] = settings or LineSettings()
        for k, v in (output_values or {}).items():
            off = _offsets_of(dev, k)[0]
            if off in wanted:
                s = wanted[off]
                wanted[off] = LineSettings(s.direction, s.edge_detection, s.bias, s.drive, s.active_low,
                                           s.debounce_period, s.event_clock, v)
        with dev.lock:
            if any(dev.lines[o].owner is not None for o in wanted):
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            kreq = _Request(dev, list(wanted), event_buffer_size or 16 * len(wanted))
            kreq.consumer = consumer or "?"
            for off, s in wanted.items():
                ln = dev.lines[off]
                ln.owner = kreq
                ln.settings = s
                ln.seqno = 0
                if s.direction == Direction.OUTPUT:
                    ln.level = int(s.output_value == Value.ACTIVE) ^ int(s.active_low)
                    ln.history.append((sim.clock(), ln.level))
        return LineRequest(kreq)


def request_lines(path: str, config: dict[Iterable[int | str] | int | str, LineSettings | None],
                  consumer: str | None = None, event_buffer_size: int | None = None,
                  output_values: dict[int | str, Value] | None = None) -> LineRequest:
    with Chip(path) as chip:
        return chip.request_lines(config=config, consumer=consumer, event_buffer_size=event_buffer_size,
                                  output_values=output_values)


class LineRequest:
    def __init__(self, req: _Request) -> None:
        self._req: _Request | None = req

    def __bool__(self) -> bool:
        return self._req is not None

    def __enter__(self) -> LineRequest:
        self._check_released()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _check_released(self) -> None:
        if self._req is None:
            raise RequestReleasedError()

    def release(self) -> None:
        self._check_released()
        req, self._req = self._req, None
        with req.dev.lock:
            for off in req.offsets:
                req.dev.lines[off].owner = None
        req.close()

    def _offset(self, line_id: int | str) -> int:
        off = _offsets_of(self._req.dev, line_id)[0]
        if off not in self._req.offsets:
            raise ValueError("line not in request")
        return off

    def get_value(self, line: int | str) -> Value:
        self._check_released()
        ln = self._req.dev.lines[self._offset(line)]
        return Value(ln.level ^ int(ln.settings.active_low))

    def get_values(self, lines: Iterable[int | str] | None = None) -> list[Value]:
        self._check_released()
        return [self.get_value(o) for o in (lines if lines is not None else self._req.offsets)]

    def set_value(self, line: int | str, value: Value) -> None:
        self._check_released()
        if not isinstance(value, Value):
            raise TypeError("value must be gpiod.line.Value")
        off = self._offset(line)
        dev = self._req.dev
        with dev.lock:
            ln = dev.lines[off]
            if ln.settings.direction != Direction.OUTPUT:
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
            level = int(value == Value.ACTIVE) ^ int(ln.settings.active_low)
            if level != ln.level:
                ln.level = level
                ln.history.append((sim.clock(), level))

    def set_values(self, values: dict[int | str, Value]) -> None:
        for k, v in values.items():
            self.set_value(k, v)

    def wait_edge_events(self, timeout: timedelta | float | None = None) -> bool:
        self._check_released()
        import select

        t = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        r, _, _ = select.select([self._req.rfd], [], [], t)
        return bool(r)

    def read_edge_events(self, max_events: int | None = None) -> list[EdgeEvent]:
        self._check_released()
        return self._req.take(max_events)

    def fileno(self) -> int:
        return self.fd

    @property
    def fd(self) -> int:
        self._check_released()
        return self._req.rfd

    @property
    def chip_name(self) -> str:
        self._check_released()
        return self._req.dev.name

    @property
    def num_lines(self) -> int:
        self._check_released()
        return len(self._req.offsets)

    @property
    def offsets(self) -> list[int]:
        self._check_released()
        return list(self._req.offsets)


def install(monkeypatch: Any = None) -> types.ModuleType:
    """Make ``import gpiod`` / ``from gpiod.line import ...`` return this fake (through pytest's
    ``monkeypatch`` when given, so it is undone after the test). Returns the module."""
    me = sys.modules[__name__]
    for name, mod in (("gpiod", me), ("gpiod.line", line)):
        if monkeypatch is not None:
            monkeypatch.setitem(sys.modules, name, mod)
        else:
            sys.modules[name] = mod
    return me
