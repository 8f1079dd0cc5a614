"""Camera plug-in contract and registry.

A camera is a stage with one main method, ``read() -> Frame | None``: block until the next
frame (or the empty slot of a part whose frame is missing), ``None`` at the end of a finite
stream. Disconnects raise ``DeviceError``; the daemon reconnects with backoff and accounts for
the frames missed while down. Constructors do no I/O: ``open()`` touches the device."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from edgekit.registry import Registry
from edgekit.runtime.types import Frame

CAMERAS: Registry[type[Camera]] = Registry(
    "camera",
    modules=(
        "edgekit.runtime.capture.files",
        "edgekit.runtime.capture.opencv",
        "edgekit.sim.camera",
    ),
)


IDLE = object()  # read() result meaning "nothing yet" (a triggered camera waiting for a part)


class Camera:
    """Base class: ``open`` / ``read`` / ``close``.

    Attributes:
        name: source id written into every frame and event.
        nominal_fps: expected frame rate, used to count frames missed while disconnected
            (None when the source has no fixed rate, e.g. a triggered camera).
        triggered: True when each frame stands for exactly one part (hardware trigger).
    """

    config_model: ClassVar[type[Any]]
    nominal_fps: float | None = None
    triggered: bool = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.name: str = cfg.name
        self._next_id = 0

    def open(self) -> None:
        """Connect to the device; raise DeviceError if it is not there."""

    def read(self) -> Frame | None | object:
        """Next frame; None at the end of a finite stream; ``IDLE`` when a triggered camera has no
        part yet (so the capture loop can check for shutdown); DeviceError on disconnect."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def next_part_id(self) -> int:
        pid = self._next_id
        self._next_id += 1
        return pid

    def skip_part_ids(self, n: int) -> None:
        """Advance the part counter over ``n`` frames missed while the camera was down."""
        self._next_id += n


class RateLimiter:
    """Paces a replayed source at ``rate_hz`` on the monotonic clock (absolute schedule, so
    slow reads do not accumulate drift). ``rate_hz`` None or 0 means as fast as possible."""

    def __init__(self, rate_hz: float | None) -> None:
        self.period_ns = int(1e9 / rate_hz) if rate_hz else 0
        self._next_ns: int | None = None

    def wait(self, stop_check: Any = None) -> None:
        if not self.period_ns:
            return
        now = time.monotonic_ns()
        if self._next_ns is None:
            self._next_ns = now
        delay_s = (self._next_ns - now) / 1e9
        if delay_s > 0:
            time.sleep(delay_s)
        # if we fell far behind, restart the schedule instead of bursting to catch up
        self._next_ns = max(self._next_ns + self.period_ns, time.monotonic_ns() - self.period_ns)
