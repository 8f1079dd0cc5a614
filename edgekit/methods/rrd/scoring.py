"""RRD scoring = the shared distillation scoring (``edgekit.methods.rd.scoring``): per-layer
1 − cos maps, bilinear upsampling to the input size, sum, Gaussian smoothing (recipe
``score.smoothing_sigma``), image score = max of the map (a single small defect must be able to
reject a part, so never the mean)."""

from edgekit.methods.rd.scoring import DistillationModel, DistillationScorer, cosine_distance_maps

__all__ = ["DistillationModel", "DistillationScorer", "cosine_distance_maps"]
