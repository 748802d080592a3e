"""`tlstm compress`: the decompositions (exact recovery, padding), the compressed cell against the dense cell with
the rebuilt W_hat, the CLI's errors and the fine-tune run (summary contract, resume)."""

from __future__ import annotations

import pytest
import torch

from tensorlstm.tensor import build_map
from tensorlstm.tensor.decompose import decompose_into, relative_error

# (format, in modes, out modes, rank, blocks): small shapes where ALS converges quickly from its SVD start
EXACT = [
    ("tt", [2, 3, 2], [3, 2, 4], 2, 1),
    ("tt", [7, 2, 2, 1], [16, 4, 4, 2], 3, 1),
    ("cp", [7, 2, 2, 1], [16, 4, 4, 2], 4, 1),
    ("tucker", [2, 3, 2], [3, 2, 4], 2, 1),
    ("tucker", [2, 3, 2], [3, 2, 4], [2, 1, 2, 3, 2, 2], 1),
    ("bt", [7, 2, 2, 1], [16, 4, 4, 2], 2, 2),
    ("bt", [2, 3, 2], [3, 2, 4], 2, 1),
]


@pytest.mark.parametrize("fmt,ins,outs,rank,blocks", EXACT, ids=[f"{c[0]}-{c[3]}x{c[4]}-d{len(c[1])}" for c in EXACT])
def test_a_matrix_of_the_format_and_rank_is_recovered(fmt, ins, outs, rank, blocks):
    torch.manual_seed(0)
    w = build_map(fmt, ins, outs, rank=rank, blocks=blocks).double().reconstruct().detach()
    target = build_map(fmt, ins, outs, rank=rank, blocks=blocks).double()
    assert relative_error(w, target.reconstruct()) > 0.5  # a fresh init is far from W
    err = decompose_into(target, w, iterations=300, tol=1e-14)
    assert err < 1e-10
    x = torch.randn(5, w.shape[0], dtype=torch.float64)
    for mode in ("factorized", "reconstruct"):  # the map's own forward paths see the same W
        target.mode = mode
        torch.testing.assert_close(target(x), x @ w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fmt,rank,blocks", [("tt", 8, 1), ("tucker", 4, 1), ("bt", 24, 1), ("bt", 12, 2)])
def test_a_rank_larger_than_needed_reproduces_w(fmt, rank, blocks):
    """Any 12 x 24 matrix: TT rank 8 >= every unfolding rank, Tucker ranks >= every mode, BT R >= every
    merged mode. The map keeps its configured shapes (padded factors) and W_hat == W."""
    torch.manual_seed(1)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map(fmt, [2, 3, 2], [3, 2, 4], rank=rank, blocks=blocks).double()
    shapes = [tuple(f.shape) for f in target.factors()]
    assert decompose_into(target, w, iterations=300, tol=1e-14) < 1e-10
    assert [tuple(f.shape) for f in target.factors()] == shapes


def test_cp_with_more_terms_than_needed_reproduces_w():
    torch.manual_seed(2)
    w = build_map("cp", [7, 2, 2, 1], [16, 4, 4, 2], rank=2).double().reconstruct().detach()
    target = build_map("cp", [7, 2, 2, 1], [16, 4, 4, 2], rank=4).double()
    assert decompose_into(target, w, iterations=500, tol=1e-14) < 1e-7


def test_padded_slices_are_not_stuck():
    """TT rank 8 on a map whose first unfolding has rank 6: the padded right columns of core 0 are zero but get
    a gradient (they multiply the noise rows of core 1), so fine-tuning can use the extra rank."""
    torch.manual_seed(3)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map("tt", [2, 3, 2], [3, 2, 4], rank=8).double()
    decompose_into(target, w)
    pad = target.core0[..., 6:]
    assert torch.count_nonzero(pad) == 0
    (target.reconstruct() * torch.randn(12, 24, dtype=torch.float64)).sum().backward()
    assert torch.count_nonzero(target.core0.grad[..., 6:]) == pad.numel()


def test_truncation_is_quasi_optimal_for_tt():
    """TT-SVD error <= sqrt(sum of the squared truncation errors of each unfolding) (Oseledets 2011, Thm 2.2)."""
    torch.manual_seed(4)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map("tt", [2, 3, 2], [3, 2, 4], rank=2).double()
    err = decompose_into(target, w)
    t = w.reshape(2, 3, 2, 3, 2, 4).permute(0, 3, 1, 4, 2, 5).reshape(6, 6, 8)
    tails = []
    for k in (1, 2):
        s = torch.linalg.svdvals(t.reshape(36 if k == 2 else 6, -1))
        tails.append(float((s[2:] ** 2).sum()))
    assert 0 < err <= (sum(tails) ** 0.5) / float(torch.linalg.norm(w)) + 1e-12
