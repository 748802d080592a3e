"""Parameter counts of the papers' configurations (docs/papers.md), computed by build_map."""

import pytest
import torch

from tensorlstm.tensor import build_map, gate_modes

UCF11_IN = [8, 20, 20, 18]
UCF11_HIDDEN = [4, 4, 4, 4]


def lstm_out(hidden):
    return gate_modes(hidden, 4, "first")


def test_dense_ucf11_lstm_and_gru():
    with torch.device("meta"):  # counts only: no 59M-weight allocation
        assert build_map("dense", UCF11_IN, lstm_out(UCF11_HIDDEN)).num_params == 58_982_400
        assert build_map("dense", UCF11_IN, gate_modes(UCF11_HIDDEN, 3, "first")).num_params == 44_236_800


def test_tt_ucf11():
    # Yang 2017: TT ranks 1-4-4-4-1, gates x4 (LSTM) / x3 (GRU) on the first output mode
    assert build_map("tt", UCF11_IN, lstm_out(UCF11_HIDDEN), rank=4).num_params == 3360
    assert build_map("tt", UCF11_IN, lstm_out(UCF11_HIDDEN), rank=[1, 4, 4, 4, 1]).num_params == 3360
    assert build_map("tt", UCF11_IN, gate_modes(UCF11_HIDDEN, 3, "first"), rank=4).num_params == 3232


def test_tt_other_datasets_of_yang2017():
    # Hollywood2 10x18x13x30 and YouTube Celebrities 4x20x20x36, hidden 4x4x4x4, ranks 4
    assert build_map("tt", [10, 18, 13, 30], lstm_out(UCF11_HIDDEN), rank=4).num_params == 3104
    assert build_map("tt", [10, 18, 13, 30], gate_modes(UCF11_HIDDEN, 3, "first"), rank=4).num_params == 2944
    assert build_map("tt", [4, 20, 20, 36], lstm_out(UCF11_HIDDEN), rank=4).num_params == 3392
    assert build_map("tt", [4, 20, 20, 36], gate_modes(UCF11_HIDDEN, 3, "first"), rank=4).num_params == 3328


@pytest.mark.parametrize(
    "rank,blocks,expected", [(4, 2, 3392), (1, 1, 361), (2, 1, 736), (4, 1, 1696), (4, 4, 6784)]
)
def test_bt_ucf11_d4(rank, blocks, expected):
    m = build_map("bt", UCF11_IN, lstm_out(UCF11_HIDDEN), rank=rank, blocks=blocks)
    assert m.num_params == expected


def test_bt_compression_of_ye2018_abstract():
    m = build_map("bt", UCF11_IN, lstm_out(UCF11_HIDDEN), rank=4, blocks=2)
    assert 58_982_400 // m.num_params == 17_388  # the abstract truncates 17,388.7


@pytest.mark.parametrize(
    "in_modes,hidden,expected",
    [
        ([36, 40, 40], [8, 4, 8], 6592),
        ([320, 180], [16, 16], 93456),
        ([8, 10, 10, 9, 8], [4, 2, 2, 4, 4], 1968),
    ],
)
def test_bt_other_orders(in_modes, hidden, expected):
    assert lstm_out(hidden)[0] == 4 * hidden[0]
    assert build_map("bt", in_modes, lstm_out(hidden), rank=4, blocks=1).num_params == expected


# Tjandra 2018: GRU with 512 hidden over 256 inputs; W_xh: 4x4x4x4 -> 8x4x4x12 and
# W_hh: 8x4x4x4 -> 8x4x4x12 (gates x3 on the LAST mode), both factorized.
TJ_IN, TJ_HIDDEN = [4, 4, 4, 4], [8, 4, 4, 4]
GRU_BIAS = 3 * 512  # the cell's one bias vector; not part of the maps, added here explicitly


def tjandra_total(fmt, rank):
    out = gate_modes(TJ_HIDDEN, 3, "last")
    assert out == [8, 4, 4, 12]
    w_xh = build_map(fmt, TJ_IN, out, rank=rank)
    w_hh = build_map(fmt, TJ_HIDDEN, out, rank=rank)
    return w_xh.num_params, w_hh.num_params, w_xh.num_params + w_hh.num_params + GRU_BIAS


def test_tjandra_dense_gru():
    out = gate_modes(TJ_HIDDEN, 3, "last")
    total = (
        build_map("dense", TJ_IN, out).num_params + build_map("dense", TJ_HIDDEN, out).num_params + GRU_BIAS
    )
    assert total == 1_181_184


def test_tjandra_tt_gru():
    assert tjandra_total("tt", [1, 11, 11, 11, 1]) == (4752, 5104, 11392)
    assert tjandra_total("tt", 11)[2] == 11392


@pytest.mark.parametrize("rank,expected", [(50, 6136), (80, 8896), (110, 11656)])
def test_tjandra_cp_gru(rank, expected):
    assert tjandra_total("cp", rank)[2] == expected


def test_tjandra_tucker_gru():
    assert tjandra_total("tucker", [2, 2, 2, 2])[2] == 2232
    assert tjandra_total("tucker", 2)[2] == 2232
    assert tjandra_total("tucker", [2, 4, 2, 4])[2] == 10008
    # the same as the explicit 2d list (in-mode ranks, then out-mode ranks)
    assert tjandra_total("tucker", [2, 4, 2, 4, 2, 4, 2, 4])[2] == 10008


def test_counts_equal_formulas_on_uneven_shapes():
    ins, outs = [3, 5, 2, 7], [4, 2, 6, 3]
    d = 4
    ranks = [1, 3, 2, 5, 1]
    tt = sum(ranks[k] * ins[k] * outs[k] * ranks[k + 1] for k in range(d))
    assert build_map("tt", ins, outs, rank=ranks).num_params == tt
    R, N = 3, 2
    assert build_map("bt", ins, outs, rank=R, blocks=N).num_params == N * (
        sum(i * j * R for i, j in zip(ins, outs)) + R**d
    )
    assert build_map("cp", ins, outs, rank=7).num_params == 7 * (sum(ins) + sum(outs))
    tr = [2, 3, 1, 2, 3, 2, 2, 1]
    core = 1
    for r in tr:
        core *= r
    assert build_map("tucker", ins, outs, rank=tr).num_params == core + sum(
        m * r for m, r in zip(ins + outs, tr)
    )
    assert build_map("dense", ins, outs).num_params == 210 * 144
