"""Tiny MNIST for `task=pmnist`: the same learnable IDX files as tests/tiny/smnist.py."""

from __future__ import annotations

import pathlib

from . import smnist


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny IDX files; overrides that make `task=pmnist` run in seconds on them."""
    return [*smnist.overrides(smnist.write_mnist(tmp_path / "mnist")), "task.permutation_seed=3"]
