"""Tiny MNIST for `task=pmnist`: the same learnable IDX files as tests/tiny/smnist.py."""

from __future__ import annotations

import importlib.util
import pathlib


def _smnist():
    spec = importlib.util.spec_from_file_location(
        "tiny_smnist", pathlib.Path(__file__).with_name("smnist.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny IDX files; overrides that make `task=pmnist` run in seconds on them."""
    tiny = _smnist()
    return [*tiny.overrides(tiny.write_mnist(tmp_path / "mnist")), "task.permutation_seed=3"]
