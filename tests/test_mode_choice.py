"""cell.forward=auto: the planned factorized chain where it is cheaper, never a chain that does more arithmetic
than rebuilding W plus one GEMM."""

from __future__ import annotations

import torch

from tensorlstm.tensor import build_map, gate_modes

CPU = torch.device("cpu")


def test_auto_refuses_a_chain_costlier_than_the_rebuild():
    # Tucker rank 8 on modes of 4: the core (8^8 entries) is larger than W itself
    m = build_map("tucker", [4, 4, 4, 4], gate_modes([8, 4, 4, 4], 4, "first"), rank=8)
    assert m.estimate_seconds("factorized", 64, "cpu", 4) < m.estimate_seconds("reconstruct", 64, "cpu", 4)
    assert m.mode_flops("factorized", 64, "cpu") > m.mode_flops("reconstruct", 64, "cpu")
    assert m.choose_mode(64, torch.float32, CPU) == "reconstruct"


def test_tucker_at_the_sequence_shape_merges_the_in_factors_into_the_core():
    """Tucker rank 4 on 4x4x4x4 -> 32x4x4x4 at 3,200 rows (the bench's sequence shape): the in-mode factors are
    square (no compression), so x meets them merged into the core (one GEMM, K = 256), then the non-growing
    out-mode factors (merged), the growing one last: 0.77 GFLOP against 3.4 for rebuild + GEMM (measured
    fwd+bwd, 1 CPU thread: 29 ms against 81 ms for the rebuild and 79 ms for nn.Linear)."""
    m = build_map("tucker", [4, 4, 4, 4], gate_modes([8, 4, 4, 4], 4, "first"), rank=4)
    assert m.choose_mode(3200, torch.float32, CPU) == "factorized"
    p = m.factorized_plan(3200)
    assert [s.group for s in p.steps] == [(1, 2, 3, 4, 0), (6, 7, 8), (5,)]
    assert m.mode_flops("factorized", 3200, "cpu") < 0.25 * m.mode_flops("reconstruct", 3200, "cpu")
    ucf = build_map("tucker", [8, 20, 20, 18], gate_modes([4, 4, 4, 4], 4, "first"), rank=4)
    assert ucf.choose_mode(96, torch.float32, CPU) == "factorized"
    for net in (m, ucf):  # the chain is exact
        net = net.double()
        x = torch.randn(5, net.in_features, dtype=torch.float64)
        torch.testing.assert_close(net(x), x @ net.reconstruct(), rtol=1e-12, atol=1e-12)
