"""Clocks for the line process: the real one (monotonic time, select, a short busy wait before an
edge) and a virtual one that tests advance, so that pulse placement is asserted exactly.

Both have the same three calls the line loop uses:

- ``now_ns()``: the current time (``time.monotonic_ns()`` in production);
- ``wait(waitables, timeout_ns)``: block until one of ``waitables`` is readable or the timeout
  passes; returns the readable ones (a ``select`` in production);
- ``sleep_until(t_ns)``: return at (not before) ``t_ns``.

Why the real clock busy-waits the last ``busy_ns`` before an edge: on a VM a halted vCPU is woken
by the host, and that wake-up is late by hundreds of µs to several ms whatever the guest's
scheduling policy (measured in benchmarks/placement.py); a core that is already running meets its
target to a few µs. With SCHED_FIFO the busy wait costs at most ``busy_ns`` of one core per edge."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import time
from collections.abc import Sequence
from typing import Any

_libc: Any = None


def libc() -> Any:
    """The C library (ctypes), or None where it cannot be loaded."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            _libc = False
    return _libc or None


def clock_synchronised() -> bool | None:
    """Whether the kernel considers the system clock synchronised (NTP/chrony/PTP discipline it):
    adjtimex(2) with modes 0 reads the state; TIME_ERROR (5) means unsynchronised. None where the
    call is not available. Event timestamps and reports are wall-clock; a drifting clock misleads
    the plant's records (PLC FAULT_CODE 7)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex (208 bytes on 64-bit), modes = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5


def set_timer_slack(ns: int = 1) -> bool:
    """``prctl(PR_SET_TIMERSLACK, ns)``: timer wake-ups of this thread are not deferred by the
    default 50 µs slack. False where prctl is unavailable."""
    c = libc()
    if c is None or not hasattr(c, "prctl"):
        return False
    return c.prctl(29, ctypes.c_ulong(ns), 0, 0, 0) == 0  # PR_SET_TIMERSLACK = 29


def current_cpu() -> int:
    """``sched_getcpu()``: the CPU this thread runs on (-1 when unknown)."""
    c = libc()
    if c is None or not hasattr(c, "sched_getcpu"):
        return -1
    return int(c.sched_getcpu())


class SchedProbe:
    """Where a late wake-up went: time spent runnable but waiting for a CPU (the guest's
    scheduler: ``/proc/thread-self/schedstat`` field 2) and the hypervisor's steal time of the CPU
    it ran on (``/proc/stat``). Both are cumulative counters; ``sample()`` reads them, ``cause``
    compares two samples. Missing files (not Linux) read as zero."""

    def __init__(self) -> None:
        self._schedstat = "/proc/thread-self/schedstat"
        if not os.path.exists(self._schedstat):
            self._schedstat = "/proc/self/schedstat"
        self._tick_ns = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)

    def run_delay_ns(self) -> int:
        try:
            with open(self._schedstat, "rb") as f:
                return int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            return 0

    def steal_ns(self, cpu: int) -> int:
        if cpu < 0:
            return 0
        try:
            with open("/proc/stat", "rb") as f:
                tag = b"cpu%d " % cpu
                for line in f:
                    if line.startswith(tag):
                        return int(line.split()[8]) * self._tick_ns
        except (OSError, IndexError, ValueError):
            pass
        return 0

    def sample(self) -> tuple[int, int, int]:
        cpu = current_cpu()
        return self.run_delay_ns(), self.steal_ns(cpu), cpu


def late_cause(lateness_ns: int, before: tuple[int, int, int], after: tuple[int, int, int],
               gap_ns: int = 0) -> str:
    """Classify a late edge from two ``SchedProbe.sample()``s taken around its wait and the
    longest stall the busy wait saw (``gap_ns``: two clock reads in a row that far apart):
    ``runqueue`` (runnable but no CPU for at least half the lateness: other tasks of this machine;
    fix with SCHED_FIFO / isolcpus), ``hypervisor`` (the process was running and lost its CPU
    anyway, without waiting in the guest's run queue, or steal time on its CPU grew: the host ran
    something else on our vCPU; only a dedicated, non-overcommitted core fixes it), ``timer``
    (neither: the wake-up itself came late, e.g. a halted vCPU woken late, or a kernel section
    that could not be preempted)."""
    if after[0] - before[0] >= lateness_ns // 2:
        return "runqueue"
    if gap_ns >= lateness_ns // 2 or (after[1] > before[1] and after[2] == before[2]):
        return "hypervisor"
    return "timer"


class MonotonicClock:
    """The real clock: ``time.monotonic_ns`` (CLOCK_MONOTONIC, the clock of kernel GPIO edge
    timestamps), ``select`` for waiting on pipes/GPIO fds, and ``sleep_until`` that sleeps to
    ``busy_ns`` before the target and then polls the clock without yielding."""

    def __init__(self, busy_ns: int = 300_000) -> None:
        self.busy_ns = int(busy_ns)
        self.gap_ns = 0  # longest stall between two clock reads in the last busy wait

    @staticmethod
    def now_ns() -> int:
        return time.monotonic_ns()

    @staticmethod
    def wait(waitables: Sequence[Any], timeout_ns: int) -> list[Any]:
        if timeout_ns <= 0:
            timeout = 0.0
        else:
            timeout = timeout_ns / 1e9
        ready, _, _ = select.select(list(waitables), [], [], timeout)
        return ready

    def sleep_until(self, t_ns: int) -> None:
        left = t_ns - time.monotonic_ns() - self.busy_ns
        if left > 0:
            time.sleep(left / 1e9)  # clock_nanosleep on CPython ≥ 3.11
        gap = 0
        last = time.monotonic_ns()
        while last < t_ns:
            now = time.monotonic_ns()
            if now - last > gap:
                gap = now - last
            last = now
        self.gap_ns = gap


class VirtualClock:
    """A clock that only moves when the code under test waits: ``wait`` jumps to the earlier of
    its timeout and the time the first waitable becomes readable (``ready_at_ns()``), and
    ``sleep_until`` jumps to its target. Deterministic: the same inputs give the same edges at the
    same nanoseconds on any machine, loaded or not."""

    def __init__(self, t0_ns: int = 1_000_000_000) -> None:
        self.t = int(t0_ns)
        self.gap_ns = 0

    def now_ns(self) -> int:
        return self.t

    def __call__(self) -> int:  # usable wherever a ``() -> ns`` clock function is expected
        return self.t

    def advance_to(self, t_ns: int) -> None:
        self.t = max(self.t, int(t_ns))

    def wait(self, waitables: Sequence[Any], timeout_ns: int) -> list[Any]:
        due = self.t + max(0, int(timeout_ns))
        times = [w.ready_at_ns() for w in waitables if hasattr(w, "ready_at_ns")]
        times = [t for t in times if t is not None]
        first = min(times) if times else None
        if first is not None and first <= due:
            self.advance_to(first)
            return [w for w in waitables if hasattr(w, "ready_at_ns") and w.ready_at_ns() is not None
                    and w.ready_at_ns() <= self.t]
        self.advance_to(due)
        return []

    def sleep_until(self, t_ns: int) -> None:
        self.advance_to(t_ns)
