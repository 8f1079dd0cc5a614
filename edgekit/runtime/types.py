"""Typed results passed between the device stages:

``Frame`` (capture) → ``Batch`` (preprocess) → ``RawOutput`` (backend) → ``Score`` (score)
→ ``Decision`` (decision) → ``RejectCommand`` (reject scheduler) → output lines.

Every result carries the ``Frame`` it came from (part id, encoder count, capture time) and the
per-stage latencies so far, so the event log and the checker never need side tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

DecisionKind = Literal["accept", "reject", "review"]
LineRole = Literal["reject", "review", "heartbeat", "ready"]


@dataclass(frozen=True)
class Frame:
    """One captured image (or the empty slot of a part whose image never came).

    Args:
        part_id: monotonically increasing part/frame number from the source (gaps = missing).
        source_id: camera name from the config.
        t_capture_ns: ``time.monotonic_ns()`` at capture (trigger time in trigger mode).
        image: (H, W, 3) uint8 RGB, or None when ``error`` says why there is no image.
        encoder_count: encoder count latched at capture, or None without an encoder.
        error: why the frame has no usable image (decode failure, missing frame, camera down);
            a frame with an error becomes a fail-safe decision.
        meta: source-specific facts (file name, simulator label); never used for decisions.
    """

    part_id: int
    source_id: str
    t_capture_ns: int
    image: np.ndarray | None
    encoder_count: int | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """Model input for one frame.

    Args:
        tiles: (T, S, S, 3) uint8 RGB tiles (S = model input size).
        n_tiles: number of tiles (T).
    """

    frame: Frame
    tiles: np.ndarray
    stage_s: dict[str, float]


@dataclass(frozen=True)
class RawOutput:
    """Backend output for one batch.

    Args:
        tile_scores: (T,) float32 per-tile scores.
        maps: (T, S, S) float32 per-tile anomaly maps, or None when the backend skipped them.
        model_id: bundle id + precision that produced the numbers.
    """

    frame: Frame
    tile_scores: np.ndarray
    maps: np.ndarray | None
    model_id: str
    stage_s: dict[str, float]


@dataclass(frozen=True)
class Score:
    """Image score (max over tiles) or the reason there is none.

    Args:
        value: image score (float, may be NaN when the backend produced NaN).
        error: reason the score is unusable (exception text, ``nan``); None if fine.
        maps: (T, S, S) float32 per-tile maps (for the reject archive), or None.
    """

    frame: Frame
    value: float
    model_id: str
    stage_s: dict[str, float]
    error: str | None = None
    maps: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    """What happens to one part.

    Args:
        kind: accept, reject or review.
        failsafe: None for a normal decision, else the reason (``late``, ``nan``,
            ``backend_error``, ``decode_error``, ``missing_frame``, ``camera_down``, ...).
        score: image score or NaN when there is none.
        t_decided_ns: ``time.monotonic_ns()`` when the decision was made.
    """

    frame: Frame
    kind: DecisionKind
    score: float
    model_id: str
    failsafe: str | None
    t_decided_ns: int
    stage_s: dict[str, float]
    maps: np.ndarray | None = None

    @property
    def part_id(self) -> int:
        return self.frame.part_id


@dataclass(frozen=True)
class RejectCommand:
    """A pulse to drive on one output line.

    Exactly one of ``at_count`` (encoder mode: fire when the encoder count reaches it) and
    ``at_ns`` (time mode: fire at this ``time.monotonic_ns()``) is set.

    Args:
        role: output line role (reject or review).
        pulse_ms: how long the line stays active.
    """

    part_id: int
    role: LineRole
    pulse_ms: float
    at_count: int | None = None
    at_ns: int | None = None

    def __post_init__(self) -> None:
        if (self.at_count is None) == (self.at_ns is None):
            raise ValueError("RejectCommand needs exactly one of at_count / at_ns")
