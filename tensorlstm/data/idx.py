"""Reader for the IDX format of MNIST (``train-images-idx3-ubyte[.gz]`` and friends)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from tensorlstm.errors import UserError, why_not_a_dir

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_HELP = (
    "expects the four MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; .gz or not) from "
    "http://yann.lecun.com/exdb/mnist/ (or any mirror); set task.data_dir=<that folder>"
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError) as e:  # truncated or corrupt .gz (gzip.BadGzipFile is an OSError)
        raise UserError(f"{path} cannot be read ({e}); re-download it") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{path} is not an IDX file (bad magic number); re-download it")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({arr.size} of {int(np.prod(shape))} values); re-download it")
    return arr.reshape(shape)


def write_idx(path: str | Path, arr: np.ndarray) -> None:
    """Write a uint8 array as IDX (gzipped when the name ends in .gz). Used by tests and tools."""
    path = Path(path)
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (data_dir / name).exists():
            return data_dir / name
    raise UserError(f"MNIST file {stem}[.gz] not found in {data_dir}: task {MNIST_HELP}")


def load_mnist(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"MNIST data directory {data_dir} {why_not_a_dir(data_dir)}: task {MNIST_HELP}")
    img_name, lbl_name = MNIST_FILES[split]
    images = read_idx(_find(data_dir, img_name))
    labels = read_idx(_find(data_dir, lbl_name)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"MNIST {split} images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in count; "
                        "re-download them")
    return images, labels
