"""ResNet backbones (timm ``resnet18``, ``wide_resnet50_2``): ImageNet weights from the timm hub
when online (or its local cache), otherwise a user state-dict file via ``--weights FILE``."""

from __future__ import annotations

from torch import nn

from edgekit.backbones.base import IMAGENET_MEAN, IMAGENET_STD, build_classifier, register_backbone

_HUB_SRC = "timm hub (online, or the local HF cache)"


@register_backbone(
    "resnet18",
    timm_name="resnet18",
    channels=(64, 64, 128, 256, 512),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=224,
    weight_source=_HUB_SRC,
)
def resnet18(weights: str) -> nn.Module:
    return build_classifier("resnet18", weights)


@register_backbone(
    "wide_resnet50_2",
    timm_name="wide_resnet50_2",
    channels=(64, 256, 512, 1024, 2048),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=224,
    weight_source=_HUB_SRC,
)
def wide_resnet50_2(weights: str) -> nn.Module:
    return build_classifier("wide_resnet50_2", weights)
