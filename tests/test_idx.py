"""The MNIST IDX reader: round trip, gzip, and one-line errors for damaged files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tensorlstm.data.idx import read_idx, write_idx
from tensorlstm.errors import UserError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, arr)
    np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


def test_damaged_files_are_one_line_errors(tmp_path):
    write_idx(tmp_path / "ok-idx1-ubyte", np.arange(10, dtype=np.uint8))
    data = (tmp_path / "ok-idx1-ubyte").read_bytes()
    (tmp_path / "short-idx1-ubyte").write_bytes(data[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short-idx1-ubyte")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(data)[:12])
    with pytest.raises(UserError, match="cannot be read"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "bad-idx1-ubyte").write_bytes(b"PK\x03\x04" + data)
    with pytest.raises(UserError, match="not an IDX file"):
        read_idx(tmp_path / "bad-idx1-ubyte")
