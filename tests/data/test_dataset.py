"""edgekit.data.dataset: MVTec layout scanning, clear errors, masks, hashing, splitting."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgekit.data.dataset import Sample, dataset_hash, read_mask, scan_dataset, split_train_val
from edgekit.errors import ConfigError, DataError


def _img(path: Path, value: int = 128, hw: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*hw, 3), value, np.uint8))
    return path


@pytest.fixture()
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "cat"
    for name in ("002.png", "000.png", "001.JPG"):
        _img(root / "train" / "good" / name)
    (root / "train" / "good" / "readme.txt").write_text("not an image")
    (root / "train" / "good" / "._000.png").write_bytes(b"\0\0")  # macOS resource fork
    _img(root / "test" / "good" / "000.png")
    _img(root / "test" / "scratch" / "000.png")
    _img(root / "test" / "scratch" / "001.png")
    _img(root / "test" / "hole" / "000.bmp")
    (root / "test" / "empty_type").mkdir()
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    cv2.imwrite(str(root / "ground_truth" / "scratch" / "000_mask.png"), m)
    (root / "ground_truth" / "hole").mkdir(parents=True)
    cv2.imwrite(str(root / "ground_truth" / "hole" / "000.png"), m)  # plain-stem mask also accepted
    return root


def test_scan_sorted_and_complete(mvtec: Path) -> None:
    idx = scan_dataset(mvtec, require_test=True)
    assert [p.name for p in idx.train_good] == ["000.png", "001.JPG", "002.png"]
    assert idx.defect_types == ["hole", "scratch"]  # empty folders left out, alphabetical
    assert [(s.path.name, s.label, s.defect_type) for s in idx.test] == [
        ("000.png", 0, "good"), ("000.bmp", 1, "hole"), ("000.png", 1, "scratch"), ("001.png", 1, "scratch"),
    ]
    masks = {(s.defect_type, s.path.name): s.mask_path for s in idx.test}
    assert masks[("good", "000.png")] is None
    assert masks[("scratch", "000.png")].name == "000_mask.png"
    assert masks[("hole", "000.bmp")].name == "000.png"
    assert masks[("scratch", "001.png")] is None  # a defect image without a mask is still a sample
    assert idx.n_test_good == 1 and idx.n_test_defect == 3 and idx.has_masks
    assert isinstance(idx.test[0], Sample)
    assert scan_dataset(mvtec) == idx  # deterministic


def test_train_only_dataset(tmp_path: Path) -> None:
    _img(tmp_path / "d" / "train" / "good" / "a.png")
    idx = scan_dataset(tmp_path / "d")
    assert len(idx.train_good) == 1 and idx.test == [] and idx.defect_types == []


def test_errors_name_the_folder_and_the_fix(tmp_path: Path, mvtec: Path) -> None:
    with pytest.raises(DataError, match=r"nope: dataset folder not found"):
        scan_dataset(tmp_path / "nope")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        scan_dataset(f)
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match=r"no train/good/ folder; put good training images in"):
        scan_dataset(tmp_path / "e")
    (tmp_path / "e" / "train" / "good").mkdir(parents=True)
    (tmp_path / "e" / "train" / "good" / "x.txt").write_text("x")
    with pytest.raises(DataError) as ei:
        scan_dataset(tmp_path / "e")
    assert "train/good: no images" in str(ei.value).replace(os.sep, "/") and ".png" in str(ei.value)
    with pytest.raises(DataError, match=r"test/good: is missing"):
        _img(tmp_path / "e" / "train" / "good" / "a.png")
        scan_dataset(tmp_path / "e", require_test=True)
    shutil.rmtree(mvtec / "test" / "good")
    (mvtec / "test" / "good").mkdir()
    with pytest.raises(DataError, match=r"test/good: has no images"):
        scan_dataset(mvtec, require_test=True)


def test_read_mask_bool_and_nearest_resize(mvtec: Path) -> None:
    p = mvtec / "ground_truth" / "scratch" / "000_mask.png"
    m = read_mask(p)
    assert m.dtype == bool and m.shape == (16, 16) and m.sum() == 16
    small = read_mask(p, (8, 8))
    assert small.shape == (8, 8) and small.sum() == 4 and small[2:4, 2:4].all()
    big = read_mask(p, (32, 48))
    assert big.shape == (32, 48) and set(np.unique(big)) == {False, True}


def test_read_mask_16bit_and_colour(tmp_path: Path) -> None:
    m16 = np.zeros((4, 4), np.uint16)
    m16[0, 0] = 1  # would vanish in an 8-bit conversion
    cv2.imwrite(str(tmp_path / "m16.png"), m16)
    assert read_mask(tmp_path / "m16.png").sum() == 1
    c = np.zeros((4, 4, 3), np.uint8)
    c[1, 1, 2] = 255
    cv2.imwrite(str(tmp_path / "c.png"), c)
    assert read_mask(tmp_path / "c.png")[1, 1] and read_mask(tmp_path / "c.png").sum() == 1
    (tmp_path / "bad.png").write_text("x")
    with pytest.raises(DataError, match="cannot decode mask"):
        read_mask(tmp_path / "bad.png")
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask(tmp_path / "missing.png")


def test_dataset_hash_stable_and_sensitive(mvtec: Path, tmp_path: Path) -> None:
    files = scan_dataset(mvtec).train_good
    h = dataset_hash(files)
    assert h.startswith("sha256:") and len(h) == 7 + 64
    assert dataset_hash(list(reversed(files))) == h  # order-independent
    copy = tmp_path / "copy"
    shutil.copytree(mvtec, copy)
    copied = scan_dataset(copy).train_good
    os.utime(copied[0], (1, 1))
    assert dataset_hash(copied) == h  # location and mtime do not matter
    _img(copied[0], value=3)
    assert dataset_hash(copied) != h  # content does
    before = dataset_hash(scan_dataset(copy).train_good)
    copied[1].rename(copied[1].with_name("zzz.JPG"))
    assert dataset_hash(scan_dataset(copy).train_good) != before  # names do


def test_dataset_hash_reads_head_and_tail(tmp_path: Path) -> None:
    a = tmp_path / "a.bin"
    data = bytearray(300_000)
    a.write_bytes(bytes(data))
    h = dataset_hash([a])
    data[-1] = 1
    a.write_bytes(bytes(data))
    assert dataset_hash([a]) != h
    data[-1] = 0
    data[150_000] = 1  # the middle of a large file is not read (documented trade-off)
    a.write_bytes(bytes(data))
    assert dataset_hash([a]) == h
    b = tmp_path / "b.bin"
    b.write_bytes(bytes(300_000))
    assert dataset_hash([b]) != h  # the relative name is part of the hash


def test_split_train_val_deterministic(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i:03d}.png" for i in range(20)]
    tr, va = split_train_val(paths, 0.2, seed=1)
    assert len(va) == 4 and len(tr) == 16 and not set(tr) & set(va) and set(tr) | set(va) == set(paths)
    assert split_train_val(list(reversed(paths)), 0.2, seed=1) == (tr, va)
    assert split_train_val(paths, 0.2, seed=2) != (tr, va)
    assert tr == sorted(tr) and va == sorted(va)
    assert split_train_val(paths, 0.0, 0) == (sorted(paths), [])
    assert [len(x) for x in split_train_val(paths[:2], 0.01, 0)] == [1, 1]
    assert [len(x) for x in split_train_val(paths[:1], 0.5, 0)] == [1, 0]
    with pytest.raises(ConfigError, match="val_fraction"):
        split_train_val(paths, 1.0, 0)
