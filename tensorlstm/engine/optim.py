"""Optimizers and learning-rate schedules from the `optim` config group."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensorlstm.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
IMPLEMENTATIONS = ("auto", "fused", "foreach", "loop")
FUSED = ("adam", "adamw", "sgd")  # torch has fused CPU and CUDA kernels for these


def _implementation(name: str, impl: str, model: nn.Module) -> dict:
    """Keyword arguments that select torch's optimizer kernel: `auto` takes the fused one where torch has it
    for every parameter's device (one kernel over all tensors), else foreach (one op per step over the list);
    `loop` is torch's per-parameter for-loop. The choice is fixed by the config, so a resumed run takes the same
    kernel and stays bit-identical."""
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"optim.implementation={impl!r}; choose one of: {', '.join(IMPLEMENTATIONS)}")
    devices = {p.device.type for p in model.parameters()}
    fusable = name in FUSED and devices <= {"cpu", "cuda"}
    if impl == "fused" and not fusable:
        raise UserError(f"optim.implementation=fused: torch has no fused {name} for {sorted(devices)}; "
                        "use auto or foreach")
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
    name = cfg.get("name", "adam")
    lr = float(cfg.get("lr", 1e-3))
    groups = _param_groups(model, float(cfg.get("weight_decay", 0.0)), cfg.get("decay_params", "all"))
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optim.name {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    kernel = _implementation(name, cfg["implementation"], model)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), **kernel)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), **kernel)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)), **kernel)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)), **kernel)
    raise UserError(f"unknown optim.name {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def lr_factor(cfg: dict, max_steps: int):
    """The multiplier of the base lr at a given step (warm-up, then the schedule)."""
    schedule = cfg.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise UserError(f"unknown optim.schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    warmup = int(cfg.get("warmup_steps", 0))
    lr = float(cfg.get("lr", 1e-3))
    min_ratio = float(cfg.get("min_lr", 0.0)) / lr if lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        s = step - warmup
        if schedule == "cosine":
            progress = min(1.0, s / max(1, max_steps - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "step":
            return float(cfg.get("gamma", 0.5)) ** (s // max(1, int(cfg.get("step_size", 1000))))
        if schedule == "inverse":
            return 1.0 / (1.0 + float(cfg.get("decay", 0.0)) * s)
        return 1.0

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, max_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, max_steps))
