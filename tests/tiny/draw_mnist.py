"""Tiny MNIST in the real IDX format (gzipped) for `task=draw_mnist`: bright blocks of varying intensity at
random places, so the binarized images have structure a tiny DRAW can learn within a few steps."""

from __future__ import annotations

import pathlib

import numpy as np


def write_mnist(folder: pathlib.Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> pathlib.Path:
    """Write the four MNIST IDX files (gzipped) into folder; returns folder."""
    from tensorlstm.data.idx import write_idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            r, c = rng.integers(4, 16, size=2)
            images[k, r : r + 8, c : c + 6] = rng.integers(60, 256, size=(8, 6))
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, size=n).astype(np.uint8))
    return folder


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny IDX files; overrides that make `task=draw_mnist` run in seconds with any cell."""
    folder = write_mnist(tmp_path / "mnist")
    return [
        f"task.data_dir={folder}",
        f"task.cache_dir={tmp_path / 'cache'}",
        "task.valid_size=20",
        "task.batch_size=10",
        "task.eval_batch_size=20",
        "task.glimpses=3",
        "task.latent_size=4",
        "task.hidden_size=16",
        "task.hidden_modes=[2,2,2,2]",
        "task.encoder_in_modes=null",   # the cell factorizes 2*2*2 + 16 = 24 itself
        "task.decoder_in_modes=[2,2,1,1]",
        "task.num_samples=4",
    ]
