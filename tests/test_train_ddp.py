"""`edgekit train` under torchrun: gloo on CPU with 2 processes, tiny random-init models at 64².

Every rank runs in its own working directory with the same relative ``--out run`` (as on two
nodes without a shared disk), so what rank 1 writes is visible: it must write nothing. The
statistics a DDP run fits from its ranks' shares (all-reduced sums, gathered embeddings,
all-reduced max) are compared with a single-process fit of the same weights on the same tiles.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekit.train import (
    fit_score_statistics,
    load_run,
    load_tiles,
    provisional_calibration,
    score_tiles_torch,
    train_run,
    training_split,
)

TIMEOUT_S = 240  # a hang guard only; the runs take ~20 s on 2 idle cores


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"  # two ranks on two cores
    return env


def torchrun(base: Path, *train_args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N`` running
    ``edgekit train ARGS`` with rank R in ``base/rR`` (stdout/stderr in out.txt/err.txt there)."""
    for r in range(nproc):
        (base / f"r{r}").mkdir(parents=True, exist_ok=True)
    script = 'base="$0"; py="$1"; shift; cd "$base/r$LOCAL_RANK" && exec "$py" -m edgekit.cli train "$@" >>out.txt 2>>err.txt'
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--no-python", "sh", "-c", script, str(base), sys.executable, *train_args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def _rank_out(base: Path, r: int) -> tuple[str, str]:
    return (base / f"r{r}" / "out.txt").read_text(), (base / f"r{r}" / "err.txt").read_text()


def _assert_ok(res: subprocess.CompletedProcess[str], base: Path) -> None:
    assert res.returncode == 0, (res.stderr[-3000:], *(_rank_out(base, r) for r in (0, 1)))


def _assert_rank1_silent(base: Path) -> None:
    """Rank 1 trained (it took part in every all-reduce) but wrote and printed nothing."""
    out, err = _rank_out(base, 1)
    assert out == "" and "error" not in err, (out, err)
    assert sorted(p.name for p in (base / "r1").iterdir()) == ["err.txt", "out.txt"]


def _recipe_file(tmp_path: Path, recipe: dict) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return p


def _train_tiles(run: Path) -> tuple[np.ndarray, np.ndarray, object]:
    lr = load_run(run)
    train_paths, val_paths, _ = training_split(lr.info["data"]["dirs"], lr.recipe.train)
    assert [str(p) for p in val_paths] == lr.info["data"]["val_images"]
    return load_tiles(train_paths, lr.spec)[0], load_tiles(val_paths, lr.spec)[0], lr


def test_ddp_two_ranks_fit_the_single_process_statistics(tmp_path: Path, tiny_dataset: Path,
                                                         tiny_recipe_file: Path) -> None:
    base = tmp_path / "job"
    res = torchrun(base, str(tiny_recipe_file), "--data", str(tiny_dataset), "--out", "run", "--epochs", "2")
    _assert_ok(res, base)
    _assert_rank1_silent(base)
    run = base / "r0" / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_done"] == 2 and [h["epoch"] for h in info["history"]] == [1, 2]
    # 19 training tiles: 10 per rank (one padded), batch 8 → 2 steps per rank and epoch
    assert info["distributed"] == {"world_size": 2, "backend": "gloo", "batch_per_rank": 8, "steps_per_epoch": 2}
    assert torch.load(run / "checkpoint.pt", weights_only=True)["world_size"] == 2
    out0, _ = _rank_out(base, 0)
    assert out0.count("epoch 2/2:") == 1 and "DDP: 2 processes (gloo)" in out0

    train_tiles, val_tiles, lr = _train_tiles(run)
    assert len(train_tiles) == info["data"]["n_train_tiles"] == 19
    ddp = {k: v.clone() for k, v in lr.model.scorer.state_dict().items()}
    assert lr.model.scorer.mode == "position"
    # single process, same weights, same tiles
    lr.model.scorer.reset()
    facts = fit_score_statistics(lr.model, lr.recipe, train_tiles, lr.spec, torch.device("cpu"))
    single = lr.model.scorer.state_dict()
    assert set(single) == set(ddp)
    for k, v in single.items():
        if k.startswith("term_"):  # per-term rings: not in this recipe (score.edge_norm: ring)
            assert v.numel() == ddp[k].numel() == 0, k
            continue
        assert v.shape == ddp[k].shape and v.numel() > 0, k
        # the ring is medians / quantiles of maps made with the statistics above, so their
        # float32 rounding (~1e-7) carries into it; the ring shifts sit near 0 (medians of
        # centred maps) in units where the good tail is ~1: an absolute tolerance, 1e-5 of that
        ring = k.startswith("edge_")
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-5 if ring else 0, msg=k)
    ln, ln_ddp = facts["layer_norm"], info["method_facts"]["layer_norm"]
    assert ln["images"] == ln_ddp["images"] == 19 and ln["pixels"] == ln_ddp["pixels"]
    np.testing.assert_allclose(ln_ddp["mean"], ln["mean"], rtol=1e-5)
    cal = provisional_calibration(lr.model, val_tiles, lr.spec, 8, torch.device("cpu"))
    assert cal["n_good"] == info["calibration"]["n_good"] == 5
    assert info["calibration"]["threshold"] == pytest.approx(cal["threshold"], rel=1e-5)


CSE_RECIPE = {
    "name": "tiny-cse",
    "method": {"type": "cse", "k": 3, "margin": 0.5},
    "backbone": {"name": "tf_efficientnet_lite0", "weights": "none"},
    "input": {"size": 64},
    "train": {"epochs": 1, "batch_size": 4, "lr": 4e-4, "val_fraction": 0.2, "seed": 0},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ranks(base: Path, *train_args: str) -> list[subprocess.Popen[str]]:
    """Two ranks started by hand, as torchrun starts them on each node but without its agent
    (which would itself kill the survivors of a dead rank): rank R in ``base/rR``."""
    port = str(_free_port())
    procs = []
    for r in range(2):
        (base / f"r{r}").mkdir(parents=True, exist_ok=True)
        env = {**_env(), "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "-m", "edgekit.cli", "train", *train_args],
                                      cwd=base / f"r{r}", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def test_killed_rank_ends_the_job_in_one_line_and_the_run_resumes_with_cse_centres(tmp_path: Path,
                                                                                     tiny_dataset: Path) -> None:
    """Rank 1 is killed after epoch 1: rank 0 must not hang in its next all-reduce but exit with
    one line naming rank 1. The checkpoint rank 0 kept resumes under torchrun, and the k-means
    centres the resumed run fits on the gathered embeddings are those of one process."""
    recipe = _recipe_file(tmp_path, CSE_RECIPE)
    base = tmp_path / "job"
    args = (str(recipe), "--data", str(tiny_dataset), "--out", "run")
    procs = _start_ranks(base, *args, "--epochs", "500")
    try:
        assert procs[0].stdout is not None
        for line in procs[0].stdout:
            if line.startswith("epoch 1/500:"):
                procs[1].send_signal(signal.SIGKILL)
                break
        _, err = procs[0].communicate(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[1].returncode == -signal.SIGKILL and procs[0].returncode == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: rank 0/2 (") and "rank 1 stopped answering during epoch 2" in lines[0], lines

    # the same job again under torchrun, now for 2 epochs: it resumes from rank 0's checkpoint
    _assert_ok(torchrun(base, *args, "--epochs", "2"), base)
    _assert_rank1_silent(base)
    out0 = _rank_out(base, 0)[0]
    assert "resuming run at epoch 1/2" in out0 and "epoch 1/2:" not in out0 and "epoch 2/2:" in out0
    run = base / "r0" / "run"
    info = json.loads((run / "run.json").read_text())
    assert [h["epoch"] for h in info["history"]] == [1, 2]

    train_tiles, _, lr = _train_tiles(run)
    from edgekit.train import _batches, normalise

    emb = lr.model.collect_embeddings(normalise(b, lr.spec) for b in _batches(train_tiles, 4, False, None))
    saved = lr.model.scorer.centres.clone()
    facts = lr.model.fit_centres(emb)  # k-means of one process on all the embeddings
    ddp_facts = info["method_facts"]
    assert facts["n_embeddings"] == ddp_facts["n_embeddings"] == 19
    assert facts["centre_indices"] == ddp_facts["centre_indices"]
    assert facts["cluster_sizes"] == ddp_facts["cluster_sizes"]
    # the same rows; their values differ by float32 noise (~1e-7) because each rank embedded its
    # share in other batches, so the tolerance is relative to the size of the centres
    assert float((saved - lr.model.scorer.centres).norm() / saved.norm()) < 1e-5


@pytest.mark.slow
def test_a_rank_that_fails_prints_its_own_line_and_the_others_stay_quiet(tmp_path: Path, tiny_dataset: Path,
                                                                        tiny_recipe_file: Path) -> None:
    """--data is relative: rank 0's node has the dataset, rank 1's has not."""
    base = tmp_path / "job"
    (base / "r0").mkdir(parents=True)
    (base / "r0" / "data").symlink_to(tiny_dataset)
    procs = _start_ranks(base, str(tiny_recipe_file), "--data", "data", "--out", "run")
    errs = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert [ln for ln in errs[0].splitlines() if ln.strip()] == []  # rank 0 only exits
    assert errs[1].splitlines()[-1].startswith("error: rank 1/2 (") and "data: dataset folder not found" in errs[1]
    assert not (base / "r0" / "run" / "run.json").exists()


def test_without_torchrun_the_single_process_path_is_taken(tiny_run: Path) -> None:
    info = json.loads((tiny_run / "run.json").read_text())
    assert "distributed" not in info
    assert "world_size" not in torch.load(tiny_run / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
def test_rd_lite0_one_epoch_ddp_scores_like_one_process(tmp_path: Path) -> None:
    """The shipped rd-lite0 recipe (random-init backbone: no weight download), 1 epoch, 256²:
    2 ranks × batch 8 against one process × batch 16, the same optimiser steps per epoch. The
    weights differ (BatchNorm statistics per rank, sampling order), so the scores are compared
    as distributions on the same test images, and each run's statistics against its own
    single-process refit."""
    from edgekit.data.synth import write_synthetic_dataset
    from edgekit.evaluate.metrics import image_auroc

    data = tmp_path / "fabric"
    write_synthetic_dataset(data, kind="fabric", seed=1, n_train=48, n_test_good=12, n_test_defect=12, size=256)
    recipe = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "rd-lite0.yaml").read_text())
    recipe["backbone"]["weights"] = "none"
    r_ddp = _recipe_file(tmp_path, recipe)
    single = dict(recipe, train={**recipe["train"], "batch_size": 16})
    (tmp_path / "single").mkdir()
    r_single = _recipe_file(tmp_path / "single", single)
    # the README's command, as written (torchrun and edgekit from this environment)
    bindir = Path(sys.executable).parent
    env = {**_env(), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    res = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "--no-python", "edgekit", "train",
                          str(r_ddp), "--data", str(data), "--out", "ddp-run", "--epochs", "1", "--device", "cpu"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    t_ddp = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("run saved to ddp-run") == 1  # rank 0 only
    t0 = time.perf_counter()
    train_run(r_single, data, tmp_path / "single-run", epochs=1, quiet=True)
    t_single = time.perf_counter() - t0

    from edgekit.data.dataset import scan_dataset

    test = scan_dataset(data, require_test=True).test
    labels = [s.label for s in test]
    aucs = []
    for run in (tmp_path / "ddp-run", tmp_path / "single-run"):
        lr = load_run(run)
        tiles = load_tiles([s.path for s in test], lr.spec)[0]
        _, scores = score_tiles_torch(lr.model, tiles, lr.spec, 8, torch.device("cpu"))
        aucs.append(image_auroc(labels, scores))
        train_tiles, _, _ = _train_tiles(run)
        saved = lr.model.scorer.pos_shift0.clone()
        lr.model.scorer.reset()
        fit_score_statistics(lr.model, lr.recipe, train_tiles, lr.spec, torch.device("cpu"))
        torch.testing.assert_close(saved, lr.model.scorer.pos_shift0, rtol=1e-5, atol=0)
    n = json.loads((tmp_path / "single-run" / "run.json").read_text())["data"]["n_train_tiles"]
    print(f"rd-lite0 1 epoch, {n} tiles: image AUROC DDP {aucs[0]:.4f} single {aucs[1]:.4f}; "
          f"wall (incl. start-up) DDP 2x gloo {t_ddp:.1f} s, single {t_single:.1f} s")
    assert abs(aucs[0] - aucs[1]) < 0.15, aucs
