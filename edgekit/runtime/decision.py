"""Decision stage: ``Score`` → ``Decision`` with the accept / review / reject band.

score < accept_edge → accept; score ≥ reject_edge → reject; otherwise review (a single
threshold means accept_edge == reject_edge, no review band). An unusable score or a frame
without image is never accepted: it gets the fail-safe action with the reason recorded."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from edgekit.errors import BundleError, ConfigError
from edgekit.runtime.types import Decision, DecisionKind, Frame, Score


@dataclass(frozen=True)
class Band:
    """Accept/reject edges and where they came from (``bundle`` or ``config``)."""

    accept_edge: float
    reject_edge: float
    source: str

    @classmethod
    def resolve(cls, thresholds: dict[str, Any], accept_edge: float | None = None,
                reject_edge: float | None = None, model: dict[str, Any] | None = None) -> Band:
        """Band from the bundle's ``thresholds`` with optional config overrides. ``model``: the
        manifest entry of the model that runs; a precision recalibrated by the build's decision
        gate carries its own ``band`` (its scores are not FP32's), which replaces the shared one."""
        own = (model or {}).get("band")
        if own and own.get("accept_edge") is not None and own.get("reject_edge") is not None:
            thresholds = {**thresholds, "threshold": own["reject_edge"], "accept_edge": own["accept_edge"],
                          "reject_edge": own["reject_edge"]}
        if "threshold" not in thresholds and "reject_edge" not in thresholds:
            raise BundleError("bundle thresholds have neither 'threshold' nor 'reject_edge'; rebuild the bundle")
        thr = float(thresholds.get("threshold", thresholds.get("reject_edge")))
        a = float(thresholds.get("accept_edge", thr))
        r = float(thresholds.get("reject_edge", thr))
        source = "bundle"
        if accept_edge is not None or reject_edge is not None:
            a = a if accept_edge is None else float(accept_edge)
            r = r if reject_edge is None else float(reject_edge)
            source = "config"
        if not (math.isfinite(a) and math.isfinite(r)) or a > r:
            raise ConfigError(f"decision band accept_edge={a} > reject_edge={r}; "
                              "set decision.accept_edge <= decision.reject_edge")
        return cls(a, r, source)


class Decider:
    """Apply the band; route review and fail-safe decisions to the configured kinds.

    Args:
        band: the accept/reject edges.
        review_as: what a review-band part becomes (``review`` → its own line/diverter,
            ``reject`` or ``accept`` when the line has no review station).
        failsafe_as: the action for late/missing/NaN/error parts (``reject`` by default).
    """

    def __init__(self, band: Band, review_as: DecisionKind = "review", failsafe_as: DecisionKind = "reject") -> None:
        self.band = band
        self.review_as = review_as
        self.failsafe_as = failsafe_as

    def classify(self, value: float) -> DecisionKind:
        """Band lookup for a finite score."""
        if value >= self.band.reject_edge:
            return "reject"
        if value < self.band.accept_edge:
            return "accept"
        return self.review_as

    def decide(self, score: Score) -> Decision:
        """Decision for one scored frame (fail-safe if the score is unusable)."""
        if score.error is not None or not math.isfinite(score.value):
            return self.failsafe(score.frame, score.error or "nan", score.value, score.model_id, score.stage_s)
        return Decision(score.frame, self.classify(score.value), score.value, score.model_id, None,
                        time.monotonic_ns(), dict(score.stage_s), score.maps)

    def failsafe(self, frame: Frame, reason: str, value: float = float("nan"), model_id: str = "",
                 stage_s: dict[str, float] | None = None) -> Decision:
        """Fail-safe decision for a part whose result is late, missing or unusable."""
        return Decision(frame, self.failsafe_as, value, model_id, reason, time.monotonic_ns(), dict(stage_s or {}))
