"""ResNet entries: hub weights unavailable offline give one line naming both remedies."""

from __future__ import annotations

import pytest
import torch

from edgekit.backbones import base, create_backbone
from edgekit.config.recipe import BackboneConfig
from edgekit.errors import ConfigError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty HF / torch hub cache and no route to the hub (also on CI machines with internet)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    monkeypatch.setattr(base, "_hub_reachable", lambda *a, **k: False)
    for key in [k for k in base._STATE_CACHE if k[0] == "hub"]:
        monkeypatch.delitem(base._STATE_CACHE, key)
    yield
    torch.hub.set_dir(old)


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2", "efficientnet_b0"])
def test_hub_weights_offline_name_both_remedies(offline, name):
    with pytest.raises(ConfigError) as exc:
        create_backbone(BackboneConfig(name=name, weights="auto"), (1, 2, 3))
    assert str(exc.value) == (
        f"backbone {name}: pretrained weights unavailable offline; pass --weights FILE "
        "(a .pth/.safetensors state dict) or run once with internet to cache them"
    )


def test_hub_weights_come_from_the_local_cache(offline, tmp_path):
    # a file in timm's torch-hub checkpoint dir (what an earlier online run leaves) is used offline
    from pathlib import Path

    import timm

    cfg = timm.models.get_pretrained_cfg("resnet18")
    if not cfg.url:
        pytest.skip("timm resnet18 has no torch-hub url in this timm version")
    ckpt = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
    ckpt.parent.mkdir(parents=True)
    state = timm.create_model("resnet18").state_dict()
    torch.save(state, ckpt)
    fx = create_backbone(BackboneConfig(name="resnet18", weights="auto"), (1,))
    assert torch.equal(fx.body.state_dict()["conv1.weight"], state["conv1.weight"])


def test_hub_download_failure_when_online_gives_the_same_line(offline, monkeypatch):
    # reachable host but the download itself fails (proxy, 404, full disk): same two remedies
    import timm

    real = timm.create_model

    def failing(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("simulated: connection reset while downloading")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(base, "_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(
        ConfigError, match=r"^backbone resnet18: pretrained weights unavailable offline; pass --weights FILE"
    ):
        create_backbone(BackboneConfig(name="resnet18", weights="auto"), (1,))
