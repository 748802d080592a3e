"""Overrides that make `task=memorization` run in seconds (the task generates its data)."""

from __future__ import annotations

import pathlib


def make(tmp_path: pathlib.Path) -> list[str]:
    return ["task.length=3", "task.symbols=5", "task.batch_size=8", "task.valid_size=40", "task.test_size=40",
            "task.hidden_size=16"]
