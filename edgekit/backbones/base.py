"""Backbone registry, the FeatureExtractor wrapper and weight loading (offline packages, user
state-dict files, the timm hub when online).

Every entry registers a loader ``(weights: str) -> nn.Module`` that returns the full timm
*classifier* model with its weights loaded strictly; ``create_backbone`` then copies that state
into a timm ``features_only`` model. Loading the classifier first means a weight file is checked
against every key (head included), so a wrong key map cannot pass silently.

Capabilities are declared at registration (like timm ``_features.py``) and checked against timm's
own ``feature_info`` when a backbone is created:
``timm_name``, ``channels`` / ``strides`` per feature stage, ``mean`` / ``std`` (RGB, 0..1 scale),
``input_size`` (pretraining resolution), ``weight_source`` (where ``weights: auto`` reads from).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekit.errors import ConfigError
from edgekit.registry import Registry

log = logging.getLogger(__name__)

BackboneLoader = Callable[[str], nn.Module]

BACKBONES: Registry[BackboneLoader] = Registry(
    "backbone",
    modules=("edgekit.backbones.efficientnet", "edgekit.backbones.resnet"),
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (x - 127) / 128, i.e. 0.5 / 0.5 on the 0..1 scale
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

# prefixes left by DataParallel / DDP (module.), wrappers (model.) and torch.compile (_orig_mod.)
_STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")
# container keys of common checkpoint dicts that hold the actual state dict
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")

# mapped / loaded classifier state dicts, per process: tests and training build several models
# from the same weights, and reading + re-mapping a file each time costs ~0.5 s
# timm version the declared capabilities and key maps were verified against (tests re-check them)
CHECKED_TIMM = "1.0.31"

_STATE_CACHE: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}


def register_backbone(
    name: str,
    *,
    timm_name: str,
    channels: tuple[int, ...],
    strides: tuple[int, ...],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    input_size: int,
    weight_source: str,
) -> Callable[[BackboneLoader], BackboneLoader]:
    """Decorator registering a classifier loader with its capability data."""
    if len(channels) != len(strides):
        raise ValueError(f"backbone {name}: channels and strides differ in length")
    return BACKBONES.register(
        name,
        timm_name=timm_name,
        channels=tuple(channels),
        strides=tuple(strides),
        mean=tuple(mean),
        std=tuple(std),
        input_size=input_size,
        weight_source=weight_source,
    )


class FeatureExtractor(nn.Module):
    """A timm ``features_only`` model plus the data a method needs to use it.

    Attributes:
        name: registered backbone name.
        layers: feature stage indices returned by ``forward`` (increasing).
        channels: channels of each returned map.
        strides: input-pixels per feature-pixel of each returned map.
        mean, std: RGB normalisation (0..1 scale) the weights were trained with; the caller
            normalises (``(x / 255 - mean) / std``) before ``forward``.
    """

    def __init__(
        self,
        name: str,
        body: nn.Module,
        layers: tuple[int, ...],
        channels: list[int],
        strides: list[int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.layers = tuple(layers)
        self.channels = list(channels)
        self.strides = list(strides)
        self.mean = tuple(mean)
        self.std = tuple(std)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of a normalised batch.

        Args:
            x: ``(N, 3, H, W)`` float32, already normalised with ``mean`` / ``std``.

        Returns:
            one ``(N, channels[i], ceil(H / strides[i]), ceil(W / strides[i]))`` float32 map per
            entry of ``layers``.
        """
        return list(self.body(x))


def _describe_layers(info: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{i} ({c} ch, stride {s})"
        for i, (c, s) in enumerate(zip(info["channels"], info["strides"], strict=True))
    )


def _check_layers(name: str, info: Mapping[str, Any], layers: Any) -> tuple[int, ...]:
    n = len(info["channels"])
    valid = f"valid layers for {name}: {_describe_layers(info)}"
    try:
        out = tuple(int(i) for i in layers)
        ok = all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    except (TypeError, ValueError):
        ok, out = False, ()
    if not ok or not out:
        raise ConfigError(f"backbone {name}: layers {layers!r} must be a non-empty list of integers; {valid}")
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise ConfigError(f"backbone {name}: layers {list(out)}: {bad} out of range; {valid}")
    if list(out) != sorted(set(out)):
        raise ConfigError(f"backbone {name}: layers {list(out)} must be increasing without repeats; {valid}")
    return out


def create_backbone(cfg: Any, layers: tuple[int, ...] | None = None) -> FeatureExtractor:
    """Build the feature extractor a recipe names, with its weights loaded.

    Args:
        cfg: ``edgekit.config.recipe.BackboneConfig`` (``name``, ``weights``, ``layers``).
        layers: feature stage indices (timm ``out_indices``); ``None`` uses ``cfg.layers``.

    Returns:
        FeatureExtractor in eval mode; ``forward((N, 3, H, W) float32 normalised)`` returns a
        list of ``(N, C_i, H / s_i, W / s_i)`` float32 maps.

    Raises:
        ConfigError: unknown backbone (with closest match), invalid layers (naming the valid
            ones), weights unavailable offline or not matching the architecture.
    """
    import timm

    loader = BACKBONES.get(cfg.name)
    info = BACKBONES.info(cfg.name)
    if layers is None:
        layers = cfg.layers
    if layers is None:
        raise ConfigError(f"backbone {cfg.name}: no feature layers given; {_describe_layers(info)}")
    layers = _check_layers(cfg.name, info, layers)

    # random init ("none", tests) needs no classifier: building one would double the init cost
    classifier = loader(cfg.weights) if cfg.weights != "none" else None
    kwargs = {"features_only": True, "out_indices": layers, "pretrained": False}
    if classifier is None:
        body = timm.create_model(info["timm_name"], **kwargs)
    else:
        # loaded weights replace every tensor: skip the (slow) random init on a meta skeleton
        with torch.device("meta"):
            body = timm.create_model(info["timm_name"], **kwargs)
    _drop_unused_blocks(body)
    channels = list(body.feature_info.channels())
    strides = list(body.feature_info.reduction())
    want_c = [info["channels"][i] for i in layers]
    want_s = [info["strides"][i] for i in layers]
    if channels != want_c or strides != want_s:
        raise ConfigError(
            f"backbone {cfg.name}: timm {timm.__version__} builds {info['timm_name']} layers {list(layers)} "
            f"with channels {channels} / strides {strides}, edgekit declares {want_c} / {want_s}; "
            f"edgekit was checked with timm {CHECKED_TIMM}: pip install timm=={CHECKED_TIMM}"
        )
    if classifier is not None:
        _copy_into_features(cfg.name, classifier, body)
    return FeatureExtractor(cfg.name, body, layers, channels, strides, info["mean"], info["std"]).eval()


def _drop_unused_blocks(body: nn.Module) -> None:
    """Cut blocks after the deepest requested stage.

    timm's ``EfficientNetFeatures`` runs (and exports) every block even when ``out_indices``
    stops early; for lite0 with layers (1, 2, 3) that is 2.4 M dead parameters and the whole
    stride-32 stage. Stage ``s`` is the output of ``blocks[s - 1]`` (stage 0 = stem), so
    ``blocks[:max stage]`` keeps every returned map unchanged. ResNets (``FeatureListNet``)
    already stop after the last returned layer.
    """
    stage_out = getattr(body, "_stage_out_idx", None)
    blocks = getattr(body, "blocks", None)
    if (
        not stage_out
        or not isinstance(blocks, nn.Sequential)
        or getattr(body, "feature_hooks", 1) is not None
    ):
        return
    last = max(stage_out)
    if last < len(blocks):
        body.blocks = blocks[:last]


def _copy_into_features(name: str, classifier: nn.Module, body: nn.Module) -> None:
    full = classifier.state_dict()
    body_keys = body.state_dict().keys()
    # features_only drops the head; every remaining key has the same name in the classifier
    missing = [k for k in body_keys if k not in full]
    if missing:
        raise ConfigError(
            f"backbone {name}: timm features model has keys the classifier lacks ({', '.join(missing[:3])}); "
            f"edgekit was checked with timm {CHECKED_TIMM}: pip install timm=={CHECKED_TIMM}"
        )
    # the classifier is discarded, so the features model may take over its tensors
    _assign(body, {k: full[k] for k in body_keys})


def _assign(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into a (meta-device) skeleton by assignment and check nothing stayed on meta."""
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors not covered by the state dict: {left[:3]}")


def _skeleton(timm_name: str) -> nn.Module:
    import timm

    with torch.device("meta"):
        return timm.create_model(timm_name, pretrained=False)


# ---------------------------------------------------------------------------------------------
# weight loading (used by the registered loaders)


def build_classifier(
    name: str,
    weights: str,
    auto: Callable[[], dict[str, torch.Tensor]] | None = None,
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """timm classifier for backbone ``name`` with ``weights`` loaded strictly.

    Args:
        name: registered backbone name (its info gives the timm name).
        weights: ``"none"`` (random init), ``"auto"`` (``auto()`` when given, else the timm hub),
            or a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict.
        auto: returns the offline state dict (already in timm key names) for ``"auto"``.
        convert: maps a foreign key layout (e.g. lukemelas EfficientNet) to timm keys; called on
            user files and returns them unchanged when they are already timm-style.
    """
    import timm

    info = BACKBONES.info(name)
    timm_name = info["timm_name"]
    if weights == "none":
        return timm.create_model(timm_name, pretrained=False).eval()
    # the skeleton lives on the meta device (no init cost); the weights are assigned into it
    model = _skeleton(timm_name)
    if weights == "auto":
        if auto is not None:
            key: tuple[Any, ...] = ("auto", name)
            if key not in _STATE_CACHE:
                _STATE_CACHE[key] = auto()
            state, source = _STATE_CACHE[key], info["weight_source"]
        else:
            state, source = _hub_state(name, timm_name), "timm hub"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"backbone {name}: weights file {weights} not found; pass an existing .pth/.safetensors "
                "state dict, 'auto' or 'none'"
            )
        st = path.stat()
        key = ("file", name, str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key not in _STATE_CACHE:
            state = read_state_dict(path, name)
            if convert is not None:
                try:
                    state = convert(state, model)
                except ConfigError as exc:
                    raise ConfigError(f"backbone {name}: weights file {path}: {exc}") from exc
            _STATE_CACHE[key] = state
        state, source = _STATE_CACHE[key], str(path)
    state = check_state(model, state, name, source)
    # clones: the cache must stay pristine when a caller fine-tunes the returned model in place
    _assign(model, {k: v.clone() for k, v in state.items()})
    return model.eval()


def read_state_dict(path: str | Path, name: str = "backbone") -> dict[str, torch.Tensor]:
    """Read a state dict file safely (``weights_only=True`` / safetensors), unwrap common
    checkpoint containers and strip ``module.`` / ``model.`` / ``_orig_mod.`` prefixes.

    Returns:
        key → tensor (CPU).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            # never unpickle arbitrary objects from a user file
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / safetensors header errors all mean "not usable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"backbone {name}: weights file {path} cannot be read as a state dict ({first[:160]}); "
            "save it with torch.save(model.state_dict(), FILE) or safetensors"
        ) from exc
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_map(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_map(obj):
        raise ConfigError(
            f"backbone {name}: weights file {path} does not hold a state dict (name -> tensor); "
            "save it with torch.save(model.state_dict(), FILE)"
        )
    return strip_prefixes(dict(obj))


def _is_tensor_map(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``model.``, ``_orig_mod.``) shared by every key."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def check_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], name: str, source: str
) -> dict[str, torch.Tensor]:
    """Check ``state`` matches ``model`` key for key and shape for shape (strict loading) and
    return it ready for ``load_state_dict(strict=True)``; raise a one-line ConfigError listing a
    few missing, unexpected and mis-shaped keys instead of torch's multi-page dump.

    BatchNorm ``num_batches_tracked`` counters may be absent from the file (they do not affect
    inference; zeros are filled in); every other key must match exactly.
    """
    own = model.state_dict()
    state = dict(state)
    for k in own:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with wrong shape (e.g. {'; '.join(shapes[:2])} file vs model)")
        timm_name = BACKBONES.info(name)["timm_name"] if name in BACKBONES else name
        raise ConfigError(
            f"backbone {name}: weights {source} do not match timm {timm_name}: {', '.join(parts)}; "
            f"pass a state dict of timm.create_model({timm_name!r})"
        )
    # a half-precision file must not turn the model into fp16 (assign keeps the file's dtype)
    return {k: v.to(dtype=own[k].dtype) for k, v in state.items()}


def _offline_remedy(name: str) -> str:
    return (
        f"backbone {name}: pretrained weights unavailable offline; pass --weights FILE "
        "(a .pth/.safetensors state dict) or run once with internet to cache them"
    )


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """Cheap connectivity probe: without it huggingface_hub retries for ~50 s before failing."""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_hub_file(timm_name: str) -> Path | None:
    """Local copy of the timm hub weights (HF cache or torch hub dir), if any."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hub_id, fname)
                if isinstance(hit, str):
                    return Path(hit)
        except ImportError:
            pass
    url = getattr(cfg, "url", None)
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if p.is_file():
            return p
    return None


def _hub_state(name: str, timm_name: str) -> dict[str, torch.Tensor]:
    key = ("hub", name)
    if key in _STATE_CACHE:
        return _STATE_CACHE[key]
    cached = _cached_hub_file(timm_name)
    if cached is not None:
        state = read_state_dict(cached, name)
    else:
        if not _hub_reachable():
            raise ConfigError(_offline_remedy(name))
        import timm

        try:
            state = timm.create_model(timm_name, pretrained=True).state_dict()
        except Exception as exc:  # network, hub and file errors all leave the same two remedies
            raise ConfigError(_offline_remedy(name)) from exc
    _STATE_CACHE[key] = state
    return state
