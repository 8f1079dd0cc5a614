"""``edgekit train`` under torchrun: the process group, the data split and the reductions that
make a DDP run fit the same statistics as one process.

torchrun (``python -m torch.distributed.run``) starts one process per GPU and sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; :func:`from_env` joins that job through
torch's ``env://`` rendezvous (so torchrun's agent store is reused) with a ``timeout`` on the
process group: a rank that dies or hangs ends every collective of the others after at most that
long instead of a hang. Without those variables it returns the single-process :class:`Dist`, and
``train_run`` takes exactly the code path it takes without torchrun.

Who does what in a DDP run:

* every rank trains on its part of the tiles (``DistributedSampler``: seeded, epoch-varying
  shuffle, padded so every rank takes the same number of steps); gradients are averaged by
  ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs);
* the held-out loss (model selection, early stop) is the all-reduced sum over every rank's
  contiguous share of the held-out tiles, so every rank takes the same decisions;
* score statistics are all-reduced sums/counts, k-means runs on the gathered embeddings in
  tile order, the provisional threshold is the all-reduced max: the same numbers as one
  process on the same tiles, up to float summation order;
* rank 0 alone writes the run directory, checkpoints, progress and logs; the checkpoint it
  resumes from is broadcast, so nodes need not share a file system.

A failure ends the job with one line: a rank that raises an edgekit error prints it prefixed
with its rank and records it in the job's store; a rank that dies silently (killed, node lost)
is named by the lowest surviving rank, which finds it missing from a roll call in the store.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from edgekit.errors import ConfigError, EdgekitError

DEFAULT_TIMEOUT_S = 600.0
_ROLL_CALL_S = 5.0  # how long survivors wait for each other before naming the ranks that are gone


class DistributedError(EdgekitError):
    """A DDP job cannot go on (a rank failed, died or disagrees). ``quiet``: another rank prints
    the line for this failure; this rank only exits non-zero."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer; start the job with torchrun") from None


@dataclass
class Dist:
    """This process's place in the job; ``Dist()`` is the single process (every method then is
    the identity or a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S
    host: str = field(default_factory=socket.gethostname)
    _store: Any = None
    phase: str = "start-up"

    # ------------------------------------------------------------------ identity
    @property
    def enabled(self) -> bool:
        """True inside a torchrun job (a process group exists), even with one process."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world_size} ({self.host})"

    # ------------------------------------------------------------------ data split
    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one; rank order =
        item order, so gathering the shares in rank order restores the original order)."""
        if not self.enabled:
            return slice(0, n)
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    # ------------------------------------------------------------------ collectives
    def _comm(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if self.backend == "nccl" else t.cpu()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) of ``t`` over the ranks, on ``t``'s device and dtype; ``t`` itself unchanged."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        buf = self._comm(t.detach().clone())
        dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return buf.to(t.device)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` (rows along dim 0, equal trailing shape) concatenated in rank order."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        n = torch.tensor([t.shape[0]], dtype=torch.int64)
        sizes = [self._comm(torch.zeros_like(n)) for _ in range(self.world_size)]
        dist.all_gather(sizes, self._comm(n))
        counts = [int(s.item()) for s in sizes]
        pad = max(counts)
        buf = torch.zeros((pad, *t.shape[1:]), dtype=t.dtype)
        buf[: t.shape[0]] = t.detach().cpu()
        parts = [self._comm(torch.empty_like(buf)) for _ in range(self.world_size)]
        dist.all_gather(parts, self._comm(buf))
        return torch.cat([p[:c].to(t.device) for p, c in zip(parts, counts)])

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; e.g. the checkpoint to resume from)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @torch.no_grad()
    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Overwrite every parameter and buffer with rank 0's (shapes must already agree)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for t in module.state_dict().values():
            if t.numel() == 0:  # e.g. score statistics before their fit: nothing to send
                continue
            buf = self._comm(t)
            dist.broadcast(buf, src=0)
            if buf is not t:
                t.copy_(buf)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    # ------------------------------------------------------------------ failures
    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a failure inside a DDP job into one line: an edgekit error of this rank is prefixed
        with the rank and recorded for the others; a collective that fails because a peer is gone
        (connection closed, timeout) becomes a DistributedError naming the rank(s) that are gone."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except DistributedError:
            raise
        except EdgekitError as exc:
            self._record_failure(str(exc))
            err = type(exc)(f"{self.label}: {exc}")
            # the same error on every rank (a bad recipe, too few tiles): rank 0's line says it
            err.quiet = not self.is_main and self._rank0_failed_with(str(exc))  # type: ignore[attr-defined]
            raise err from exc
        except torch.distributed.DistError as exc:
            raise self._lost_peer(exc) from exc
        except RuntimeError as exc:
            # gloo reports a closed peer connection as a plain RuntimeError
            if "gloo" in str(exc).lower() or "connection" in str(exc).lower():
                raise self._lost_peer(exc) from exc
            self._record_failure(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            raise
        except BaseException as exc:
            self._record_failure(f"{type(exc).__name__}: {exc}")
            raise

    def _record_failure(self, message: str) -> None:
        if self._store is None:
            return
        with contextlib.suppress(Exception):
            self._store.set(f"failed/{self.rank}", message[:500])

    def _rank0_failed_with(self, message: str, wait_s: float = 2.0) -> bool:
        if self._store is None:
            return False
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(Exception):
            while True:
                if self._store.check(["failed/0"]):
                    return self._store.get("failed/0").decode(errors="replace") == message[:500]
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        return False

    def _lost_peer(self, exc: BaseException) -> DistributedError:
        """Roll call in the job's store: who else is still here, and did someone say why it left."""
        store = self._store
        what = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if store is None:
            return DistributedError(f"{self.label}: the job lost a rank during {self.phase} ({what}); see the other ranks' output")
        try:
            store.set(f"alive/{self.rank}", "1")
            deadline = time.monotonic() + _ROLL_CALL_S
            others = [r for r in range(self.world_size) if r != self.rank]
            while time.monotonic() < deadline:
                if all(store.check([f"alive/{r}"]) or store.check([f"failed/{r}"])
                       for r in others):
                    break
                time.sleep(0.1)
            failed = {r: store.get(f"failed/{r}").decode(errors="replace")
                      for r in others if store.check([f"failed/{r}"])}
            alive = [r for r in range(self.world_size) if store.check([f"alive/{r}"])]
        except Exception:
            # the store is gone too: it lives in rank 0 unless torchrun's agent hosts it
            return DistributedError(f"{self.label}: lost contact with rank 0 and the job's store during {self.phase} "
                                    f"({what}); rank 0's process died or its node went down")
        gone = [r for r in range(self.world_size) if r not in alive and r not in failed]
        quiet = self.rank != min(alive, default=self.rank)
        if failed:
            # the failing rank printed its own line; the others only exit
            r, msg = next(iter(failed.items()))
            return DistributedError(f"{self.label}: stopped: rank {r} failed: {msg}", quiet=True)
        names = ", ".join(map(str, gone)) if gone else "another rank"
        ranks = "ranks" if len(gone) > 1 else "rank"
        return DistributedError(
            f"{self.label}: {ranks} {names} stopped answering during {self.phase} (process killed or its node went "
            f"down; collectives time out after {self.timeout_s:g} s): ending the job", quiet=quiet)

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.backend = None


def in_torchrun() -> bool:
    """True when the launcher set the env:// variables (torchrun, or a manual multi-node start)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def from_env(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """Join the torchrun job described by the environment, or the single process without one.

    ``device`` "cuda" takes GPU LOCAL_RANK and the NCCL backend; "cpu" takes gloo."""
    if not in_torchrun():
        return Dist(device=torch.device(device))
    import torch.distributed as dist
    from torch.distributed.rendezvous import rendezvous

    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    label = f"rank {rank}/{world} ({socket.gethostname()})"
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ConfigError(f"{label}: {var} is not set; start the job with torchrun (it sets MASTER_ADDR/MASTER_PORT)")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{label}: --device cuda: no CUDA device visible to torch; use --device cpu or install a CUDA build")
        n = torch.cuda.device_count()
        if local >= n:
            raise ConfigError(f"{label}: LOCAL_RANK {local} but this node has {n} CUDA device(s); "
                              f"start torchrun with --nproc-per-node {n} or fewer")
        dev, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(dev)
    else:
        dev, backend = torch.device("cpu"), "gloo"
    timeout = timedelta(seconds=timeout_s)
    addr = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        store, rank, world = next(rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
        store.set_timeout(timeout)
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=world,
                                timeout=timeout, device_id=dev if backend == "nccl" else None)
    except (dist.DistError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"{label}: could not join the job at {addr} within {timeout_s:g} s ({first}); "
                               "start every rank with the same rendezvous endpoint and check that the port is reachable") from None
    return Dist(rank=rank, world_size=world, local_rank=local, backend=backend, device=dev, timeout_s=timeout_s,
                # a torchrun restart reuses the agent's store: keys of an earlier attempt must not count
                _store=dist.PrefixStore(f"edgekit/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store))
