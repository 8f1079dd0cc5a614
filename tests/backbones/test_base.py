"""Registry contract and weight-file loading for every backbone (random init, CPU, 64x64)."""

from __future__ import annotations

import pytest
import torch

from edgekit.backbones import BACKBONES, FeatureExtractor, create_backbone
from edgekit.backbones.base import _STATE_CACHE, read_state_dict
from edgekit.config.recipe import BackboneConfig
from edgekit.errors import ConfigError

EXPECTED = {
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "resnet18",
    "wide_resnet50_2",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
}


def test_registry_lists_all_backbones_with_capabilities():
    assert set(BACKBONES.names()) == EXPECTED
    for name in EXPECTED:
        info = BACKBONES.info(name)
        assert len(info["channels"]) == len(info["strides"]) == 5
        assert len(info["mean"]) == len(info["std"]) == 3
        assert info["weight_source"]
        if name.startswith("tf_efficientnet_lite"):
            assert info["mean"] == info["std"] == (0.5, 0.5, 0.5)
        else:
            assert info["mean"] == (0.485, 0.456, 0.406) and info["std"] == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_backbone_matches_its_declared_capabilities(name):
    info = BACKBONES.info(name)
    layers = tuple(range(len(info["channels"])))
    fx = create_backbone(BackboneConfig(name=name, weights="none"), layers)
    assert isinstance(fx, FeatureExtractor) and not fx.training
    assert fx.name == name and fx.layers == layers
    assert fx.channels == list(info["channels"]) and fx.strides == list(info["strides"])
    assert fx.mean == info["mean"] and fx.std == info["std"]
    with torch.no_grad():
        feats = fx(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // s, 64 // s) for c, s in zip(fx.channels, fx.strides)
    ]
    assert all(torch.isfinite(f).all() for f in feats)


def test_layer_subset_and_cfg_layers():
    fx = create_backbone(BackboneConfig(name="resnet18", weights="none"), (1, 2, 3))
    assert fx.channels == [64, 128, 256] and fx.strides == [4, 8, 16]
    assert len(fx(torch.zeros(2, 3, 64, 64))) == 3
    fx = create_backbone(BackboneConfig(name="resnet18", weights="none", layers=(3,)))
    assert fx.channels == [256]


def test_unknown_backbone_names_closest_match():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet19'; did you mean 'resnet18'.*valid: "):
        create_backbone(BackboneConfig(name="resnet19", weights="none"), (1,))


@pytest.mark.parametrize("layers", [(5,), (), (2, 1), (1, 1), (-1,), ("a",)])
def test_invalid_layers_name_the_valid_ones(layers):
    with pytest.raises(ConfigError) as exc:
        create_backbone(BackboneConfig(name="resnet18", weights="none"), layers)
    msg = str(exc.value)
    assert "backbone resnet18" in msg and "0 (64 ch, stride 2)" in msg and "4 (512 ch, stride 32)" in msg
    assert "\n" not in msg


def test_no_layers_anywhere_is_an_error():
    with pytest.raises(ConfigError, match="no feature layers"):
        create_backbone(BackboneConfig(name="resnet18", weights="none"))


# --- weight files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_state():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def _check_loaded(fx, state):
    for key, value in fx.body.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("prefix", ["", "module.", "model.module."])
def test_weight_file_loads_with_and_without_prefix(tmp_path, resnet_state, prefix):
    path = tmp_path / "w.pth"
    torch.save({prefix + k: v for k, v in resnet_state.items()}, path)
    fx = create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1, 2))
    _check_loaded(fx, resnet_state)


def test_weight_file_wrapped_checkpoint_and_safetensors(tmp_path, resnet_state):
    from safetensors.torch import save_file

    wrapped = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in resnet_state.items()}}, wrapped)
    _check_loaded(create_backbone(BackboneConfig(name="resnet18", weights=str(wrapped)), (4,)), resnet_state)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_state.items()}, str(st))
    _check_loaded(create_backbone(BackboneConfig(name="resnet18", weights=str(st)), (4,)), resnet_state)


def test_weight_file_is_cached_per_process(tmp_path, resnet_state):
    path = tmp_path / "w.pth"
    torch.save(resnet_state, path)
    create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1,))
    keys = [k for k in _STATE_CACHE if k[0] == "file" and k[2] == str(path.resolve())]
    assert len(keys) == 1
    cached = _STATE_CACHE[keys[0]]
    create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (2,))
    assert _STATE_CACHE[keys[0]] is cached


def test_strict_mismatch_lists_keys(tmp_path, resnet_state):
    bad = dict(resnet_state)
    del bad["layer4.1.conv2.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ConfigError) as exc:
        create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1,))
    msg = str(exc.value)
    assert "backbone resnet18" in msg and "do not match timm resnet18" in msg
    assert (
        "layer4.1.conv2.weight" in msg
        and "extra.weight" in msg
        and "fc.weight (10, 512) vs (1000, 512)" in msg
    )
    assert "\n" not in msg


def test_state_dict_of_another_architecture_is_refused(tmp_path):
    import timm

    path = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), path)
    with pytest.raises(ConfigError, match=r"missing \(e\.g\. .*unexpected"):
        create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1,))


def test_missing_and_unreadable_weight_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        create_backbone(BackboneConfig(name="resnet18", weights=str(tmp_path / "nope.pth")), (1,))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read as a state dict"):
        create_backbone(BackboneConfig(name="resnet18", weights=str(junk)), (1,))
    nodict = tmp_path / "nodict.pth"
    torch.save({"lr": 0.1, "epoch": 3}, nodict)
    with pytest.raises(ConfigError, match="does not hold a state dict"):
        create_backbone(BackboneConfig(name="resnet18", weights=str(nodict)), (1,))


class _Payload:
    pass


def test_arbitrary_pickles_are_not_unpickled(tmp_path):
    # weights_only=True refuses custom classes: a weight file must never run code
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": _Payload()}, path)
    with pytest.raises(ConfigError, match="cannot be read as a state dict"):
        read_state_dict(path, "resnet18")


def test_half_precision_file_loads_as_float32_and_cache_stays_pristine(tmp_path, resnet_state):
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in resnet_state.items()}, path)
    fx = create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1,))
    assert all(p.dtype == torch.float32 for p in fx.parameters())
    assert all(not p.is_meta for p in fx.parameters())
    # fine-tuning one extractor in place must not leak into the next one built from the cache
    with torch.no_grad():
        fx.body.conv1.weight.add_(1.0)
    fx2 = create_backbone(BackboneConfig(name="resnet18", weights=str(path)), (1,))
    assert torch.equal(fx2.body.conv1.weight, resnet_state["conv1.weight"].half().float())


@pytest.mark.parametrize("name,layers", [("tf_efficientnet_lite0", (1, 2, 3)), ("efficientnet_b0", (0,))])
def test_blocks_after_the_deepest_layer_are_dropped_without_changing_outputs(name, layers):
    import timm

    torch.manual_seed(0)
    fx = create_backbone(BackboneConfig(name=name, weights="none"), layers)
    full = timm.create_model(BACKBONES.info(name)["timm_name"], features_only=True, out_indices=layers)
    assert sum(p.numel() for p in fx.parameters()) < sum(p.numel() for p in full.parameters())
    full.load_state_dict(fx.body.state_dict(), strict=False)
    full.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(fx(x), full(x), strict=True):
            assert torch.equal(a, b)
