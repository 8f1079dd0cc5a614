"""Convert the ELPV solar-cell electroluminescence dataset (pip package ``elpv-dataset``; Buerhop-
Lutz et al. 2018, Deitsch et al. 2019: 2624 cells of 300×300 px, 8-bit greyscale, mono- and
polycrystalline) into the MVTec AD layout.

Labelling rule. Each cell carries a defect probability from expert votes, one of 0, 1/3, 2/3, 1:

- probability == 0 → normal: split deterministically (seeded permutation) into ``train/good``
  (75 %) and ``test/good`` (25 %);
- probability ≥ 2/3 (the "≥ 0.67" rule; the stored value is 0.6667, so the comparison uses 2/3
  with a small tolerance) → ``test/defect``;
- probability 1/3 → left out: experts were unsure, so the cell is neither good nor defect.

ELPV has no pixel masks, so no ``ground_truth/`` is written (pixel AUROC is null). The package's
images are never copied into the repository; the output folder is the user's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgekit.errors import ConfigError, DataError

DEFECT_MIN_PROBABILITY = 2.0 / 3.0
_TOL = 1e-3
TRAIN_FRACTION = 0.75
_MARKER = "elpv.json"


@dataclass(frozen=True)
class ElpvSplit:
    """Indices (into the package's arrays) of one cell type's cells per output folder."""

    train_good: list[int]
    test_good: list[int]
    test_defect: list[int]
    excluded: list[int]


def split_elpv(
    probabilities: np.ndarray,
    types: np.ndarray,
    cell_type: str,
    seed: int = 0,
    train_fraction: float = TRAIN_FRACTION,
) -> ElpvSplit:
    """Apply the labelling rule (module docstring) to one cell type.

    Args:
        probabilities: (N,) float defect probabilities.
        types: (N,) str cell types ("mono" / "poly").
        cell_type: which type to keep.
        seed: seed of the permutation that splits normal cells into train/test.
        train_fraction: share of normal cells for training.
    Returns:
        ElpvSplit with sorted indices.
    Raises:
        ConfigError: unknown cell type or a fraction outside (0, 1).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    kinds = np.asarray(types).astype(str)
    valid = sorted(set(kinds.tolist()))
    if cell_type not in valid:
        raise ConfigError(f"--type: {cell_type!r} is not an ELPV cell type (valid: {', '.join(valid)})")
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction: {train_fraction} must be in (0, 1)")
    idx = np.flatnonzero(kinds == cell_type)
    normal = idx[np.abs(probs[idx]) <= 1e-9]
    defect = idx[probs[idx] >= DEFECT_MIN_PROBABILITY - _TOL]
    excluded = np.setdiff1d(idx, np.concatenate([normal, defect]))
    order = np.random.default_rng(seed).permutation(len(normal))
    n_train = int(round(len(normal) * train_fraction))
    train = np.sort(normal[order[:n_train]])
    test = np.sort(normal[order[n_train:]])
    return ElpvSplit(train.tolist(), test.tolist(), np.sort(defect).tolist(), excluded.tolist())


def _load(labels_csv: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(images (N, 300, 300) uint8, probabilities (N,), types (N,), file stems) from the package."""
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataError(
            "the ELPV data is not installed; run `pip install elpv-dataset` (or `pip install edgekit[train]`)"
        ) from None
    import elpv_dataset.utils as mod

    csv = Path(labels_csv) if labels_csv else Path(mod.__file__).parent / "data" / "labels.csv"
    if not csv.is_file():
        raise DataError(f"{csv}: ELPV labels file not found; reinstall with `pip install --force-reinstall elpv-dataset`")
    images, probs, types = load_dataset(str(csv))
    # the package does not return file names; read them from the same labels file, same order
    names = np.genfromtxt(str(csv), dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    stems = [Path(n).stem for n in np.char.decode(np.atleast_1d(names["path"]))]
    if len(stems) != len(probs):
        raise DataError(f"{csv}: labels and images disagree ({len(stems)} vs {len(probs)}); reinstall elpv-dataset")
    return np.asarray(images), np.asarray(probs), np.asarray(types), stems


def write_elpv_dataset(out: str | Path, cell_type: str = "mono", seed: int = 0, labels_csv: str | None = None) -> str:
    """Write the ELPV cells of one type into ``out`` in the MVTec AD layout (rule in the module
    docstring) and return a one-line summary with counts.

    Args:
        out: output folder (new or empty, or an earlier output of this function).
        cell_type: "mono" or "poly".
        seed: seed of the train/test split of normal cells.
        labels_csv: a labels file in the package's format (default: the package's own); lets a
            test convert a small subset through the package's real loader.
    Raises:
        DataError: package missing, output folder not empty.
        ConfigError: unknown cell type.
    """
    out_p = Path(out)
    if out_p.exists() and not out_p.is_dir():
        raise DataError(f"{out_p}: exists and is a file; choose a folder path for the dataset")
    if out_p.is_dir() and any(out_p.iterdir()) and not (out_p / _MARKER).is_file():
        raise DataError(f"{out_p}: folder is not empty; choose a new output folder or empty it")
    images, probs, types, stems = _load(labels_csv)
    split = split_elpv(probs, types, cell_type, seed)
    if out_p.is_dir():
        import shutil

        for sub in ("train", "test"):
            shutil.rmtree(out_p / sub, ignore_errors=True)
    targets = (("train/good", split.train_good), ("test/good", split.test_good), ("test/defect", split.test_defect))
    for sub, indices in targets:
        d = out_p / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in indices:
            if not cv2.imwrite(str(d / f"{stems[i]}.png"), images[i]):
                raise DataError(f"{d}: cannot write images; check the folder is writable")
    meta = {
        "source": "elpv-dataset",
        "cell_type": cell_type,
        "seed": seed,
        "rule": "normal: p == 0 (75/25 train/test); defect: p >= 2/3; 1/3 excluded",
        "counts": {"train_good": len(split.train_good), "test_good": len(split.test_good),
                   "test_defect": len(split.test_defect), "excluded": len(split.excluded)},
    }
    (out_p / _MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return (
        f"wrote ELPV {cell_type} cells to {out_p}: {len(split.train_good)} train/good, {len(split.test_good)} "
        f"test/good (defect probability 0, split 75/25 with seed {seed}), {len(split.test_defect)} test/defect "
        f"(probability >= 2/3), {len(split.excluded)} excluded (probability 1/3); no masks"
    )
