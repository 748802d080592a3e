"""The fused tLSTM time loop (``cells/tlstm_fused.py``) against the autograd step loop it replaces, and both
against a stacked nn.LSTM of L layers, interleaved in one process (the ``tlstm bench`` tLSTM shapes: P = L,
K = 3, M = 128, B16 x T20, forward + backward, one thread, CPU time). Prints ms per input step (median and
min over the rounds), the speed-up of the fused loop and both efficiencies (GFLOP/s / nn.LSTM's, FLOPs as
``tlstm bench`` counts them).

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
        fused = build_cell(cell_config("tlstm", P=L, M=M), I, M)
        loop = build_cell(cell_config("tlstm", P=L, M=M), I, M)
        loop._fused = lambda x: False  # this instance takes the autograd step loop
        cases[f"fused {L}"], cases[f"loop {L}"] = _fb(fused, x), _fb(loop, x)
        cases[f"lstm {L}"] = _fb(nn.LSTM(I, M, num_layers=L, batch_first=True), x)
        flops[L] = (tlstm_flops(fused, B, T, I), lstm_flops(L, B, T, I, M))
    times = interleave(cases, args.rounds, Timer("cpu", torch.device("cpu")))
    print("| L | fused ms/step | step loop ms/step | nn.LSTM ms/step | fused vs loop | efficiency fused | loop |")
    print("|---|---|---|---|---|---|---|")
    for L in depths:
        f, lo, ls = (statistics.median(times[f"{k} {L}"]) for k in ("fused", "loop", "lstm"))
        mins = [min(times[f"{k} {L}"]) * 1e3 / T for k in ("fused", "loop", "lstm")]
        eff = [flops[L][0] / t / (flops[L][1] / ls) for t in (f, lo)]
        print(f"| {L} | {1e3 * f / T:.3f} (min {mins[0]:.3f}) | {1e3 * lo / T:.3f} (min {mins[1]:.3f}) | "
              f"{1e3 * ls / T:.3f} (min {mins[2]:.3f}) | {lo / f:.2f}x | {100 * eff[0]:.0f}% | {100 * eff[1]:.0f}% |")


if __name__ == "__main__":
    main()
