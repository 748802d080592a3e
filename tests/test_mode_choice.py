"""cell.mode=auto never takes a factorized chain that does more arithmetic than rebuilding W plus one GEMM."""

from __future__ import annotations

import torch

from tensorlstm.tensor import build_map, gate_modes


def test_auto_refuses_a_chain_costlier_than_the_rebuild():
    out = gate_modes([8, 4, 4, 4], 4, "first")
    m = build_map("tucker", [4, 4, 4, 4], out, rank=4)  # rank 4 on modes of 4: no compression on the inputs
    cpu = torch.device("cpu")
    assert m.mode_flops("factorized", 3200, "cpu") > m.mode_flops("reconstruct", 3200, "cpu")
    assert m.choose_mode(3200, torch.float32, cpu) == "reconstruct"
    ucf = build_map("tucker", [8, 20, 20, 18], gate_modes([4, 4, 4, 4], 4, "first"), rank=4)
    assert ucf.mode_flops("factorized", 96, "cpu") < ucf.mode_flops("reconstruct", 96, "cpu")
    assert ucf.choose_mode(96, torch.float32, cpu) == "factorized"
    x = torch.randn(5, 256, dtype=torch.float64)
    m = m.double()
    torch.testing.assert_close(m(x), x @ m.reconstruct())
