"""The two hand-written BT kernels (tensor/bt.py) against the dense reconstruction, in float64: the chunked 4-mode
chain (`_BTChain4`, UCF11-like shapes) and the split kernel (`_BTSplit`: every factor but the first merged with the
core, all blocks in one GEMM; the sequence shape). Forward and every gradient (x, core, factors) must equal those
of x @ W with W rebuilt from the same parameters, for 1 and 2 blocks, rows that leave a partial chunk, and x with
and without requires_grad."""

from __future__ import annotations

import pytest
import torch

import tensorlstm.tensor.bt as bt
from tensorlstm.tensor import build_map, gate_modes

CPU = torch.device("cpu")


def counted(monkeypatch, cls) -> list:
    calls = []
    apply = cls.apply
    monkeypatch.setattr(cls, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def check_against_dense(m, rows: int, x_grad: bool, seed: int) -> None:
    """m(x) and its gradients (params, and x when asked) equal x @ m.reconstruct() and that product's gradients."""
    torch.manual_seed(seed)
    x = torch.randn(rows, m.in_features, dtype=torch.float64, requires_grad=x_grad)
    g = torch.randn(rows, m.out_features, dtype=torch.float64)
    params = list(m.parameters())
    y = m.forward_factorized(x)
    grads = torch.autograd.grad(y, params + ([x] if x_grad else []), g)
    y_ref = x @ m.reconstruct()
    refs = torch.autograd.grad(y_ref, params + ([x] if x_grad else []), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-12)
    for got, want in zip(grads, refs):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("x_grad", [False, True])
def test_split_kernel_equals_the_dense_map(monkeypatch, blocks, x_grad):
    # gates on the first mode (8 x 4 -> 32 outputs there): the split kernel is the cheapest; 5 rows in chunks of 2
    m = build_map("bt", [2, 3, 4], [8, 2, 3], rank=2, blocks=blocks, forward="factorized").double()
    assert m._kernel(5, "cpu") == "split"
    monkeypatch.setattr(bt, "SPLIT_CHUNK_ELEMENTS", 2 * m.rank * blocks * 6 * 2)  # 2 rows per chunk
    calls = counted(monkeypatch, bt._BTSplit)
    check_against_dense(m, 5, x_grad, seed=blocks)
    assert calls, "the split kernel was not used"


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("x_grad", [False, True])
def test_chain4_kernel_equals_the_dense_map(monkeypatch, blocks, x_grad):
    # modes 1..3 shrink 384 inputs to 8 outputs: the chunked 4-mode chain; 3 rows x 2 = 6 slabs in chunks of 4
    m = build_map("bt", [2, 8, 6, 8], [3, 2, 2, 2], rank=2, blocks=blocks, forward="factorized").double()
    assert m._kernel(3, "cpu") == "chain4"
    monkeypatch.setattr(bt, "CHUNK_ELEMENTS", 4 * 8 * 6 * 8)
    calls = counted(monkeypatch, bt._BTChain4)
    check_against_dense(m, 3, x_grad, seed=10 + blocks)
    assert calls, "the chunked kernel was not used"


def test_each_bench_shape_gets_its_kernel():
    """UCF11 (B16 x T6 rows, 57,600 -> 1,024): the chunked chain (split would be 5.7 GFLOP, far above the chain's
    1.4); the sequence shape (3,200 rows, 256 -> 2,048 LSTM / 1,536 GRU): split, factorized under auto (1.26 / 1.15
    GFLOP against 3.36 / 2.52 for rebuild + GEMM); gates on the last mode: nothing to gain, rebuild + GEMM."""
    ucf = build_map("bt", [8, 20, 20, 18], gate_modes([4, 4, 4, 4], 4, "first"), rank=4, blocks=2)
    assert ucf._kernel(96, "cpu") == "chain4"
    assert ucf.choose_mode(96, torch.float32, CPU) == "factorized"
    for gates in (4, 3):
        seq = build_map("bt", [4, 4, 4, 4], gate_modes([8, 4, 4, 4], gates, "first"), rank=4, blocks=2)
        assert seq._kernel(3200, "cpu") == "split"
        assert seq.choose_mode(3200, torch.float32, CPU) == "factorized"
        assert seq.mode_flops("factorized", 3200, "cpu") < 0.5 * seq.mode_flops("reconstruct", 3200, "cpu")
    last = build_map("bt", [4, 4, 4, 4], gate_modes([4, 4, 4, 8], 4, "last"), rank=4, blocks=2)
    assert last.choose_mode(3200, torch.float32, CPU) == "reconstruct"


def test_split_kernel_under_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(3)
    m = build_map("bt", [2, 3, 4], [8, 2, 3], rank=2, blocks=2, forward="factorized")
    x = torch.randn(7, m.in_features)
    assert m._kernel(7, "cpu") == "split"
    results = []
    for amp in (False, True):
        xs = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = m(xs)
        gs = torch.autograd.grad(y.float().square().sum(), [xs, *m.parameters()])
        assert all(g.dtype == torch.float32 for g in gs)
        results.append([y.detach().float(), *gs])
    for ref, got in zip(*results):
        assert float((got - ref).norm() / ref.norm()) < 5e-2


@pytest.mark.parametrize("fmt", ["bt", "tt"])
def test_a_time_major_view_is_mapped_without_copying_x(monkeypatch, fmt):
    """The recurrent layers hand the map x.transpose(0, 1) of batch-first x: where the output is the smaller, the
    map runs on the stored (batch-first) rows and transposes its output; values and gradients are those of the
    dense map on the time-major rows, and the result is contiguous."""
    torch.manual_seed(4)
    m = build_map(fmt, [4, 5, 6], [2, 3, 2], rank=2, blocks=2, forward="factorized").double()
    x = torch.randn(3, 5, m.in_features, dtype=torch.float64, requires_grad=True)
    seen = []
    fwd = type(m).forward_factorized
    monkeypatch.setattr(type(m), "forward_factorized", lambda self, x2d: seen.append(x2d.data_ptr()) or fwd(
        self, x2d))
    y = m(x.transpose(0, 1))
    assert y.shape == (5, 3, m.out_features) and y.is_contiguous()
    assert seen == [x.data_ptr()]  # x's own storage, not a copy
    g = torch.randn(y.shape, dtype=torch.float64)
    ref = x.transpose(0, 1) @ m.reconstruct()
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    params = [x, *m.parameters()]
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-12)
