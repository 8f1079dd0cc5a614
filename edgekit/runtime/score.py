"""Score stage: ``RawOutput`` → ``Score`` (image score = max over tiles, as in training and
evaluation). A NaN/inf or a wrong number of tile scores makes the score unusable, never 0."""

from __future__ import annotations

import math
import time

from edgekit.data.preprocess import image_score
from edgekit.runtime.types import RawOutput, Score


class Scorer:
    """Reduce per-tile scores to the image score and flag unusable numbers."""

    def run(self, raw: RawOutput) -> Score:
        t0 = time.perf_counter()
        n = raw.tile_scores.shape[0]
        error = None
        if n == 0:
            value, error = float("nan"), "empty_output"
        else:
            value = image_score(raw.tile_scores)
            if not math.isfinite(value) or not all(math.isfinite(float(s)) for s in raw.tile_scores):
                error = "nan"
        stage = dict(raw.stage_s)
        stage["score"] = time.perf_counter() - t0
        return Score(raw.frame, value, raw.model_id, stage, error=error, maps=raw.maps)
