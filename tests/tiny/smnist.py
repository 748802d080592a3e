"""Tiny MNIST in the real IDX format (gzipped), learnable: the class is where a bright block lies.

Image of class c (0..9): dim noise everywhere and a bright vertical bar over columns 4 + 2c and 5 + 2c, so
an RNN reading the image 16 pixels per step can tell the classes apart within a few dozen steps.
"""

from __future__ import annotations

import pathlib

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 40, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, :, 4 + 2 * c : 6 + 2 * c] = 255
    return images


def write_mnist(
    folder: pathlib.Path, n_train: int = 300, n_test: int = 60, seed: int = 0, gz: bool = True
) -> pathlib.Path:
    """Write the four MNIST IDX files (gzipped unless gz=False) into folder; returns folder."""
    from tensorlstm.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        img_name, lbl_name = FILES[split]
        if not gz:
            img_name, lbl_name = img_name[:-3], lbl_name[:-3]
        write_idx(folder / img_name, make_images(labels, rng))
        write_idx(folder / lbl_name, labels.astype(np.uint8))
    return folder


def overrides(folder: pathlib.Path) -> list[str]:
    return [
        f"task.data_dir={folder}",
        "task.chunk=16",  # 49 steps of 16 pixels
        "task.valid_size=50",
        "task.batch_size=16",
        "task.eval_batch_size=64",
        "task.hidden_size=16",
        "task.in_modes=[2,2,2,2]",
        "task.hidden_modes=[2,2,2,2]",
    ]


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny IDX files; overrides that make `task=smnist` run in seconds on them."""
    return overrides(write_mnist(tmp_path / "mnist"))
