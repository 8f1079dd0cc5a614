"""Property-based tests over the input surfaces (hypothesis): image bytes of every format OpenCV
reads (valid, truncated, bit-flipped, header-only, huge declared size), file names, recipe and
deploy YAML, manifest JSON. Each case ends in success, a counted skip with a one-line message
naming the file, or a one-line refusal (an EdgekitError) — never another exception, never a hang,
never a good image lost beside a bad one. Bounded examples here; `HYPOTHESIS_PROFILE=slow` runs more."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from edgekit.errors import EdgekitError

# Profiles (deterministic default, exploring `slow`) are registered in tests/conftest.py.


def _one_line(exc: BaseException) -> None:
    """A refusal: an EdgekitError whose message is one line per problem (a config with three wrong
    keys lists three lines, each naming the file and the key), no traceback, printable."""
    assert isinstance(exc, EdgekitError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    lines = msg.splitlines()
    assert msg and "Traceback" not in msg and 1 <= len(lines) <= 20 and all(line.strip() for line in lines)
    msg.encode("utf-8")


# ----------------------------------------------------------------------------- images
def _encoded(kind: str, h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "png16":
        arr, ext = rng.integers(0, 65535, (h, w), dtype=np.uint16), ".png"
    elif kind == "png_grey_alpha":
        arr, ext = rng.integers(0, 255, (h, w, 4), dtype=np.uint8), ".png"
        arr[..., 1] = arr[..., 0]
        arr[..., 2] = arr[..., 0]
    elif kind == "jpg_grey":
        arr, ext = rng.integers(0, 255, (h, w), dtype=np.uint8), ".jpg"
    else:
        arr, ext = rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "." + kind
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def _huge_png(width: int, height: int) -> bytes:
    """A PNG header declaring a huge size (a decompression-bomb shape) with a valid CRC."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


KINDS = ["png", "jpg", "bmp", "tiff", "webp", "png16", "png_grey_alpha", "jpg_grey"]
MUTATIONS = st.one_of(
    st.just(("none", 0, 0)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99, allow_subnormal=False), st.just(0)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0, allow_subnormal=False), st.integers(1, 255)),
    st.tuples(st.just("header"), st.just(0.0), st.integers(4, 64)),
)


def _mutate(data: bytes, m: tuple[str, float, int]) -> bytes:
    kind, where, k = m
    if kind == "truncate":
        return data[: int(len(data) * where)]
    if kind == "flip":
        i = min(len(data) - 1, int(len(data) * where))
        return data[:i] + bytes([data[i] ^ k]) + data[i + 1:]
    if kind == "header":
        return data[:k]
    return data


@given(kind=st.sampled_from(KINDS), h=st.integers(1, 48), w=st.integers(1, 96), seed=st.integers(0, 3),
       mutation=MUTATIONS)
def test_read_image_returns_rgb_or_one_line_refusal(tmp_path_factory, kind, h, w, seed, mutation) -> None:
    from edgekit.data.images import read_image

    data = _mutate(_encoded(kind, h, w, seed), mutation)
    ext = {"png16": "png", "png_grey_alpha": "png", "jpg_grey": "jpg"}.get(kind, kind)
    p = tmp_path_factory.mktemp("img") / f"x.{ext}"
    p.write_bytes(data)
    try:
        img = read_image(p)
    except Exception as exc:  # noqa: BLE001 - what kind of exception is the property
        _one_line(exc)
        assert "x." in str(exc)  # the message names the file
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] >= 1
    if mutation[0] == "none":
        assert img.shape[:2] == (h, w)


@pytest.mark.parametrize("w, h", [(100_000, 100_000), (2**31 - 1, 1), (1, 2**31 - 1)])
def test_a_huge_declared_size_is_refused_quickly(tmp_path, w, h) -> None:
    from edgekit.data.images import read_image

    p = tmp_path / "bomb.png"
    p.write_bytes(_huge_png(w, h))
    with pytest.raises(EdgekitError) as ei:
        read_image(p)
    _one_line(ei.value)


@given(st.lists(st.tuples(st.sampled_from(KINDS[:5]), MUTATIONS), min_size=2, max_size=6))
def test_no_good_image_is_lost_beside_bad_ones(tmp_path_factory, files) -> None:
    """A folder mixing good and broken images: every good one becomes tiles, every broken one is a
    counted skip with a message naming it."""
    from edgekit.data.images import read_image
    from edgekit.data.preprocess import PreprocessSpec
    from edgekit.train import load_tiles

    d = tmp_path_factory.mktemp("mix")
    paths, good = [], 0
    for i, (kind, m) in enumerate(files):
        p = d / f"{i:02d}.{kind}"
        p.write_bytes(_mutate(_encoded(kind, 32, 32, i), m))
        paths.append(p)
        try:
            read_image(p)
            good += 1
        except EdgekitError:
            pass
    spec = PreprocessSpec(size=32)
    tiles, skipped = load_tiles(paths, spec, show=False)
    assert len(skipped) == len(paths) - good
    assert len(tiles) >= good
    for msg in skipped:
        assert any(p.name in msg for p in paths) and "\n" not in msg


@given(st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\0" not in b
                                                         and b not in (b".", b"..")), min_size=1, max_size=6,
                unique=True))
def test_any_file_names_in_a_dataset_are_listed_hashed_and_shown(tmp_path_factory, names) -> None:
    from edgekit.data.dataset import dataset_hash, list_images
    from edgekit.paths import shown

    d = tmp_path_factory.mktemp("names")
    png = _encoded("png", 8, 8, 0)
    for n in names:
        with open(os.fsencode(d) + b"/" + n + b".png", "wb") as f:
            f.write(png)
    found = list_images(d)
    assert len(found) == sum(1 for n in names if not n.startswith(b"."))  # dot-files (.DS_Store, ._x) skipped
    dataset_hash(found).encode("ascii")
    for p in found:
        shown(p).encode("utf-8")


# ----------------------------------------------------------------------------- YAML
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_subnormal=False),
                    st.text(max_size=12), st.binary(max_size=4))
TREES = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                  st.dictionaries(st.text(max_size=10), c, max_size=4)),
                     max_leaves=12)
KEYS = ["bundle", "source", "outputs", "decision", "scheduler", "events", "archive", "metrics", "line",
        "health", "encoder", "backend", "ui", "trust", "type", "path", "pulse_ms", "delay_ms"]
NASTY_YAML = [
    "a: &x [1, 2]\nb: *x\n", "!!python/object/apply:os.system ['true']\n", "bundle: !!binary aGVsbG8=\n",
    "? [1, 2]\n: x\n", "a: *undefined\n", "---\n- 1\n---\n- 2\n", "\t- tab\n", "x: [1, 2\n", "",
    "bundle: b\nsource: &s {type: sim}\noutputs: [*s]\n", "\xff\xfe",
]


@given(st.one_of(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=6), TREES))
@example(data={"\x1e\x1e": None})  # found by CI: a record separator in a key split the message
@example(data={"bundle": "b", "a\u2028b": 1, " ": 2, "": 3})
def test_deploy_config_yaml_is_a_config_or_one_line_refusal(tmp_path_factory, data) -> None:
    from edgekit.config.run import load_run_config

    p = tmp_path_factory.mktemp("cfg") / "c.yaml"
    try:
        p.write_text(yaml.safe_dump(data), encoding="utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not representable as YAML text: nothing a user could write
    try:
        load_run_config(p)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@given(st.one_of(st.dictionaries(st.sampled_from(["name", "method", "backbone", "input", "train", "score",
                                                   "build", "type", "size", "epochs"]), TREES, max_size=6),
                 TREES))
def test_recipe_yaml_is_a_recipe_or_one_line_refusal(tmp_path_factory, data) -> None:
    from edgekit.config.recipe import load_recipe

    p = tmp_path_factory.mktemp("rec") / "r.yaml"
    try:
        p.write_text(yaml.safe_dump(data), encoding="utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        return
    try:
        load_recipe(p)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)


@pytest.mark.parametrize("text", NASTY_YAML)
def test_yaml_anchors_tags_and_broken_syntax(tmp_path, text) -> None:
    from edgekit.config.recipe import load_recipe
    from edgekit.config.run import load_run_config

    p = tmp_path / "c.yaml"
    p.write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff\xfe" else b"\xff\xfe\x00")
    for loader in (load_run_config, load_recipe):
        try:
            loader(p)
        except Exception as exc:  # noqa: BLE001
            _one_line(exc)


# ----------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def real_manifest(tiny_bundle) -> dict:
    return json.loads((Path(tiny_bundle) / "manifest.json").read_text())


def _perturb(m: dict, path: list[str], value) -> dict:
    out = json.loads(json.dumps(m))
    cur = out
    for k in path[:-1]:
        if not isinstance(cur, dict) or k not in cur:
            return out
        cur = cur[k]
    if isinstance(cur, dict):
        cur[path[-1]] = value
    return out


@given(st.one_of(
    TREES,
    st.tuples(st.sampled_from([["format_version"], ["models"], ["models", "fp32"], ["models", "fp32", "file"],
                               ["files"], ["thresholds"], ["thresholds", "reject_edge"], ["preprocess"],
                               ["preprocess", "size"], ["inputs"], ["bundle_id"]]), TREES),
))
def test_manifest_json_is_a_bundle_or_one_line_refusal(tmp_path_factory, tiny_bundle, real_manifest, case) -> None:
    import shutil

    from edgekit.bundle.io import load_bundle

    d = tmp_path_factory.mktemp("b") / "b"
    shutil.copytree(tiny_bundle, d)
    m = _perturb(real_manifest, *case) if isinstance(case, tuple) else case
    (d / "manifest.json").write_text(json.dumps(m, default=str), encoding="utf-8")
    try:
        load_bundle(d)
    except Exception as exc:  # noqa: BLE001
        _one_line(exc)
