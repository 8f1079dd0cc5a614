"""k-means for CSE's good-product centres (numpy only; no sklearn anywhere).

CSE scores an image by its minimum cosine distance to k centres of the training embeddings.
The centres are found with k-means++ seeding and Lloyd iterations on L2-normalised embeddings
(so Euclidean k-means matches the cosine geometry used for scoring), then each centre is replaced
by the nearest real training embedding, which keeps the centres on the data manifold (CSE paper,
Thomine & Snoussi)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class KMeansResult:
    """``centres`` (K, D) float32 real embeddings (rows of the input), ``indices`` (K,) their row
    numbers, ``labels`` (N,) cluster of every embedding, ``inertia`` mean cosine distance of the
    embeddings to their nearest centre."""

    centres: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    inertia: float

    @property
    def sizes(self) -> list[int]:
        return [int((self.labels == i).sum()) for i in range(len(self.indices))]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length. (N, D) → (N, D) float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 − cos between every row of ``a`` (N, D) and ``b`` (K, D) → (N, K) float64."""
    return 1.0 - l2_normalize(a) @ l2_normalize(b).T


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on rows of ``x``; returns (k, D)."""
    n = x.shape[0]
    centres = [x[int(rng.integers(0, n))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0.0:  # all remaining points coincide with a centre
            idx = int(rng.integers(0, n))
        else:
            idx = int(rng.choice(n, p=d2 / total))
        centres.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    return np.stack(centres)


def kmeans(embeddings: np.ndarray, k: int, seed: int = 0, iters: int = 100, tol: float = 1e-7) -> KMeansResult:
    """Cluster embeddings and snap each centre to its nearest real embedding.

    Args:
        embeddings: (N, D) float embeddings (any scale; clustering uses their directions).
        k: number of centres, 1 <= k <= N.
        seed: seeds k-means++ (same seed and data → same centres).
    Returns:
        KMeansResult; ``centres`` are exact copies of distinct input rows.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    n = emb.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"method.k: {k} centres need at least {k} training embeddings, got {n} (lower k or add good images)")
    x = l2_normalize(emb)
    rng = np.random.default_rng(seed)
    c = _kmeanspp(x, k, rng)
    for _ in range(iters):
        d = _sqdist(x, c)
        labels = d.argmin(1)
        new = c.copy()
        for j in range(k):
            members = x[labels == j]
            if len(members):
                new[j] = members.mean(0)
            else:  # an empty cluster takes the point farthest from its centre
                new[j] = x[int(d.min(1).argmax())]
        shift = float(((new - c) ** 2).sum())
        c = new
        if shift < tol:
            break
    # snap to the nearest real embedding, each real embedding used at most once
    dist = 1.0 - x @ l2_normalize(c).T  # (N, K)
    chosen: list[int] = []
    for j in np.argsort(dist.min(0)):  # the best-matched centres choose first
        order = np.argsort(dist[:, j], kind="stable")
        idx = next(int(i) for i in order if int(i) not in chosen)
        chosen.append(idx)
    # keep centre order = cluster order
    indices = np.empty(k, dtype=np.int64)
    for j, idx in zip(np.argsort(dist.min(0)), chosen, strict=True):
        indices[j] = idx
    centres = emb[indices].astype(np.float32)
    final = cosine_distances(emb, centres)
    return KMeansResult(centres, indices, final.argmin(1), float(final.min(1).mean()))


def _sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (x**2).sum(1)[:, None] - 2.0 * x @ c.T + (c**2).sum(1)[None, :]


def centres_sha256(centres: np.ndarray) -> str:
    """sha256 of the centres as little-endian float32 bytes (shape-independent of layout)."""
    return hashlib.sha256(np.ascontiguousarray(centres, dtype="<f4").tobytes()).hexdigest()


def _good_images(data_dir: str | Path) -> list[Path]:
    """Good images for re-clustering: ``DIR/train/good`` (MVTec layout) or images directly in DIR."""
    from edgekit.data.dataset import list_images, scan_dataset
    from edgekit.errors import DataError

    root = Path(data_dir)
    if (root / "train" / "good").is_dir():
        return scan_dataset(root).train_good
    paths = list_images(root)
    if not paths:
        raise DataError(f"{root}: no good images found; pass a folder of good images or a dataset with train/good/")
    return paths


def _load_cse_run(run_dir: str | Path, device: str, what: str) -> Any:
    """A trained run that is a CSE run, or ConfigError naming what needs one."""
    from edgekit.train import load_run

    run = load_run(run_dir, device=device)
    if run.recipe.method.get("type") != "cse" or not hasattr(run.model, "fit_centres"):
        raise ConfigError(f"{run.path}: {what} applies to CSE runs only (this run is {run.recipe.method.get('type')!r})")
    return run


def _train_embeddings(run: Any, train_paths: Sequence[Path], where: str | Path) -> tuple[Any, list[str]]:
    """Embeddings (M, E, g, g) of the tiles of good images, as clustered in training; plus the
    unreadable files skipped."""
    from edgekit.errors import DataError
    from edgekit.train import _batches, load_tiles, normalise

    tiles, skipped = load_tiles(train_paths, run.spec, "decode")
    if len(tiles) == 0:
        raise DataError(f"{where}: no readable good images; check the folder")
    dev = next(run.model.parameters()).device
    bs = run.recipe.train.batch_size
    return run.model.collect_embeddings(normalise(b.to(dev), run.spec) for b in _batches(tiles, bs, False, None)), skipped


def recluster_run(run_dir: str | Path, data_dir: str | Path, k: int | None = None, device: str = "cpu",
                  quiet: bool = False) -> dict[str, Any]:
    """Recompute a CSE run's centres from new good images without retraining the embedder
    (new lot, same product). The images are split like training (``train.val_fraction``,
    ``train.seed``): k-means runs on the train part, the provisional threshold is re-derived on
    the held-out part. ``model.pt`` and ``run.json`` are rewritten; every weight except the
    centres stays bit-identical.

    Args:
        run_dir: a trained CSE run directory.
        data_dir: folder of good images, or a dataset with ``train/good/``.
        k: number of centres (None keeps the run's current k).
    Returns:
        the facts recorded in run.json (old/new centre hashes, k, image counts).
    """
    from edgekit.bundle.io import write_json_atomic
    from edgekit.data.dataset import dataset_hash, split_train_val
    from edgekit.train import _save_atomic, load_tiles, provisional_calibration

    run = _load_cse_run(run_dir, device, "recluster")
    model = run.model
    paths = _good_images(data_dir)
    tr = run.recipe.train
    train_paths, val_paths = split_train_val(paths, tr.val_fraction, tr.seed)
    emb, skipped = _train_embeddings(run, train_paths, data_dir)
    val_tiles, _ = load_tiles(val_paths, run.spec, "decode val")
    dev = next(model.parameters()).device
    old = model.export_info()
    k_new = int(k) if k is not None else old["k"]
    facts = model.fit_centres(emb, k=k_new)
    _save_atomic({"model": model.state_dict()}, run.path / "model.pt")
    record = {
        "data_dir": str(Path(data_dir).resolve()), "data_hash": dataset_hash(paths),
        "n_train_images": len(train_paths), "n_val_images": len(val_paths), "n_train_tiles": int(emb.shape[0]),
        "skipped": skipped, "k": k_new, "old_centres_sha256": old["centres_sha256"],
        "centres_sha256": facts["centres_sha256"], "cluster_sizes": facts["cluster_sizes"],
        "mean_train_distance": facts["mean_train_distance"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    info = dict(run.info)
    info["method_facts"] = facts
    info["recluster"] = [*info.get("recluster", []), record]
    info["calibration"] = provisional_calibration(model, val_tiles, run.spec, tr.batch_size, dev)
    write_json_atomic(run.path / "run.json", info)
    if not quiet:
        print(f"{run.path}: {k_new} centre(s) from {len(train_paths)} images "
              f"({old['centres_sha256'][:12]} -> {facts['centres_sha256'][:12]}); embedder unchanged; "
              "re-run `edgekit build` (and calibrate) to ship them")
    return record


def sweep_k(run_dir: str | Path, data_dir: str | Path, ks: Sequence[int], device: str = "cpu",
            plot_path: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """How the number of k-means centres changes accuracy, without touching the run.

    The embedder is fixed; for every k the centres are fitted (k-means++ → nearest real
    embedding, as in training) on the good images of ``data_dir/train/good`` split like training,
    and the labelled test split of ``data_dir`` is scored (image score = max over its tiles of
    the min cosine distance to the centres).

    Args:
        run_dir: a trained CSE run.
        data_dir: dataset in the MVTec layout with ``train/good`` and a labelled ``test/``.
        ks: centre counts to try, e.g. (1, 2, 4, 8).
        plot_path: optional PNG of image AUROC and coverage against k.
    Returns:
        {"rows": [{"k", "image_auroc", "coverage", "review_share", "mean_train_distance"}], ...}
    """
    import torch

    from edgekit.data.dataset import scan_dataset, split_train_val
    from edgekit.data.images import read_image
    from edgekit.data.preprocess import make_tiles
    from edgekit.errors import DataError
    from edgekit.evaluate.metrics import coverage, image_auroc
    from edgekit.train import _batches, normalise

    run = _load_cse_run(run_dir, device, "the k sweep")
    model = run.model
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"k values must be >= 1, got {ks}")
    idx = scan_dataset(data_dir, require_test=True)
    labels = [s.label for s in idx.test]
    if len(set(labels)) < 2:
        raise DataError(f"{data_dir}: the k sweep needs good and defect test images (test/good and test/<defect>)")
    tr = run.recipe.train
    train_paths, _ = split_train_val(idx.train_good, tr.val_fraction, tr.seed)
    emb, _ = _train_embeddings(run, train_paths, data_dir)
    dev = next(model.parameters()).device
    if emb.shape[0] < max(ks):
        raise ConfigError(f"k up to {max(ks)} needs at least that many training tiles (have {emb.shape[0]})")
    test_emb, owner = [], []
    for i, sample in enumerate(idx.test):
        tiles, _ = make_tiles(read_image(sample.path), run.spec)
        test_emb.append(model.collect_embeddings(normalise(b.to(dev), run.spec) for b in _batches(tiles, tr.batch_size, False, None)))
        owner += [i] * len(tiles)
    test_e = torch.cat(test_emb)
    owner_a = np.asarray(owner)
    rows = []
    saved = {k: v.clone() for k, v in model.scorer.state_dict().items()}
    try:
        for k in ks:
            facts = model.fit_centres(emb, k=k)
            with torch.no_grad():
                _, tile_scores = model.scorer(test_e.to(dev), (run.spec.size, run.spec.size))
            ts = tile_scores.cpu().numpy()
            scores = np.full(len(idx.test), -np.inf)
            np.maximum.at(scores, owner_a, ts)
            cov = coverage(labels, scores) or {}
            rows.append({"k": k, "image_auroc": image_auroc(labels, scores), "coverage": cov.get("coverage"),
                         "review_share": cov.get("review_share"), "cluster_sizes": facts["cluster_sizes"],
                         "mean_train_distance": facts["mean_train_distance"]})
            if not quiet:
                r = rows[-1]
                print(f"k={k:3d}  image AUROC {r['image_auroc']:.4f}  coverage {r['coverage']:.3f}  "
                      f"clusters {r['cluster_sizes']}")
    finally:
        model.scorer.load_state_dict(saved)  # the run itself is not changed
    out: dict[str, Any] = {"run": str(run.path), "data": str(Path(data_dir).resolve()), "n_train_images": len(train_paths),
                           "n_test": len(labels), "rows": rows}
    if plot_path is not None:
        out["plot"] = str(_plot_k_sweep(rows, Path(plot_path)))
    return out


def _plot_k_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.plot(ks, [r["image_auroc"] for r in rows], "o-", label="image AUROC")
    ax.plot(ks, [r["coverage"] for r in rows], "s--", label="coverage")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (centres)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("CSE: accuracy vs number of k-means centres")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
