"""Binarized MNIST for density models (DRAW): a fixed binarization stored with its seed, or dynamic.

* ``fixed``: every pixel of every image is drawn once as Bernoulli(intensity / 255) with a numpy generator
  seeded by ``binarize_seed``; the result is cached (bit-packed, with the seed and a fingerprint of the
  source images) as ``binarized_mnist_seed<seed>.npz`` so that every run and every machine with the same
  seed trains and is evaluated on the same bits. The cache goes to ``cache_dir`` when given, else to
  ``$XDG_CACHE_HOME/tensorlstm`` (default ``~/.cache/tensorlstm``); the data folder is never written to.
* ``dynamic``: training batches are re-binarized on the fly (a new draw per batch, a pure function of the
  run seed and the step); validation and test use the fixed binarization so that scores are comparable.
* ``larochelle``: the standard fixed binarization of Larochelle & Murray (2011), read from
  ``binarized_mnist_{train,valid,test}.amat`` in ``data_dir`` (text, 784 zeros/ones per line; 50k/10k/10k).

Splits: the validation images are the last ``valid_size`` images of the MNIST training file (the same
50,000/10,000 cut as the Larochelle files); the test split is the 10,000 test images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tensorlstm.data.idx import load_mnist
from tensorlstm.errors import UserError

PIXELS = 784
AMAT_FILES = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}


def binarize(images: np.ndarray, seed: int) -> np.ndarray:
    """Bernoulli(images / 255) drawn with a generator seeded by `seed`: uint8 zeros/ones (N, 784)."""
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return (rng.random(flat.shape, dtype=np.float32) < flat).astype(np.uint8)


def _fingerprint(images: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(images).tobytes()).hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tensorlstm``, or ``~/.cache/tensorlstm``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tensorlstm"


def _cache_path(cache_dir: str | Path | None, seed: int) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / f"binarized_mnist_seed{seed}.npz"


def _load_cached(path: Path, seed: int, train_fp: str, test_fp: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as f:
            if int(f["seed"]) != seed or str(f["train_fp"]) != train_fp or str(f["test_fp"]) != test_fp:
                return None
            return {k: np.unpackbits(f[k], axis=1)[:, :PIXELS] for k in ("train", "test")}
    except (OSError, KeyError, ValueError):
        return None  # missing or unreadable: rebuild it


def _save_cached(path: Path, data: dict[str, np.ndarray], seed: int, train_fp: str, test_fp: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    packed = {k: np.packbits(v, axis=1) for k, v in data.items()}
    np.savez(tmp, seed=seed, train_fp=train_fp, test_fp=test_fp, **packed)
    os.replace(tmp, path)


def fixed_binarization(
    data_dir: str | Path, seed: int, cache_dir: str | Path | None = None
) -> tuple[dict[str, np.ndarray], Path | None]:
    """{'train': (60000, 784), 'test': (10000, 784)} uint8 bits of the fixed binarization with this seed,
    and the cache file used (None when it could not be written). Also the grey images under 'train_grey'."""
    data_dir = Path(data_dir)
    grey = {split: load_mnist(data_dir, split)[0] for split in ("train", "test")}
    fps = {split: _fingerprint(img) for split, img in grey.items()}
    path = _cache_path(cache_dir, seed)
    bits = _load_cached(path, seed, fps["train"], fps["test"])
    if bits is None:
        # Independent streams per split so the test bits do not depend on the size of the train file.
        bits = {split: binarize(grey[split], seed * 2 + i) for i, split in enumerate(("train", "test"))}
        try:
            _save_cached(path, bits, seed, fps["train"], fps["test"])
        except OSError:
            path = None
    bits["train_grey"] = grey["train"].reshape(len(grey["train"]), -1)
    return bits, path


def read_amat(path: Path) -> np.ndarray:
    """A Larochelle & Murray .amat file: one image per line, 784 whitespace-separated 0/1 values."""
    try:
        arr = np.loadtxt(path, dtype=np.uint8, ndmin=2)
    except ValueError as e:
        raise UserError(f"{path} is not a binarized MNIST .amat file ({e}); re-download it") from e
    if arr.shape[1] != PIXELS or arr.max(initial=0) > 1:
        raise UserError(f"{path}: expected 784 values of 0/1 per line, got shape {arr.shape}; re-download it")
    return arr


def load_binarized_mnist(
    data_dir: str | Path,
    binarization: str = "fixed",
    seed: int = 0,
    valid_size: int = 10000,
    cache_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Splits 'train', 'valid', 'test' as uint8 bits (N, 784); for ``dynamic`` also 'train_grey' (N, 784)
    uint8 intensities of the training images, to be re-binarized per batch."""
    data_dir = Path(data_dir)
    if binarization == "larochelle":
        missing = [n for n in AMAT_FILES.values() if not (data_dir / n).exists()]
        if missing:
            raise UserError(
                f"{', '.join(missing)} not found in {data_dir}: binarization=larochelle expects the files "
                "binarized_mnist_{train,valid,test}.amat (Larochelle & Murray 2011, from "
                "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/); set task.data_dir"
            )
        return {s: read_amat(data_dir / n) for s, n in AMAT_FILES.items()}
    if binarization not in ("fixed", "dynamic"):
        raise UserError(f"unknown task.binarization {binarization!r}; choose fixed, dynamic or larochelle")
    bits, _ = fixed_binarization(data_dir, seed, cache_dir)
    n_train = len(bits["train"])
    if not 0 < valid_size < n_train:
        raise UserError(f"task.valid_size={valid_size} must be between 1 and {n_train - 1}; change it")
    cut = n_train - valid_size
    out = {"train": bits["train"][:cut], "valid": bits["train"][cut:], "test": bits["test"]}
    if binarization == "dynamic":
        out["train_grey"] = bits["train_grey"][:cut]
    return out
