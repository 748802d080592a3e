"""Tiny data in each task's real format, one module per task: `tiny.<task>.make(tmp_path)` writes the files (if the
task reads any) and returns the overrides that make `task=<task>` train in seconds on them. A new task adds
`tests/tiny/<task>.py`; the task x cell matrix (tests/test_matrix.py) and the experiment smoke test then use it."""

from __future__ import annotations

import importlib
import pathlib


def overrides(task: str, tmp_path: pathlib.Path) -> list[str]:
    """The tiny-data overrides of `task`, writing its files under tmp_path."""
    try:
        module = importlib.import_module(f"{__name__}.{task}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{task}":
            raise
        raise AssertionError(f"task {task!r} has no tests/tiny/{task}.py (tiny data + overrides)") from None
    return module.make(tmp_path)
