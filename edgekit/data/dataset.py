"""Image folders in the MVTec AD category layout (numpy + OpenCV, no torch)::

    DIR/train/good/*.png                     good images to train on
    DIR/test/good/*.png                      good images to evaluate on
    DIR/test/<defect>/*.png                  defective images, one folder per defect type
    DIR/ground_truth/<defect>/<stem>_mask.png   optional pixel masks (``<stem>.png`` also accepted)

Any extension in ``IMAGE_EXTENSIONS`` (case-insensitive) counts as an image; hidden files are
ignored. Listings are sorted so every run sees the same order.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edgekit.data.images import IMAGE_EXTENSIONS, is_image_file
from edgekit.errors import ConfigError, DataError

GOOD = "good"
_HASH_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sample:
    """One test image: ``label`` 0 good / 1 defect, ``defect_type`` ``"good"`` for good images,
    ``mask_path`` the ground-truth mask or None (good images, or no mask shipped)."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class DatasetIndex:
    """A scanned dataset: sorted good training images and test samples (good first, then defect
    types in alphabetical order)."""

    root: Path
    train_good: list[Path]
    test: list[Sample] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)

    @property
    def n_test_good(self) -> int:
        return sum(1 for s in self.test if s.label == 0)

    @property
    def n_test_defect(self) -> int:
        return sum(1 for s in self.test if s.label == 1)

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)


def _accepted() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name; [] if missing."""
    d = Path(folder)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name)


def _find_mask(masks: dict[str, Path], stem: str) -> Path | None:
    """The mask for image ``stem``: ``<stem>_mask.<ext>`` first, then ``<stem>.<ext>``."""
    return masks.get(f"{stem}_mask") or masks.get(stem)


def _mask_files(root: Path, defect: str) -> dict[str, Path]:
    """Stem → mask file in ``ground_truth/<defect>/`` (one listing per folder, not a stat per image)."""
    return {p.stem: p for p in reversed(list_images(root / "ground_truth" / defect))}


def scan_dataset(data_dir: str | os.PathLike[str], require_test: bool = False) -> DatasetIndex:
    """Index a dataset folder in the MVTec AD layout.

    Args:
        data_dir: the category folder (holding ``train/`` and optionally ``test/``).
        require_test: raise if there is no ``test/good`` (evaluation, calibration).
    Returns:
        DatasetIndex with sorted paths; defect folders without images are left out.
    Raises:
        DataError: folder missing, no ``train/good``, ``train/good`` without images, or (with
            ``require_test``) no ``test/good`` with images.
    """
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found; check the path (expected train/good/ inside)")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a dataset folder; pass the folder holding train/good/")
    train_dir = root / "train" / GOOD
    if not train_dir.is_dir():
        raise DataError(
            f"{root}: no train/good/ folder; put good training images in {train_dir} (MVTec AD layout)"
        )
    train_good = list_images(train_dir)
    if not train_good:
        raise DataError(f"{train_dir}: no images; add good images with one of the extensions {_accepted()}")

    test: list[Sample] = []
    defect_types: list[str] = []
    test_dir = root / "test"
    test_good = list_images(test_dir / GOOD)
    if require_test and not test_good:
        where = test_dir / GOOD
        why = "has no images" if where.is_dir() else "is missing"
        raise DataError(f"{where}: {why}; add good test images (and defect images in test/<defect>/) to evaluate")
    test.extend(Sample(p, 0, GOOD, None) for p in test_good)
    if test_dir.is_dir():
        for d in sorted((d for d in test_dir.iterdir() if d.is_dir() and d.name != GOOD), key=lambda d: d.name):
            if d.name.startswith("."):
                continue
            images = list_images(d)
            if not images:
                continue
            defect_types.append(d.name)
            masks = _mask_files(root, d.name)
            test.extend(Sample(p, 1, d.name, _find_mask(masks, p.stem)) for p in images)
    return DatasetIndex(root=root, train_good=train_good, test=test, defect_types=defect_types)


def read_mask(path: str | os.PathLike[str], hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as (H, W) bool (any non-zero colour channel = defect).

    Args:
        path: mask image (8/16-bit grey, RGB or RGBA; alpha is ignored).
        hw: (height, width) to resize to with nearest-neighbour (no new values), or None.
    Raises:
        DataError: missing or undecodable mask file.
    """
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{p}: cannot read mask file ({exc.strerror or type(exc).__name__}); check the path") from None
    raw = None
    if data.size:
        try:
            raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            raw = None
    if raw is None or raw.size == 0:
        raise DataError(f"{p}: cannot decode mask image; replace or remove the file")
    if raw.ndim == 3:
        channels = raw[:, :, :3] if raw.shape[2] >= 3 else raw[:, :, :1]
        mask = np.any(channels != 0, axis=2)
    else:
        mask = raw != 0
    if hw is not None and mask.shape != tuple(hw):
        h, w = int(hw[0]), int(hw[1])
        mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return np.ascontiguousarray(mask)


def dataset_hash(paths: Sequence[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None) -> str:
    """Fingerprint of a set of files, to record which data a run or calibration used.

    sha256 over, for each file in sorted relative-path order: the relative POSIX path, the size and
    the first and last 64 KiB of content. Fast (≤128 KiB read per file) and independent of mtimes,
    so copying a dataset keeps its hash; an edit in the middle of a file larger than 128 KiB that
    keeps its size is not detected (acceptable for a provenance record).

    Args:
        paths: image (or any) files.
        root: what paths are relative to; default their common parent folder.
    Returns:
        "sha256:<hex>".
    """
    ps = [Path(p) for p in paths]
    if root is None:
        root_p = Path(os.path.commonpath([str(p.resolve().parent) for p in ps])) if ps else Path(".")
    else:
        root_p = Path(root).resolve()
    entries = []
    for p in ps:
        rp = p.resolve()
        try:
            rel = rp.relative_to(root_p).as_posix()
        except ValueError:
            rel = rp.as_posix()
        entries.append((rel, rp))
    h = hashlib.sha256()
    for rel, rp in sorted(entries, key=lambda e: e[0]):
        try:
            size = rp.stat().st_size
            with open(rp, "rb") as f:
                head = f.read(_HASH_CHUNK_BYTES)
                if size > 2 * _HASH_CHUNK_BYTES:
                    f.seek(size - _HASH_CHUNK_BYTES)
                    tail = f.read(_HASH_CHUNK_BYTES)
                else:
                    tail = f.read()
        except OSError as exc:
            raise DataError(f"{rp}: cannot read file for hashing ({exc.strerror}); check the dataset") from None
        h.update(os.fsencode(rel) + b"\0" + str(size).encode() + b"\0")  # bytes: any file name
        h.update(hashlib.sha256(head).digest())
        h.update(hashlib.sha256(tail).digest())
    return "sha256:" + h.hexdigest()


def split_train_val(
    paths: Sequence[Path], val_fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Deterministic split of good images into train and validation lists.

    The paths are sorted first, so the split depends only on the file names and the seed, not on
    the listing order. ``round(n * val_fraction)`` images (at least 1 when the fraction is > 0 and
    n ≥ 2) go to validation; train always keeps at least one image. Both lists come back sorted.

    Raises:
        ConfigError: ``val_fraction`` outside [0, 1).
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction: {val_fraction} must be in [0, 1)")
    items = sorted((Path(p) for p in paths), key=lambda p: p.as_posix())
    n = len(items)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, max(0, n - 1))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(items) if i not in val_idx]
    val = [p for i, p in enumerate(items) if i in val_idx]
    return train, val
