"""Data-parallel training under torchrun: process group from the environment, DDP, batch shards, reductions.

`torchrun --nproc_per_node=N -m tensorlstm train ...` starts N processes with RANK / WORLD_SIZE / LOCAL_RANK
set. Each trains on its share of the global batch: `Task.train_batch(step)` is a pure function of
(seed, step), so every rank draws the same global batch and keeps its contiguous rows (`shard`). The loss of
rank r is reweighted by world * n_r / n (n_r: the terms its loss averages over, `Task.loss_terms`), so that
DDP's gradient average is exactly the gradient of the one-process loss over the global batch, whatever the
shard sizes. Rank 0 alone writes the run dir, logs, W&B and checkpoints and evaluates (with the unwrapped
model); every control-flow decision (skip or stop on a non-finite loss, signals, early stop) is reduced
over the ranks first, so all ranks take the same branch and no collective is left waiting.

Nothing here is used when WORLD_SIZE is unset or 1: a single process runs exactly as before.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tensorlstm.cells.base import map_state
from tensorlstm.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """The torchrun world from the environment (a single process when WORLD_SIZE is unset)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(timeout_minutes: float = 60.0) -> World:
    """Join the process group of a torchrun launch (idempotent); gloo for CPU tensors, NCCL for CUDA ones."""
    world = env_world()
    if not world.enabled or dist.is_initialized():
        return world
    if "MASTER_ADDR" not in os.environ:
        raise UserError("WORLD_SIZE > 1 but no MASTER_ADDR: start several processes with torchrun, "
                        "e.g. torchrun --standalone --nproc_per_node=2 -m tensorlstm train ...")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return world


def current() -> World:
    """The world of this process: (rank, size) of the initialised group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank (cuda -> cuda:LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and world.enabled:
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"local rank {world.local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                            "use --nproc_per_node <= the GPU count (or device=cpu for gloo on the CPU)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


class DDP(DistributedDataParallel):
    """DistributedDataParallel that lets tasks reach the model's own attributes (e.g. ``model.classifier``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """DDP around the model when the world has several ranks. Every buffer of our models is a constant
    (tables, permutations, pixel statistics), so buffers are not broadcast; every parameter is used in
    every forward, so unused-parameter detection stays off."""
    if not world.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    # newer torch renames broadcast_buffers (the constant buffers are equal on every rank either way)
    sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters \
        else "broadcast_buffers"
    return DDP(model, device_ids=ids, find_unused_parameters=False, **{sync: False})


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state dict without DDP's ``module.`` prefix (so any checkpoint loads in one process)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


class NullLogger:
    """What ranks other than 0 log to: nothing (rank 0 writes metrics.jsonl and W&B)."""

    def __init__(self, run_id: str | None = None, elapsed: float = 0.0) -> None:
        self.run_id = run_id
        self._elapsed = elapsed

    def elapsed(self) -> float:
        return self._elapsed

    def log(self, record: dict, images=None) -> None:
        pass

    def log_images(self, images, step: int) -> None:
        pass

    def summary(self, summary: dict) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


# --- batches and states ----------------------------------------------------------------------------------
def shard_rows(rows: int, world: World) -> slice:
    """Rank r's contiguous rows of a global batch of `rows` (sizes differ by at most one)."""
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def shard(batch: Any, world: World) -> Any:
    """Rank r's rows of every batch tensor with a leading batch axis; 0-d tensors (flags) stay whole.

    Every tensor with dims must have the same number of rows (the global batch size)."""
    if not world.enabled:
        return batch
    rows = {t.shape[0] for t in _tensors(batch) if t.dim() > 0}
    if len(rows) > 1:
        raise ValueError(f"cannot shard a batch whose tensors have different row counts {sorted(rows)}")
    if not rows:
        return batch
    part = shard_rows(rows.pop(), world)
    return _map(lambda t: t[part] if t.dim() > 0 else t, batch)


def gather_state(state: Any, world: World) -> Any:
    """The full-batch carried state (TBPTT) from every rank's rows (states are batch-first), on every rank.
    The shards must be equal (the trainer requires a global batch divisible by the world size there)."""
    if not world.enabled or state is None:
        return state

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)

    return map_state(gather, state)


def shard_state(state: Any, world: World) -> Any:
    """This rank's rows of a full-batch carried state (a checkpoint's, or a single process's)."""
    if not world.enabled or state is None:
        return state
    return map_state(lambda t: t[shard_rows(t.shape[0], world)], state)


# --- reductions and broadcasts ---------------------------------------------------------------------------
def all_sum(values: list[float], device: torch.device, world: World) -> list[float]:
    """Elementwise sum over ranks of a list of floats (one small all-reduce, float64)."""
    if not world.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast(obj: Any, world: World, src: int = 0) -> Any:
    """Rank src's picklable object on every rank."""
    if not world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's picklable object, in rank order, on every rank."""
    if not world.enabled:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _map(fn, obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(fn, v) for v in obj)
    return obj
