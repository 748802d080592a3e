"""The compiled gate kernels (tensorlstm/native.cpp through tensorlstm/native.py): every kernel against its torch-op
form (fused_loop.TorchGates) on strided operands in float32 and float64, the build cache, the fallback to torch
ops where nothing compiles, and the config key."""

from __future__ import annotations

import logging

import pytest
import torch

from tensorlstm import native
from tensorlstm.cells import build_cell
from tensorlstm.cells.fused_loop import TorchGates
from tensorlstm.defaults import cell_config
from tensorlstm.engine.checkpoint import resume_pins
from tensorlstm.errors import UserError

needs_library = pytest.mark.skipif(not native.available(), reason="tensorlstm/native.cpp does not build here")
B, H = 5, 7

# per kernel: (operand name, width in units of H, "in" read | "out" written | "io" both); the torch form and the
# library get equal copies, the "io" and "out" operands are compared afterwards
OPERANDS = {
    "lstm_forward": [("a", 4, "io"), ("bias", 4, "row"), ("c_prev", 1, "in"), ("c", 1, "out"), ("tc", 1, "out"),
                     ("h", 1, "out")],
    "lstm_backward": [("dh", 1, "in"), ("dc", 1, "io"), ("a", 4, "act"), ("c_prev", 1, "in"), ("tc", 1, "tanh"),
                      ("da", 4, "out")],
    "lstm_forward_t": [("xw", 4, "in"), ("bias", 4, "row"), ("gT", 4, "cols"), ("c_prev", 1, "in"), ("c", 1, "out"),
                       ("tc", 1, "out"), ("h", 1, "out"), ("a", 4, "out")],
    "lstm_backward_t": [("dc", 1, "io"), ("g", 1, "in"), ("dhT", 1, "cols"), ("a", 4, "act"), ("c_prev", 1, "in"),
                        ("tc", 1, "tanh"), ("da", 4, "out")],
    "gru_forward": [("xw", 3, "in"), ("bias", 3, "row"), ("hu", 3, "in"), ("h_prev", 1, "in"), ("a", 3, "out"),
                    ("h", 1, "out")],
    "gru_backward": [("dh", 1, "in"), ("a", 3, "act"), ("hu", 3, "in"), ("h_prev", 1, "in"), ("g", 1, "in"),
                     ("dhu", 3, "out"), ("dn", 1, "out"), ("carry", 1, "out")],
    "gru_before_rz": [("rz", 2, "io"), ("hd", 1, "in"), ("rh", 1, "out")],
    "gru_before_n": [("n", 1, "io"), ("h_prev", 1, "in"), ("z", 1, "act"), ("h", 1, "out")],
    "gru_before_backward_n": [("dh", 1, "in"), ("z", 1, "act"), ("n", 1, "tanh"), ("h_prev", 1, "in"),
                              ("dz", 1, "out"), ("dn", 1, "out")],
    "gru_before_backward_r": [("drh", 1, "in"), ("hd", 1, "in"), ("r", 1, "act"), ("dr", 1, "out"), ("dh", 1, "in"),
                              ("z", 1, "act"), ("g", 1, "in"), ("carry", 1, "out")],
}


def _operand(kind: str, width: int, dtype, g) -> torch.Tensor:
    """A (B, width) operand as a strided view (rows 3 * width apart, columns contiguous) with values its kind
    takes: activations in (0, 1) ("act"), tanh values in (-1, 1), pre-activations up to +-8, one row for all
    (row stride 0, as the bias is given), else N(0, 1). "cols": a transposed operand, (width, B) with strided rows.
    """
    if kind == "cols":
        return torch.randn(width, 3 * B, generator=g, dtype=dtype)[:, B : 2 * B]
    buf = torch.randn(B, 3 * width, generator=g, dtype=dtype)
    if kind == "row":
        return buf[0, :width].expand(B, width)
    view = buf[:, width : 2 * width]
    if kind == "act":
        view.uniform_(0.02, 0.98, generator=g)
    elif kind == "tanh":
        view.uniform_(-0.98, 0.98, generator=g)
    elif kind == "io":
        view.mul_(4)
    return view


def test_kernel_list_matches_the_torch_forms():
    assert set(native.KERNELS) == set(OPERANDS)
    for name, operands in OPERANDS.items():
        assert native.KERNELS[name] == tuple(op for op, _, _ in operands)
        assert callable(getattr(TorchGates, name))


# every kernel, and each without each of its optional operands (the addends g and dhT of dL/dh)
OPTIONAL = ("g", "dhT")
CASES = [(name, None) for name in sorted(OPERANDS)] + [
    (name, op) for name in sorted(OPERANDS) for op in OPTIONAL if op in native.KERNELS[name]]


@needs_library
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, absent", CASES)
def test_each_kernel_equals_its_torch_form(name, absent, dtype):
    g = torch.Generator().manual_seed(0)
    ops = [_operand(kind, w * H, dtype, g) for _, w, kind in OPERANDS[name]]
    if absent:
        ops[native.KERNELS[name].index(absent)] = None
    theirs = [None if t is None else t.clone() for t in ops]
    getattr(native.kernels(ops[0]), name)(H, *ops)
    getattr(TorchGates, name)(H, *theirs)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    for (op, _, _), mine, ref in zip(OPERANDS[name], ops, theirs):
        if mine is not None:
            torch.testing.assert_close(mine, ref, **tol, msg=lambda m, op=op: f"{name}.{op}: {m}")


@needs_library
def test_rows_must_have_contiguous_columns():
    k = native.kernels(torch.zeros(1))
    a = torch.randn(4 * H, B).t()  # columns strided
    with pytest.raises(ValueError, match="contiguous columns"):
        k.lstm_forward(H, a, *(torch.zeros(B, H) for _ in range(4)))


@needs_library
def test_the_library_is_built_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TLSTM_CACHE_DIR", str(tmp_path))
    path = native.build()
    assert path.parent == tmp_path and path.suffix == ".so"
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_without_a_compiler_the_cells_run_on_torch_ops(tmp_path, monkeypatch, caplog):
    """No library: one warning, and the cell computes what cell.gates=torch computes."""
    monkeypatch.setenv("TLSTM_CACHE_DIR", str(tmp_path))  # an empty cache: it would have to build
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="tensorlstm"):
            assert native.kernels(torch.zeros(1)) is None
        assert "cell.gates=native" in caplog.text and "no C++ compiler" in caplog.text
        torch.manual_seed(0)
        nets = [build_cell(cell_config("tt", base="lstm", rank=2, gates=gates), 8, 4) for gates in ("native", "torch")]
        nets[1].load_state_dict(nets[0].state_dict())
        x = torch.randn(2, 3, 8)
        y0, y1 = (net(x)[0] for net in nets)
        assert torch.equal(y0, y1)
    finally:
        native._load.cache_clear()


def test_an_unknown_value_is_a_user_error():
    with pytest.raises(UserError, match="unknown cell.gates 'fast'; choose one of: native, torch"):
        build_cell(cell_config("tt", rank=2, gates="fast"), 8, 4)


def test_an_older_run_keeps_the_torch_ops_on_resume():
    """A run saved before the key resumes bit-identically: it keeps the gate math it trained with."""
    old = {"cell": {"name": "tt", "format": "tt", "rank": 4}, "trainer": {"max_steps": 10}}
    today = {"cell": {"name": "tt", "format": "tt", "rank": 4, "gates": "native"}, "trainer": {"max_steps": 10}}
    assert resume_pins(old, today, set()) == {"cell.gates": "torch"}
