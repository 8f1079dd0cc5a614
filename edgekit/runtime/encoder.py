"""Conveyor encoders: the count that places each part on the belt.

``count()`` is the current count; ``time_of_count(c)`` predicts when count ``c`` will be reached
(None when unknown) so the output thread can sleep until just before a target instead of
polling. Two implementations: a simulated constant-speed conveyor (exact, used by the simulator
and tests) and a libgpiod v2 edge-counting input for a real encoder."""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

from pydantic import Field

from edgekit.config.base import StrictModel
from edgekit.errors import DeviceError


class SimEncoderConfig(StrictModel):
    type: Literal["sim"] = "sim"
    speed_mm_s: float = Field(300.0, gt=0, le=100000)
    ticks_per_mm: float = Field(1.0, gt=0, le=1000)


class GpiodEncoderConfig(StrictModel):
    type: Literal["gpiod"] = "gpiod"
    chip: str = "/dev/gpiochip0"
    line: int = Field(..., ge=0)  # channel A; counted on rising edges
    direction_line: int | None = Field(None, ge=0)  # channel B of a quadrature encoder (sign)
    debounce_us: int = Field(0, ge=0, le=100000)


class Encoder:
    """Base class: ``open`` / ``count`` / ``time_of_count`` / ``close``."""

    def open(self) -> None:
        """Start counting."""

    def count(self) -> int:
        raise NotImplementedError

    def count_at(self, t_ns: int) -> int | None:
        """Count at a past monotonic time (latching a capture), or None if unknown."""
        return None

    def time_of_count(self, count: int) -> int | None:
        """Predicted ``time.monotonic_ns()`` at which ``count`` is reached, or None."""
        return None

    def close(self) -> None:
        """Stop counting and release the input."""


class SimEncoder(Encoder):
    """A belt moving at constant speed from ``open()``: count = floor(elapsed × ticks/s)."""

    def __init__(self, cfg: SimEncoderConfig, clock: Callable[[], int] | None = None) -> None:
        self.cfg = cfg
        self.ticks_per_s = cfg.speed_mm_s * cfg.ticks_per_mm
        self.t0_ns: int | None = None
        self.clock = clock if clock is not None else time.monotonic_ns  # injected: a test's VirtualClock

    def open(self) -> None:
        if self.t0_ns is None:
            self.t0_ns = self.clock()

    def count_at(self, t_ns: int) -> int:
        """Encoder count at monotonic time ``t_ns``."""
        if self.t0_ns is None:
            raise DeviceError("simulated encoder used before open()")
        return int((t_ns - self.t0_ns) * self.ticks_per_s // 1_000_000_000)

    def count(self) -> int:
        return self.count_at(self.clock())

    def time_of_count(self, count: int) -> int:
        if self.t0_ns is None:
            raise DeviceError("simulated encoder used before open()")
        t = self.t0_ns + int(count * 1e9 / self.ticks_per_s)
        # float rounding: step to the first nanosecond at which the count is really reached
        while self.count_at(t) < count:
            t += 1
        return t


class GpiodEncoder(Encoder):
    """Counts rising edges on a GPIO line with libgpiod v2 edge events (kernel timestamps);
    with a direction line the count goes down while B is high at A's edge (quadrature x1)."""

    def __init__(self, cfg: GpiodEncoderConfig) -> None:
        self.cfg = cfg
        self._count = 0
        self._lock = threading.Lock()
        self._req = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rate_ticks_per_ns = 0.0
        self._last: tuple[int, int] | None = None  # (count, t_ns) at the last edge
        self._history: collections.deque[tuple[int, int]] = collections.deque(maxlen=8192)  # (t_ns, count)

    def open(self) -> None:
        try:
            import gpiod
            from gpiod.line import Direction, Edge
        except ImportError:
            raise DeviceError("the gpiod encoder needs libgpiod v2 bindings: pip install 'gpiod>=2.1'") from None
        config = {self.cfg.line: gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.RISING,
                                                    debounce_period=timedelta(microseconds=self.cfg.debounce_us))}
        if self.cfg.direction_line is not None:
            config[self.cfg.direction_line] = gpiod.LineSettings(direction=Direction.INPUT)
        try:
            self._req = gpiod.request_lines(self.cfg.chip, consumer="edgekit-encoder", config=config)
        except OSError as exc:
            raise DeviceError(f"encoder: cannot request {self.cfg.chip} line {self.cfg.line} ({exc.strerror or exc}); "
                              "check the chip path and that no other process holds the line") from None
        self._thread = threading.Thread(target=self._loop, name="encoder", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from gpiod.line import Value

        req = self._req
        while not self._stop.is_set():
            if not req.wait_edge_events(timedelta(milliseconds=100)):
                continue
            for ev in req.read_edge_events():
                step = 1
                if self.cfg.direction_line is not None and req.get_value(self.cfg.direction_line) == Value.ACTIVE:
                    step = -1
                # kernel edge timestamps are CLOCK_MONOTONIC, the clock of time.monotonic_ns()
                with self._lock:
                    self._count += step
                    if self._last is not None and ev.timestamp_ns > self._last[1]:
                        inst = (self._count - self._last[0]) / (ev.timestamp_ns - self._last[1])
                        r = self._rate_ticks_per_ns
                        self._rate_ticks_per_ns = 0.8 * r + 0.2 * inst if r else inst
                    self._last = (self._count, ev.timestamp_ns)
                    self._history.append((ev.timestamp_ns, self._count))

    def count(self) -> int:
        with self._lock:
            return self._count

    def count_at(self, t_ns: int) -> int | None:
        """Count after the last edge at or before ``t_ns`` (kernel edge timestamps)."""
        with self._lock:
            i = bisect.bisect_right(self._history, (t_ns, 1 << 62)) - 1
            if i < 0:
                return 0 if not self._history or len(self._history) < self._history.maxlen else None
            return self._history[i][1]

    def time_of_count(self, count: int) -> int | None:
        with self._lock:
            if self._last is None or self._rate_ticks_per_ns <= 0:
                return None
            c, t = self._last
            return t + int((count - c) / self._rate_ticks_per_ns)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._req is not None:
            self._req.release()
            self._req = None


class RemoteEncoder(Encoder):
    """The daemon-side view of an encoder counted in the line process: it streams (time, count)
    samples every few milliseconds; counts in between are interpolated at the measured speed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: collections.deque[tuple[int, int]] = collections.deque(maxlen=4096)

    def update(self, t_ns: int, count: int) -> None:
        with self._lock:
            self._samples.append((t_ns, count))

    def count_at(self, t_ns: int) -> int | None:
        with self._lock:
            if not self._samples:
                return None
            i = bisect.bisect_right(self._samples, (t_ns, 1 << 62)) - 1
            if i < 0:
                return self._samples[0][1]
            t0, c0 = self._samples[i]
            if i + 1 < len(self._samples):
                t1, c1 = self._samples[i + 1]
            elif i > 0:
                (t1, c1), (t0, c0) = (t0, c0), self._samples[i - 1]
            else:
                return c0
            if t1 == t0:
                return c0
            return int(c0 + (c1 - c0) * (t_ns - t0) / (t1 - t0))

    def count(self) -> int:
        c = self.count_at(time.monotonic_ns())
        return 0 if c is None else c


def make_encoder(cfg: SimEncoderConfig | GpiodEncoderConfig) -> Encoder:
    """Encoder for a config section."""
    if cfg.type == "sim":
        return SimEncoder(cfg)
    return GpiodEncoder(cfg)
