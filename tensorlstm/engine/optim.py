"""Optimizers and learning-rate schedules from the `optim` config group."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensorlstm.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop", "default")
FUSED = ("adam", "adamw", "sgd")  # torch has fused CPU and CUDA kernels for these


def _implementation(name: str, impl: str, model: nn.Module) -> dict:
    """Keyword arguments that select torch's optimizer kernel: `auto` takes the fused one where torch has it
    for every parameter's device (one kernel over all tensors), else foreach (one op per step over the list);
    `loop` is torch's per-parameter for-loop; `default` leaves the choice to torch (foreach on CUDA, the loop on
    a CPU), as every run did before this key existed. The choice is fixed by the config, so a resumed run takes
    the same kernel and stays bit-identical."""
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"optim.implementation={impl!r}; choose one of: {', '.join(IMPLEMENTATIONS)}")
    devices = {p.device.type for p in model.parameters()}
    fusable = name in FUSED and devices <= {"cpu", "cuda"}
    if impl == "fused" and not fusable:
        raise UserError(f"optim.implementation=fused: torch has no fused {name} for {sorted(devices)}; "
                        "use auto or foreach")
    if impl == "default":
        return {}
    if impl == "loop":
        return {"foreach": False}
    if impl == "foreach" or not fusable:
        return {"foreach": True}
    return {"fused": True}
SCHEDULES = ("constant", "cosine", "step", "inverse")


def _param_groups(model: nn.Module, weight_decay: float, which: str) -> list[dict]:
    if which not in ("all", "matrices", "none"):
        raise UserError(f"optim.decay_params={which!r}; choose all, matrices or none")
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if which == "all" or (which == "matrices" and p.dim() >= 2):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    name = cfg["name"]
    lr = float(cfg["lr"])
    groups = _param_groups(model, float(cfg["weight_decay"]), cfg["decay_params"])
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    kernel = _implementation(name, cfg["implementation"], model)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg["betas"]), **kernel)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg["betas"]), **kernel)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg["momentum"]), **kernel)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=float(cfg["momentum"]), **kernel)
    raise UserError(f"unknown optim.name {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def lr_factor(cfg: dict, max_steps: int):
    """The multiplier of the base lr at a given step (warm-up, then the schedule)."""
    schedule = cfg["schedule"]
    if schedule not in SCHEDULES:
        raise UserError(f"unknown optim.schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    warmup = int(cfg["warmup_steps"])
    lr = float(cfg["lr"])
    min_ratio = float(cfg["min_lr"]) / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        s = step - warmup
        if schedule == "cosine":
            progress = min(1.0, s / max(1, max_steps - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "step":
            return float(cfg["gamma"]) ** (s // max(1, int(cfg["step_size"])))
        if schedule == "inverse":
            return 1.0 / (1.0 + float(cfg["decay"]) * s)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, max_steps))
