"""Typed training recipe (recipes/*.yaml). Method-specific keys live under ``method:`` and are
validated by the method plug-in's own config model (selected by ``method.type``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from edgekit.config.base import StrictModel, parse_model, read_yaml
from edgekit.errors import ConfigError


class BackboneConfig(StrictModel):
    name: str = "tf_efficientnet_lite0"
    # auto: offline package (lite0/1/2) or the hub when online; "none": random init (tests);
    # anything else: path to a .pth/.safetensors state dict given by the user.
    weights: str = "auto"
    # feature stages (timm features_only out_indices); None = the method's default
    layers: tuple[int, ...] | None = None


class InputConfig(StrictModel):
    size: int = Field(256, ge=32, le=2048, multiple_of=32)
    # auto: near-square images are resized to size x size, elongated ones (aspect above
    # max_aspect_for_resize) keep their aspect: short side -> size, tiled along the long side.
    fit: Literal["auto", "resize", "tile"] = "auto"
    max_aspect_for_resize: float = Field(1.5, ge=1.0, le=16.0)
    tile_overlap: float = Field(0.25, ge=0.0, lt=0.9)


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1, le=10000)
    batch_size: int = Field(8, ge=1, le=1024)
    lr: float = Field(5e-3, gt=0, le=1.0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9)
    early_stop_patience: int = Field(0, ge=0)  # epochs without val improvement; 0 = off
    seed: int = 0
    max_train_images: int | None = Field(None, ge=1)
    hflip: bool = False  # only for products that are mirror-symmetric
    num_workers: int = Field(0, ge=0)


class MemoryConfig(StrictModel):
    """``score.memory``: a nearest-normal-patch distance map added to the distillation maps
    (edgekit/methods/memory.py). Absent (the default) = no memory: the graph is unchanged."""

    size: int = Field(2048, ge=1, le=65536)  # bank entries (one MatMul column each)
    fit: Literal["coreset", "kmeans"] = "coreset"  # greedy k-centre coreset or k-means centres
    # indices into the teacher stages the method reads (0 = shallowest; lite0 rd: 1 = stride 8, 2 = stride 16)
    layers: tuple[int, ...] = (1, 2)
    pool: int = Field(3, ge=1, le=7)  # local average over pool x pool positions (odd)
    patches_per_tile: int = Field(128, ge=1, le=65536)  # positions sampled per training tile
    iters: int = Field(10, ge=0, le=200)  # k-means Lloyd iterations
    weight: float = Field(1.0, gt=0.0, le=16.0)  # weight of the normalised memory map in the sum


class ScoreConfig(StrictModel):
    smoothing_sigma: float = Field(4.0, ge=0.0, le=32.0)
    # distillation methods: standardise each layer's 1 − cos map on the good training images before
    # summing (edgekit/methods/rd/scoring.py): "position" = mean/variance per map position (with
    # the layer's variance as a prior), "layer" = one mean/std per layer, "none" = the paper's
    # plain sum. true/false (older recipes) mean "layer"/"none".
    layer_norm: Literal["position", "layer", "none"] = "position"
    # distillation methods: after layer_norm, rescale by distance to the tile edge so that every
    # ring of positions has the same median and upper tail (the edge_quantile) on the good
    # training tiles: "ring" = the final map; "terms" = each term (layer map, memory map) before
    # the weighted sum too, which also matches the terms' tails (a re-weighting: on ELPV it acts as
    # a heavier memory weight, on fabric it costs PRO; benchmarks/README.md 2026-12-04); "none" =
    # leave it. Border / padding effects are heavy-tailed.
    edge_norm: Literal["terms", "ring", "none"] = "ring"
    edge_quantile: float = Field(0.999, gt=0.5, lt=1.0)
    memory: MemoryConfig | None = None

    @field_validator("layer_norm", mode="before")
    @classmethod
    def _bool_layer_norm(cls, v: object) -> object:
        if isinstance(v, bool):
            return "layer" if v else "none"
        return v


class BuildConfig(StrictModel):
    opset: int = Field(17, ge=17, le=21)
    accuracy_tolerance_pt: float = Field(0.5, ge=0.0)
    precisions: tuple[Literal["fp32", "fp16", "int8"], ...] = ("fp32", "fp16", "int8")


class Recipe(StrictModel):
    name: str
    description: str = ""
    method: dict[str, Any]
    backbone: BackboneConfig = BackboneConfig()
    input: InputConfig = InputConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    build: BuildConfig = BuildConfig()


def method_config(recipe: Recipe, source: str = "recipe") -> BaseModel:
    """Validate ``recipe.method`` with the selected method plug-in's config model."""
    from edgekit.methods import METHODS

    mtype = recipe.method.get("type")
    if not isinstance(mtype, str):
        raise ConfigError(f"{source}: method.type: required key is missing (valid: {', '.join(METHODS.names())})")
    plugin = METHODS.get(mtype)
    cfg = parse_model(plugin.Config, recipe.method, source, prefix="method")
    if recipe.score.memory is not None and getattr(plugin, "family", "") != "distillation":
        raise ConfigError(f"{source}: score.memory: the patch memory applies to the distillation methods "
                          f"(rd, rrd, mrkd), not {mtype}; remove the score.memory block")
    return cfg


def load_recipe(path: str | Path) -> Recipe:
    """Load and fully validate a recipe file (including its method section)."""
    data = read_yaml(path)
    recipe = parse_model(Recipe, data, str(path))
    method_config(recipe, str(path))
    return recipe


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    recipe = parse_model(Recipe, data, source)
    method_config(recipe, source)
    return recipe
