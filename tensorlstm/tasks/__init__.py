"""Task registry: name -> 'module:Class'. Imported lazily so that one task's dependencies never
slow down or break another."""

from __future__ import annotations

import importlib

from tensorlstm.errors import UserError
from tensorlstm.tasks.base import Task

TASKS = {
    "addition": "tensorlstm.tasks.algorithmic:AdditionTask",
    "memorization": "tensorlstm.tasks.algorithmic:MemorizationTask",
    "smnist": "tensorlstm.tasks.mnist_seq:SequentialMNISTTask",
    "pmnist": "tensorlstm.tasks.mnist_seq:PermutedMNISTTask",
    "char_lm": "tensorlstm.tasks.char_lm:CharLMTask",
    "polyphonic": "tensorlstm.tasks.polyphonic:PolyphonicTask",
    "ucf11": "tensorlstm.tasks.video:UCF11Task",
    "hollywood2": "tensorlstm.tasks.video:Hollywood2Task",
    "youtube_celebrities": "tensorlstm.tasks.video:YouTubeCelebritiesTask",
    "draw_mnist": "tensorlstm.tasks.draw_mnist:DrawMNISTTask",
    "captioning": "tensorlstm.tasks.captioning:CaptioningTask",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_task(cfg: dict, seed: int) -> Task:
    return task_class(cfg["name"])(cfg, seed)
