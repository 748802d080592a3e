"""The fused tLSTM time loop (``cells/tlstm_fused.py``, with its compiled step kernels, ``cell.gates=native``, and
with torch ops, ``cell.gates=torch``) against the autograd step loop it replaces, and all against a stacked nn.LSTM
of L layers, interleaved in one process (the ``tlstm bench`` tLSTM shapes: P = L, K = 3, M = 128, B16 x T20,
forward + backward, one thread, CPU time). Prints ms per input step (median and min over the rounds), the
speed-ups of the fused loop and the efficiencies (GFLOP/s / nn.LSTM's, FLOPs as ``tlstm bench`` counts them).

    .venv/bin/python scripts/bench_tlstm_fused.py                 # L = 1, 2, 4, 8, 7 rounds
    .venv/bin/python scripts/bench_tlstm_fused.py --depths 1,8 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from tensorlstm.bench import Timer, _fb, interleave, lstm_flops, tlstm_flops
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    B, T, M, I = 16, 20, 128, 128  # noqa: E741
    torch.manual_seed(0)
    x = torch.randn(B, T, I)
    depths = [int(d) for d in args.depths.split(",")]
    cases, flops = {}, {}
    for L in depths:
        fused = build_cell(cell_config("tlstm", P=L, M=M, gates="native"), I, M)
        torch_ops = build_cell(cell_config("tlstm", P=L, M=M, gates="torch"), I, M)
        loop = build_cell(cell_config("tlstm", P=L, M=M), I, M)
        loop._fused = lambda x: False  # this instance takes the autograd step loop
        cases[f"fused {L}"], cases[f"torch {L}"], cases[f"loop {L}"] = _fb(fused, x), _fb(torch_ops, x), _fb(loop, x)
        cases[f"lstm {L}"] = _fb(nn.LSTM(I, M, num_layers=L, batch_first=True), x)
        flops[L] = (tlstm_flops(fused, B, T, I), lstm_flops(L, B, T, I, M))
    times = interleave(cases, args.rounds, Timer("cpu", torch.device("cpu")))
    print("| L | fused, native ms/step | fused, torch ops | step loop | nn.LSTM | native vs torch ops | native vs loop "
          "| efficiency native | torch ops | loop |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    kinds = ("fused", "torch", "loop", "lstm")
    for L in depths:
        f, to, lo, ls = (statistics.median(times[f"{k} {L}"]) for k in kinds)
        mins = [min(times[f"{k} {L}"]) * 1e3 / T for k in kinds]
        eff = [flops[L][0] / t / (flops[L][1] / ls) for t in (f, to, lo)]
        cells = " | ".join(f"{1e3 * t / T:.3f} (min {m:.3f})" for t, m in zip((f, to, lo, ls), mins))
        print(f"| {L} | {cells} | {to / f:.2f}x | {lo / f:.2f}x | "
              + " | ".join(f"{100 * e:.0f}%" for e in eff) + " |")


if __name__ == "__main__":
    main()
