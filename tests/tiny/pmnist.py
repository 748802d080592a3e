"""Tiny MNIST for `task=pmnist`: the same learnable IDX files as tests/tiny/smnist.py.

Imported as `tiny.pmnist` (the tests) or run as a script: `python tests/tiny/pmnist.py <folder>` writes the files
there and prints the overrides."""

from __future__ import annotations

import pathlib
import sys

if __package__:
    from . import smnist
else:  # a script: its own folder is on sys.path
    import smnist


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny IDX files; overrides that make `task=pmnist` run in seconds on them."""
    return [*smnist.overrides(smnist.write_mnist(tmp_path / "mnist")), "task.permutation_seed=3"]


if __name__ == "__main__":
    print(" ".join(make(pathlib.Path(sys.argv[1]))))
