"""Backbones (training side; torch + timm): a registry of timm feature extractors with declared
capabilities and offline weight loading.

    from edgekit.backbones import BACKBONES, create_backbone
    fx = create_backbone(BackboneConfig(name="tf_efficientnet_lite0"), layers=(1, 2, 3))
    fx.channels, fx.strides, fx.mean, fx.std      # [24, 40, 112], [4, 8, 16], (0.5,)*3, (0.5,)*3
    feats = fx(x)                                 # x: (N, 3, H, W) float32 normalised

``BACKBONES.info(name)`` gives ``timm_name``, ``channels``, ``strides``, ``mean``, ``std``,
``input_size`` and ``weight_source`` per entry.
"""

from edgekit.backbones.base import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    FeatureExtractor,
    create_backbone,
    read_state_dict,
)

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TF_LITE_MEAN",
    "TF_LITE_STD",
    "FeatureExtractor",
    "create_backbone",
    "read_state_dict",
]
