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
    chip: str = "/dev/gpiochip0"  # path, gpiochipN or label (edgekit.runtime.gpiochip)
    line: int = Field(..., ge=0)  # channel A (alone: counted on rising edges)
    direction_line: int | None = Field(None, ge=0)  # channel B of a quadrature encoder
    # quadrature only: x1 counts one tick per A cycle (the encoder's PPR), x4 every edge of A and B
    resolution: Literal["x1", "x4"] = "x1"
    debounce_us: int = Field(0, ge=0, le=100000)
    # kernel edge-event FIFO of the request (None: the kernel's 16 per line); when it fills the
    # kernel drops the oldest event: raise it for fast encoders or a loaded CPU
    event_buffer_size: int | None = Field(None, ge=1, le=65536)


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

    def pop_faults(self) -> list[tuple[int, int, str]]:
        """Counting faults since the last call: (monotonic ns, events lost, message)."""
        return []

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


# quadrature states (A << 1 | B) in forward order: A leads B
_FORWARD = (0b00, 0b10, 0b11, 0b01)
_PHASE = {st: i for i, st in enumerate(_FORWARD)}


class QuadratureDecoder:
    """Position from the ordered edge events of both channels (4× state machine).

    Each event says which line changed and to which level; the new state is the old one with that
    bit set, and its step in the Gray sequence 00 → 10 → 11 → 01 → 00 is +1 forward, −1 backward.
    An event that leaves the state unchanged or jumps two steps means an edge went missing
    (counted in ``invalid``). ``x1`` counts one tick per A cycle from the fine position without
    hysteresis drift: the count changes only on the 00 ↔ 10 transition, both ways."""

    def __init__(self, a: int, b: int, resolution: str = "x1") -> None:
        self.state = (int(bool(a)) << 1) | int(bool(b))
        self.pos = _PHASE[self.state]  # fine position, ≡ phase (mod 4)
        self.pos0 = self.pos
        self.x4 = resolution == "x4"
        self.invalid = 0

    def count(self) -> int:
        d = self.pos - self.pos0
        if self.x4:
            return d
        # x1: ticks completed at the 00 -> 10 transition (phase 0 -> 1)
        return (self.pos + 3) // 4 - (self.pos0 + 3) // 4

    def edge(self, is_a: bool, level: int) -> int:
        """Apply one edge; returns the change of ``count()``."""
        before = self.count()
        bit = 0b10 if is_a else 0b01
        new = (self.state | bit) if level else (self.state & ~bit)
        if new == self.state:
            self.invalid += 1  # a repeated level: the opposite edge was lost
            return 0
        step = (_PHASE[new] - _PHASE[self.state]) % 4
        if step == 1:
            self.pos += 1
        elif step == 3:
            self.pos -= 1
        else:  # cannot happen for one bit flipping; kept for safety
            self.invalid += 1
        self.state = new
        return self.count() - before


class GpiodEncoder(Encoder):
    """Counts an encoder from libgpiod v2 edge events (kernel CLOCK_MONOTONIC timestamps).

    One channel: rising edges of ``line``. Quadrature (``direction_line`` set): both edges of A
    and B are requested and decoded in kernel order by ``QuadratureDecoder``; the level of B is
    never read at processing time (by then it has moved on). Lost events are detected from the
    sequence numbers (``global_seqno`` per request, ``line_seqno`` per line): each gap is an
    encoder fault that ``pop_faults`` reports (the line process then rejects the parts in
    flight, whose placement is no longer known)."""

    def __init__(self, cfg: GpiodEncoderConfig, reader_thread: bool = True) -> None:
        self.cfg = cfg
        self.reader_thread = reader_thread  # False: the caller calls ``poll()`` (tests, one-thread loops)
        self._count = 0
        self._lock = threading.Lock()
        self._req = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rate_ticks_per_ns = 0.0
        self._last: tuple[int, int] | None = None  # (count, t_ns) at the last edge
        self._history: collections.deque[tuple[int, int]] = collections.deque(maxlen=8192)  # (t_ns, count)
        self._decoder: QuadratureDecoder | None = None
        self._seq: int | None = None  # last global_seqno seen
        self.lost_events = 0
        self.invalid_transitions = 0
        self._faults: list[tuple[int, int, str]] = []  # (t_ns, lost, message)
        self.chip_path: str | None = None

    def open(self) -> None:
        from edgekit.runtime.gpiochip import resolve_chip

        ref = resolve_chip(self.cfg.chip, who="encoder")
        import gpiod
        from gpiod.line import Direction, Edge

        self.chip_path = ref.path
        quad = self.cfg.direction_line is not None
        deb = timedelta(microseconds=self.cfg.debounce_us)
        edge = Edge.BOTH if quad else Edge.RISING
        config = {self.cfg.line: gpiod.LineSettings(direction=Direction.INPUT, edge_detection=edge, debounce_period=deb)}
        if quad:
            if self.cfg.direction_line == self.cfg.line:
                raise DeviceError("encoder: line and direction_line are the same offset; wire A and B to two lines")
            config[self.cfg.direction_line] = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=edge,
                                                                 debounce_period=deb)
        try:
            self._req = gpiod.request_lines(ref.path, consumer="edgekit-encoder", config=config,
                                            event_buffer_size=self.cfg.event_buffer_size)
        except OSError as exc:
            raise DeviceError(f"encoder: cannot request {ref.path} line(s) {sorted(config)} ({exc.strerror or exc}); "
                              "check the offsets and that no other process holds the lines (`gpioinfo`)") from None
        self._seq = 0  # the kernel numbers a request's events from 1
        if quad:  # the starting state; every change after this comes as an ordered event
            a, b = self._req.get_values([self.cfg.line, self.cfg.direction_line])
            self._decoder = QuadratureDecoder(bool(a), bool(b), self.cfg.resolution)
        if self.reader_thread:
            self._thread = threading.Thread(target=self._loop, name="encoder", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll(0.1)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Wait up to ``timeout_s`` for edge events and apply those queued; returns how many."""
        req = self._req
        if not req.wait_edge_events(timedelta(seconds=timeout_s)):
            return 0
        events = req.read_edge_events()
        self.process(events)
        return len(events)

    def process(self, events: list) -> None:
        """Apply a batch of edge events in kernel order (the reader thread; tests call it too)."""
        import gpiod

        rising = gpiod.EdgeEvent.Type.RISING_EDGE
        for ev in events:
            if self._seq is not None and ev.global_seqno != self._seq + 1:
                lost = ev.global_seqno - self._seq - 1
                self._fault(ev.timestamp_ns, lost, f"encoder: {lost} edge event(s) lost before seqno "
                            f"{ev.global_seqno} (kernel buffer full); raise encoder.event_buffer_size")
            self._seq = ev.global_seqno
            if self._decoder is not None:
                inv = self._decoder.invalid
                step = self._decoder.edge(ev.line_offset == self.cfg.line, int(ev.event_type == rising))
                if self._decoder.invalid != inv:
                    self._fault(ev.timestamp_ns, 0, f"encoder: impossible quadrature transition on line "
                                f"{ev.line_offset} (an edge was missed: debounce too long or noise)")
            else:
                step = 1 if ev.event_type == rising else 0
            if not step:
                continue
            # kernel edge timestamps are CLOCK_MONOTONIC, the clock of time.monotonic_ns()
            with self._lock:
                self._count += step
                if self._last is not None and ev.timestamp_ns > self._last[1]:
                    inst = (self._count - self._last[0]) / (ev.timestamp_ns - self._last[1])
                    r = self._rate_ticks_per_ns
                    self._rate_ticks_per_ns = 0.8 * r + 0.2 * inst if r else inst
                self._last = (self._count, ev.timestamp_ns)
                self._history.append((ev.timestamp_ns, self._count))

    def _fault(self, t_ns: int, lost: int, msg: str) -> None:
        with self._lock:
            if lost:
                self.lost_events += lost
            else:
                self.invalid_transitions += 1
            self._faults.append((t_ns, lost, msg))

    def pop_faults(self) -> list[tuple[int, int, str]]:
        """Faults since the last call: (kernel time, events lost, message)."""
        with self._lock:
            out, self._faults = self._faults, []
            return out

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
