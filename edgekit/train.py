"""Training driver shared by every method: data → tiles → Adam + schedule → checkpoints.

Run directory (RUN_DIR):
  recipe.yaml     the fully resolved recipe (defaults filled in)
  run.json        method, backbone, preprocessing, data hash, split, history, calibration
  checkpoint.pt   last epoch: model + optimiser + scheduler + RNG state (for --resume)
  model.pt        selected weights (best held-out-good loss, or last) used by evaluate/build

Under torchrun (``edgekit.distributed``) every rank trains on its share of the tiles and rank 0
alone writes the run directory; without torchrun the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from edgekit import __version__
from edgekit.bundle.io import write_json_atomic
from edgekit.config.recipe import Recipe, load_recipe, method_config, recipe_from_dict
from edgekit.data.preprocess import PreprocessSpec, make_tiles
from edgekit.distributed import DEFAULT_TIMEOUT_S, Dist, from_env
from edgekit.errors import BundleError, ConfigError, DataError
from edgekit.methods import METHODS
from edgekit.methods.base import AnomalyModel
from edgekit.methods.rd.scoring import DistillationModel
from edgekit.paths import canonical

log = logging.getLogger(__name__)

RUN_FORMAT = "edgekit-run"


@dataclass
class LoadedRun:
    path: Path
    recipe: Recipe
    model: AnomalyModel
    info: dict[str, Any]
    spec: PreprocessSpec


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def spec_from_recipe(recipe: Recipe, backbone: Any) -> PreprocessSpec:
    """The preprocessing a run uses: recipe input section + the backbone's normalisation."""
    i = recipe.input
    return PreprocessSpec(
        size=i.size, fit=i.fit, max_aspect_for_resize=i.max_aspect_for_resize, tile_overlap=i.tile_overlap,
        mean=tuple(float(v) for v in backbone.mean), std=tuple(float(v) for v in backbone.std),
    )


def build_model(recipe: Recipe, weights: str | None = None) -> AnomalyModel:
    """Instantiate the recipe's method on its backbone (weights: override of backbone.weights)."""
    from edgekit.backbones import create_backbone

    plugin = METHODS.get(recipe.method["type"])()
    cfg = method_config(recipe)
    bcfg = recipe.backbone if weights is None else recipe.backbone.model_copy(update={"weights": weights})
    backbone = create_backbone(bcfg, plugin.layers_for(recipe))
    model = plugin.build(recipe, cfg, backbone)
    model.method_name = recipe.method["type"]
    return model


def normalise(tiles_u8: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, S, S, 3) uint8 → (N, 3, S, S) float32 normalised (same math as the exported graph)."""
    x = tiles_u8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def load_tiles(paths: Sequence[Path], spec: PreprocessSpec, desc: str = "decode",
               show: bool = True) -> tuple[np.ndarray, list[str]]:
    """Decode images and cut them into tiles. Unreadable files are skipped with a warning.

    ``show``: progress bar and warnings (off on the DDP ranks other than 0).
    Returns: tiles (T, S, S, 3) uint8 and the list of skipped-file messages."""
    from edgekit.data.images import read_image

    out: list[np.ndarray] = []
    skipped: list[str] = []
    for p in tqdm(paths, desc=desc, unit="img", leave=False, disable=not show or len(paths) < 50):
        try:
            img = read_image(p)
        except DataError as exc:
            skipped.append(str(exc))
            if show:
                log.warning("skipping %s", exc)
            continue
        tiles, _ = make_tiles(img, spec)
        out.append(tiles)
    if not out:
        s = spec.size
        return np.zeros((0, s, s, 3), np.uint8), skipped
    return np.concatenate(out), skipped


def _batches(tiles: np.ndarray, batch: int, shuffle: bool, rng: np.random.Generator | None,
             hflip: bool = False, order: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
    """Batches of ``tiles`` (in ``order`` when given: a DDP rank's sampler indices)."""
    idx = np.arange(len(tiles)) if order is None else np.asarray(order, dtype=np.int64)
    if shuffle and rng is not None:
        rng.shuffle(idx)
    for i in range(0, len(idx), batch):
        b = tiles[idx[i : i + batch]]
        if hflip and rng is not None:
            flip = rng.random(len(b)) < 0.5
            b = b.copy()
            b[flip] = b[flip, :, ::-1]
        yield torch.from_numpy(np.ascontiguousarray(b))


def _make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, total_steps: int) -> Any:
    t = recipe.train
    if t.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t.lr, total_steps=max(1, total_steps), pct_start=0.1)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _resume_key(recipe: Recipe) -> str:
    """What must match to resume: the recipe except the epoch count (resuming may extend it)."""
    d = recipe.model_dump(mode="json")
    d["train"].pop("epochs", None)
    return yaml.safe_dump(d, sort_keys=True)


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device visible to torch; use --device cpu or install a CUDA build")
    return torch.device(device)


def gather_training_images(data_dirs: Sequence[str | Path]) -> tuple[list[Path], str]:
    """Union of train/good over one or more datasets (several = domain generalisation)."""
    from edgekit.data.dataset import dataset_hash, scan_dataset

    paths: list[Path] = []
    for d in data_dirs:
        paths.extend(scan_dataset(d).train_good)
    return paths, dataset_hash(paths)


def training_split(data_dirs: Sequence[str | Path], tr: Any) -> tuple[list[Path], list[Path], str]:
    """The good training images of ``data_dirs`` split into (train, held-out) as a run with train
    settings ``tr`` does it, plus the hash of all of them."""
    from edgekit.data.dataset import split_train_val

    all_paths, data_hash = gather_training_images(data_dirs)
    if tr.max_train_images:
        all_paths = all_paths[: tr.max_train_images]
    train_paths, val_paths = split_train_val(all_paths, tr.val_fraction, tr.seed)
    return train_paths, val_paths, data_hash


def fit_score_statistics(model: AnomalyModel, recipe: Recipe, train_tiles: np.ndarray, spec: PreprocessSpec,
                         dev: torch.device, ctx: Dist | None = None) -> dict[str, Any]:
    """Fit the model's score normalisation (``score.layer_norm``) on the training tiles, so that
    the held-out images stay independent for the provisional threshold. Fitting on the held-out
    images themselves made their own scores too low (per-position statistics fitted on 14
    images): the threshold then rejected 30 % of new good fabric images instead of 2.5 %. A
    10-epoch student does not memorise its training images (held-out loss ≈ training loss), and
    the larger sample estimates the per-position statistics better: image AUROC fabric
    0.9992 → 0.9996, ELPV mono 0.9047 → 0.9066 (same checkpoints).

    In a DDP job (``ctx``) a distillation model reads this rank's share of the tiles and the
    per-position sums are all-reduced; a method without reducible statistics reads every tile on
    every rank, which is the single-process fit itself."""
    bs = recipe.train.batch_size
    if ctx is not None and ctx.enabled and isinstance(model, DistillationModel):
        share = train_tiles[ctx.shard(len(train_tiles))]
        batches = (normalise(b.to(dev), spec) for b in _batches(share, bs, False, None))
        facts = model.fit_score_normalisation(batches, recipe.score.layer_norm, reduce=ctx.all_reduce)
    else:
        batches = (normalise(b.to(dev), spec) for b in _batches(train_tiles, bs, False, None))
        facts = model.fit_score_normalisation(batches, recipe.score.layer_norm)
    if isinstance(model, DistillationModel):
        # quantiles do not add up over ranks: every rank reads every tile (the same result on each)
        batches = (normalise(b.to(dev), spec) for b in _batches(train_tiles, bs, False, None))
        facts = {**facts, **model.fit_edge_normalisation(batches, recipe.score.edge_norm, recipe.score.edge_quantile)}
    return facts


def _after_training(model: AnomalyModel, train_tiles: np.ndarray, spec: PreprocessSpec, batch: int,
                    dev: torch.device, ctx: Dist) -> dict[str, Any]:
    """The method's post-processing on the training tiles (CSE: k-means). In a DDP job an
    embedding method embeds this rank's share and k-means runs on the embeddings of all ranks,
    gathered in tile order (the single-process input); other hooks read every tile."""
    if ctx.enabled and hasattr(model, "collect_embeddings") and hasattr(model, "fit_centres"):
        share = train_tiles[ctx.shard(len(train_tiles))]
        emb = model.collect_embeddings(normalise(b.to(dev), spec) for b in _batches(share, batch, False, None))
        return model.fit_centres(ctx.gather_rows(emb))
    return model.after_training(normalise(b.to(dev), spec) for b in _batches(train_tiles, batch, False, None))


class _TrainingLoss(torch.nn.Module):
    """``model.training_loss`` as a forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(x)


def train_run(
    recipe_path: str | Path,
    data_dirs: str | Path | Sequence[str | Path],
    run_dir: str | Path,
    epochs: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
    weights: str | None = None,
    resume: bool = True,
    quiet: bool = False,
    dist_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Train a recipe on the good images of one or more datasets; returns RUN_DIR.

    Under torchrun (RANK/WORLD_SIZE set) this joins the job (``edgekit.distributed``, collectives
    time out after ``dist_timeout_s``) and trains with DistributedDataParallel; only rank 0 writes."""
    ctx = from_env(device, dist_timeout_s)
    try:
        with ctx.guard(), _quiet_logs(not ctx.is_main):
            return _train(ctx, recipe_path, data_dirs, run_dir, epochs, device, seed, weights, resume,
                          quiet or not ctx.is_main)
    finally:
        ctx.close()


@contextlib.contextmanager
def _quiet_logs(on: bool) -> Iterator[None]:
    """DDP ranks other than 0 log errors only (rank 0's log speaks for the job)."""
    logger = logging.getLogger("edgekit")
    level = logger.level
    if on:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _train(ctx: Dist, recipe_path: str | Path, data_dirs: str | Path | Sequence[str | Path], run_dir: str | Path,
           epochs: int | None, device: str, seed: int | None, weights: str | None, resume: bool, quiet: bool) -> Path:
    if isinstance(data_dirs, (str, Path)):
        data_dirs = [data_dirs]
    recipe = load_recipe(recipe_path) if not isinstance(recipe_path, Recipe) else recipe_path
    tr = recipe.train
    if epochs is not None:
        tr = tr.model_copy(update={"epochs": epochs})
    if seed is not None:
        tr = tr.model_copy(update={"seed": seed})
    bb = recipe.backbone if weights is None else recipe.backbone.model_copy(update={"weights": weights})
    recipe = recipe.model_copy(update={"train": tr, "backbone": bb})
    run = Path(run_dir)
    ckpt_path = run / "checkpoint.pt"
    # rank 0's file system decides (the other nodes need not see the run directory)
    exists = ctx.broadcast_object(run.exists() and (run / "run.json").exists() if ctx.is_main else None)
    if exists and not resume:
        raise ConfigError(f"{run}: already holds a run; choose another --out or pass --resume to continue it")
    dev = ctx.device if ctx.enabled else _resolve_device(device)
    seed_everything(tr.seed)
    # real images with flat dark areas (ELPV cells, backgrounds) drive activations and gradients
    # into float32 denormals, which x86 handles in microcode: measured 1.23 → 0.82 s per lite0
    # RD batch on ELPV, no change on textured fabric. Flushing them to zero changes no result
    # above 1e-38.
    torch.set_flush_denormal(True)

    ctx.phase = "loading the training images"
    train_paths, val_paths, data_hash = training_split(data_dirs, tr)

    model = build_model(recipe).to(dev)
    spec = spec_from_recipe(recipe, _backbone_of(model))
    train_tiles, skipped = load_tiles(train_paths, spec, "decode train", show=ctx.is_main)
    val_tiles, skipped_v = load_tiles(val_paths, spec, "decode val", show=ctx.is_main)
    if len(train_tiles) == 0:
        raise DataError(f"{', '.join(map(str, data_dirs))}: no readable training images in train/good; add good images")
    if ctx.enabled:
        _check_same_data(ctx, data_hash, len(train_tiles), len(val_tiles))

    params = list(model.trainable_parameters())
    opt = torch.optim.Adam(params, lr=tr.lr, betas=tr.betas, weight_decay=tr.weight_decay)
    sampler = None
    if ctx.enabled:
        from torch.utils.data import DistributedSampler

        # seeded, epoch-varying shuffle over all tiles; padded so that every rank takes the same
        # number of steps (a rank with fewer would leave the others waiting in an all-reduce)
        sampler = DistributedSampler(range(len(train_tiles)), num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=tr.seed)
        steps_per_epoch = max(1, -(-len(sampler) // tr.batch_size))
    else:
        steps_per_epoch = max(1, -(-len(train_tiles) // tr.batch_size))
    sched = _make_scheduler(opt, recipe, tr.epochs * steps_per_epoch)
    start_epoch, best_val, history, bad_epochs = 0, float("inf"), [], 0
    t_spent = 0.0
    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
    if ctx.enabled:
        # rank 0 reads the checkpoint and sends it to every rank
        ck = (torch.load(ckpt_path, map_location="cpu", weights_only=True)
              if ctx.is_main and resume and ckpt_path.is_file() else None)
        ck = ctx.broadcast_object(ck)
    else:
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True) if resume and ckpt_path.is_file() else None
    if ck is not None:
        if ck.get("recipe_key") != _resume_key(recipe):
            raise ConfigError(f"{run}: checkpoint was trained with a different recipe/options; use a new --out or --no-resume")
        if ck.get("world_size", 1) != ctx.world_size:
            raise ConfigError(f"{run}: checkpoint was trained with {ck.get('world_size', 1)} process(es), this job has "
                              f"{ctx.world_size}; resume with the same torchrun --nnodes/--nproc-per-node or use a new --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # more epochs than first planned: stretch the schedule to the new total
        if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR):
            sched.total_steps = max(sched.total_steps, tr.epochs * steps_per_epoch)
        elif isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = max(sched.T_max, tr.epochs * steps_per_epoch)
        start_epoch, best_val, bad_epochs = ck["epoch"], ck["best_val"], ck["bad_epochs"]
        history = json.loads(ck["history"])
        t_spent = ck.get("train_time_s", 0.0)
        torch.set_rng_state(ck["torch_rng"])
        if not quiet:
            print(f"resuming {run} at epoch {start_epoch}/{tr.epochs}")
    if ctx.is_main:
        (run / "recipe.yaml").write_text(_dump_recipe(recipe), encoding="utf-8")

    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rng = np.random.default_rng(tr.seed + start_epoch)
    loss_fn: Any = model.training_loss
    if ctx.enabled:
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # 1×1 convolution weights get gradients whose strides differ only along size-1 dims from
        # the bucket's: the same memory layout, reported once per process as a possible slowdown
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        # averages the gradients over the ranks (and keeps BatchNorm buffers in step with rank 0's)
        loss_fn = DistributedDataParallel(_TrainingLoss(model), device_ids=[dev.index] if dev.type == "cuda" else None)
        if not quiet:
            print(f"DDP: {ctx.world_size} processes ({ctx.backend}) × batch {tr.batch_size} = "
                  f"{ctx.world_size * tr.batch_size} tiles per step, {steps_per_epoch} steps per epoch")
    stopped_early = False
    for epoch in range(start_epoch, tr.epochs):
        ctx.phase = f"epoch {epoch + 1}"
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n = 0
        if sampler is not None:
            sampler.set_epoch(epoch)
            # flips drawn per (seed, epoch, rank): the same after a resume
            rng = np.random.default_rng([tr.seed, epoch, ctx.rank])
            batches = _batches(train_tiles, tr.batch_size, False, rng, tr.hflip, order=list(sampler))
        else:
            batches = _batches(train_tiles, tr.batch_size, True, rng, tr.hflip)
        bar = tqdm(
            batches, total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{tr.epochs}", unit="batch", disable=quiet, leave=False,
        )
        for b in bar:
            x = normalise(b.to(dev, non_blocking=True), spec)
            with torch.autocast(dev.type, enabled=amp):
                loss, scalars = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            n += 1
            scalars = {"loss": float(loss.detach()), **scalars}
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4f}" for k, v in scalars.items()})
        if ctx.enabled:
            sums, n = _sum_over_ranks(ctx, sums, n)
        train_stats = {k: v / max(1, n) for k, v in sums.items()}
        val_loss = _validation_loss(model, val_tiles, spec, tr.batch_size, dev, ctx) if len(val_tiles) else None
        t_spent += time.perf_counter() - t0
        rec = {"epoch": epoch + 1, **train_stats, "val_loss": val_loss, "time_s": round(time.perf_counter() - t0, 2)}
        history.append(rec)
        if not quiet:
            vl = f" val {val_loss:.4f}" if val_loss is not None else ""
            print(f"epoch {epoch + 1}/{tr.epochs}: loss {train_stats.get('loss', float('nan')):.4f}{vl} ({rec['time_s']} s)")
        # every rank sees the same val_loss (all-reduced), so every rank takes the same decisions
        improved = val_loss is None or val_loss < best_val
        if improved:
            best_val = val_loss if val_loss is not None else best_val
            bad_epochs = 0
            if ctx.is_main:
                _save_atomic({"model": model.state_dict()}, run / "model.pt")
        else:
            bad_epochs += 1
        if ctx.is_main:
            state = {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch + 1, "best_val": best_val, "bad_epochs": bad_epochs, "history": json.dumps(history),
                "recipe_key": _resume_key(recipe), "torch_rng": torch.get_rng_state(), "train_time_s": t_spent,
            }
            if ctx.enabled:
                state["world_size"] = ctx.world_size
            _save_atomic(state, ckpt_path)
        if tr.early_stop_patience and bad_epochs >= tr.early_stop_patience:
            stopped_early = True
            if not quiet:
                print(f"early stop: no held-out improvement for {bad_epochs} epochs")
            break

    # selected weights, then method post-processing (e.g. CSE k-means) on the training tiles
    ctx.phase = "fitting the score statistics"
    if ctx.is_main:
        model.load_state_dict(torch.load(run / "model.pt", map_location=dev, weights_only=True)["model"])
    ctx.broadcast_module(model)
    model.eval()
    facts = _after_training(model, train_tiles, spec, tr.batch_size, dev, ctx)
    facts.update(fit_score_statistics(model, recipe, train_tiles, spec, dev, ctx))
    # the fits agree up to float summation order; rank 0's model is the one saved and used
    ctx.broadcast_module(model)
    if ctx.is_main:
        _save_atomic({"model": model.state_dict()}, run / "model.pt")
    ctx.phase = "the provisional threshold"
    calibration = provisional_calibration(model, val_tiles, spec, tr.batch_size, dev, ctx)
    info = {
        "format": RUN_FORMAT, "format_version": 1, "edgekit_version": __version__,
        "method": recipe.method["type"], "backbone": recipe.backbone.name,
        "layers": list(METHODS.get(recipe.method["type"])().layers_for(recipe)),
        "preprocess": spec.to_dict(),
        "data": {"dirs": [str(Path(d).resolve()) for d in data_dirs], "hash": data_hash,
                 "n_train_images": len(train_paths), "n_val_images": len(val_paths),
                 "n_train_tiles": int(len(train_tiles)), "n_val_tiles": int(len(val_tiles)),
                 "val_images": [str(canonical(p)) for p in val_paths], "skipped": skipped + skipped_v},
        "epochs_done": history[-1]["epoch"] if history else 0, "stopped_early": stopped_early,
        "train_time_s": round(t_spent, 1), "device": dev.type, "history": history,
        "method_facts": facts, "calibration": calibration,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params_trainable": sum(p.numel() for p in model.trainable_parameters()),
        "params_total": sum(p.numel() for p in model.parameters()),
    }
    if ctx.enabled:
        info["distributed"] = {"world_size": ctx.world_size, "backend": ctx.backend,
                               "batch_per_rank": tr.batch_size, "steps_per_epoch": steps_per_epoch}
    if ctx.is_main:
        write_json_atomic(run / "run.json", info)
    ctx.barrier()  # the job ends when the run is complete on disk
    if not quiet:
        print(f"run saved to {run} ({info['epochs_done']} epochs, {info['train_time_s']} s)")
    return run


def _check_same_data(ctx: Dist, data_hash: str, n_train: int, n_val: int) -> None:
    """Every rank must train on the same images (each node reads its own copy of --data)."""
    seen = ctx.all_gather_object((data_hash, n_train, n_val))
    odd = [r for r, s in enumerate(seen) if s != seen[0]]
    if odd:
        r = odd[0]
        raise ConfigError(f"rank {r} sees other training images than rank 0 ({seen[r][1]} tiles, hash {seen[r][0][:12]} "
                          f"vs {seen[0][1]} tiles, hash {seen[0][0][:12]}); give every node the same --data")
    if n_train < ctx.world_size:
        raise ConfigError(f"{n_train} training tiles for {ctx.world_size} processes: every rank needs at least one; "
                          "start fewer processes or add good images")


def _sum_over_ranks(ctx: Dist, sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    keys = sorted(sums)
    t = ctx.all_reduce(torch.tensor([float(n), *(sums[k] for k in keys)], dtype=torch.float64))
    return {k: float(v) for k, v in zip(keys, t[1:].tolist())}, int(t[0].item())


def run_val_images(info: dict[str, Any], run_dir: str | Path, existing_only: bool = True) -> list[Path]:
    """The run's held-out images as absolute paths. Runs record them absolute and resolved; runs
    from before that recorded them as given (relative to wherever training ran): those are
    found relative to the run's data folders, the run folder's parent or the current folder."""
    out = []
    dirs = [Path(d) for d in info.get("data", {}).get("dirs", [])]
    for v in info.get("data", {}).get("val_images", []):
        p = Path(v)
        if not p.is_absolute():
            for base in (Path.cwd(), Path(run_dir).resolve().parent, *dirs, *[d.parent for d in dirs]):
                if (base / p).is_file():
                    p = base / p
                    break
        p = canonical(p)
        if p.is_file() or not existing_only:
            out.append(p)
    return out


def rescore_run(run_dir: str | Path, layer_norm: str | None = None, device: str = "cpu",
                quiet: bool = False, edge_norm: str | None = None) -> dict[str, Any]:
    """Refit a finished run's score statistics and provisional threshold with the current scorer,
    without retraining (e.g. a run trained before per-position normalisation existed).

    The weights are untouched; the training / held-out split is rebuilt from the run's record
    and must match it. ``layer_norm`` / ``edge_norm`` override the recipe's ``score.layer_norm``
    / ``score.edge_norm`` (written back to the run's recipe.yaml). Returns the new facts and
    calibration.
    """
    lr = load_run(run_dir, device)
    run, recipe, model, info, spec = lr.path, lr.recipe, lr.model, lr.info, lr.spec
    overrides = {k: v for k, v in (("layer_norm", layer_norm), ("edge_norm", edge_norm)) if v is not None}
    if overrides:
        recipe = recipe.model_copy(update={"score": recipe.score.model_copy(update=overrides)})
    mode = recipe.score.layer_norm
    if not isinstance(model, DistillationModel):
        raise ConfigError(f"{run}: method {info.get('method')} has no score statistics to refit (only rd, rrd, mrkd)")
    tr = recipe.train
    dirs = info.get("data", {}).get("dirs") or []
    train_paths, val_paths, data_hash = training_split(dirs, tr)
    if data_hash != info["data"].get("hash") or [str(canonical(p)) for p in val_paths] != \
            [str(p) for p in run_val_images(info, run, existing_only=False)]:
        raise DataError(f"{run}: the training images in {', '.join(dirs)} changed since this run was trained; "
                        f"retrain (`edgekit train {run / 'recipe.yaml'} --data ...`)")
    dev = _resolve_device(device)
    train_tiles, _ = load_tiles(train_paths, spec, "decode train")
    val_tiles, _ = load_tiles(val_paths, spec, "decode val")
    model.eval()
    facts = {**(info.get("method_facts") or {}), **fit_score_statistics(model, recipe, train_tiles, spec, dev)}
    calibration = provisional_calibration(model, val_tiles, spec, tr.batch_size, dev)
    _save_atomic({"model": model.state_dict()}, run / "model.pt")
    info.update({"method_facts": facts, "calibration": calibration,
                 "rescored": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_json_atomic(run / "run.json", info)
    if overrides:
        (run / "recipe.yaml").write_text(_dump_recipe(recipe), encoding="utf-8")
    if not quiet:
        thr = calibration.get("threshold")
        print(f"{run}: score normalisation {mode} + edge {recipe.score.edge_norm} refitted on {len(train_tiles)} training tiles; "
              f"provisional threshold {thr if thr is None else round(thr, 4)} from {len(val_tiles)} held-out tiles")
    return {"layer_norm": mode, "edge_norm": recipe.score.edge_norm, "method_facts": facts, "calibration": calibration}


def _backbone_of(model: AnomalyModel) -> Any:
    for name in ("teacher", "backbone", "encoder", "extractor"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ConfigError(f"method {model.method_name}: model exposes no backbone (teacher/backbone attribute)")


@torch.no_grad()
def _validation_loss(model: AnomalyModel, tiles: np.ndarray, spec: PreprocessSpec, batch: int, dev: torch.device,
                     ctx: Dist | None = None) -> float:
    """Mean loss of the held-out tiles; in a DDP job each rank reads its share and the sums are
    all-reduced (every rank gets the same value)."""
    model.eval()
    if ctx is not None and ctx.enabled:
        tiles = tiles[ctx.shard(len(tiles))]
    total, n = 0.0, 0
    for b in _batches(tiles, batch, False, None):
        loss, _ = model.training_loss(normalise(b.to(dev), spec))
        total += float(loss) * len(b)
        n += len(b)
    if ctx is not None and ctx.enabled:
        t = ctx.all_reduce(torch.tensor([total, float(n)], dtype=torch.float64))
        total, n = float(t[0]), int(t[1].item())
    return total / max(1, n)


@torch.no_grad()
def score_tiles_torch(model: AnomalyModel, tiles: np.ndarray, spec: PreprocessSpec, batch: int,
                      dev: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of (T, S, S, 3) uint8 tiles → maps (T, S, S) float32, scores (T,) float32."""
    model.eval()
    maps, scores = [], []
    for b in _batches(tiles, batch, False, None):
        out = model(normalise(b.to(dev), spec))
        maps.append(out.map[:, 0].float().cpu().numpy())
        scores.append(out.score.float().cpu().numpy())
    if not scores:
        s = spec.size
        return np.zeros((0, s, s), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps), np.concatenate(scores)


def provisional_calibration(model: AnomalyModel, val_tiles: np.ndarray, spec: PreprocessSpec, batch: int,
                            dev: torch.device, ctx: Dist | None = None) -> dict[str, Any]:
    """Until `edgekit calibrate` runs: threshold = max score of held-out good tiles (zero
    false rejects on the held-out set). Marked provisional so the build can say so. In a DDP
    job each rank scores its share and the max and count are all-reduced."""
    if len(val_tiles) == 0:
        return {"threshold": None, "accept_edge": None, "reject_edge": None,
                "source": "none: no held-out good images (run `edgekit calibrate`)"}
    if ctx is not None and ctx.enabled:
        _, scores = score_tiles_torch(model, val_tiles[ctx.shard(len(val_tiles))], spec, batch, dev)
        top = ctx.all_reduce(torch.tensor([float(np.max(scores)) if len(scores) else -np.inf]), op="max")
        count = ctx.all_reduce(torch.tensor([len(scores)], dtype=torch.int64))
        t, n_good = float(top.item()), int(count.item())
    else:
        _, scores = score_tiles_torch(model, val_tiles, spec, batch, dev)
        t, n_good = float(np.max(scores)), int(len(scores))
    return {"threshold": t, "accept_edge": t, "reject_edge": t, "n_good": n_good,
            "source": "provisional: max held-out good tile score (run `edgekit calibrate` for a rate-based band)"}


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_run(run_dir: str | Path, device: str = "cpu") -> LoadedRun:
    """Load a trained run for evaluation/export (backbone weights come from the checkpoint)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise BundleError(f"{run}: run directory not found; train one with `edgekit train RECIPE --data DIR --out {run}`")
    if not (run / "model.pt").is_file() or not (run / "run.json").is_file():
        raise BundleError(f"{run}: no trained checkpoint (model.pt/run.json); train first or finish with `edgekit train ... --out {run}`")
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    recipe = recipe_from_dict(yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8")), str(run / "recipe.yaml"))
    model = build_model(recipe, weights="none")
    dev = _resolve_device(device)
    state = torch.load(run / "model.pt", map_location=dev, weights_only=True)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{run}/model.pt: weights do not fit the recipe ({str(exc).splitlines()[0]}); retrain") from None
    model.to(dev).eval()
    return LoadedRun(run, recipe, model, info, PreprocessSpec.from_dict(info["preprocess"]))
