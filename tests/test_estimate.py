"""scripts/estimate_gpu_time.py: the fused recurrent kernels it costs by hand are counted exactly, and one real
training step of a tiny row gives the FLOPs of its matrix products and a launch count."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from conftest import ROOT

from tensorlstm.cells.tlstm import SharedStackedLSTM


def _script():
    sys.path.insert(0, str(ROOT / "scripts"))  # it imports scripts/ops_per_step.py's counting rule
    spec = importlib.util.spec_from_file_location("estimate_gpu_time", ROOT / "scripts" / "estimate_gpu_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


est = _script()


def test_fused_recurrent_calls_are_costed_from_their_weights():
    lstm, gru = torch.nn.LSTM(6, 8, batch_first=True), torch.nn.GRU(5, 8, num_layers=2)
    slstm = SharedStackedLSTM(3, 8, 3, forget_bias=1.0, dropout=0.0)
    with est.FusedCalls() as fused:
        lstm(torch.randn(4, 7, 6))
        gru(torch.randn(9, 2, 5))  # time first
        slstm(torch.randn(4, 5, 3), None, torch.tensor([5, 2, 3, 1]))  # packed: 11 rows over 5 steps
    assert torch.lstm is not None and [c["steps"] for c in fused.calls] == [7, 9, 5]
    assert [c["layers"] for c in fused.calls] == [1, 2, 3]
    gflop = [c["gflop"] * 1e9 for c in fused.calls]
    assert gflop[0] == pytest.approx(6 * (4 * 8 * 6 + 4 * 8 * 8) * 4 * 7)
    assert gflop[1] == pytest.approx(6 * (3 * 8 * 5 + 3 * 8 * 8 + 2 * 3 * 8 * 8) * 2 * 9)
    assert gflop[2] == pytest.approx(6 * 3 * (4 * 8 * 8 * 2) * 11)
    lstm(torch.randn(1, 2, 6))  # unpatched again
    assert len(fused.calls) == 3


def test_one_training_step_of_a_row_is_measured():
    cfg = ["task=addition", "cell=tt", "task.digits=2", "task.hidden_size=16", "task.batch_size=4",
           "task.valid_size=8", "task.test_size=8", "threads=1", "device=cpu"]
    m = est.measure(cfg, timed=1)
    assert m["cpu_s_per_step"] > 0 and m["ops_per_step"] > 50 and m["fused_layer_steps"] == 0
    assert m["gflop_per_step"] > 0 and m["batch_size"] == 4 and m["max_steps"] > 0
    dense = est.measure(["task=addition", *cfg[2:], "cell=lstm", "cell.kernel=torch"], timed=1)
    # nn.LSTM's time steps are counted, not hidden in one op: 2-digit addition is 9 steps long, one layer
    assert dense["fused_layer_steps"] == 9 and dense["gflop_per_step"] > 6 * 4 * 16 * 16 * 4 * 9 / 1e9
