"""cell.denormals=flush against IEEE denormals, interleaved in one process: the training steps of a `tlstm bench`
shape (sequence: B32 x T100, 256 -> 512; ucf11: B16 x T6, 57,600 -> 256 + Linear(256, 11); forward + backward + Adam,
one thread, CPU time) for nn.LSTM/nn.GRU with default Adam, our dense loop, the YAML's dense cell and the factorized
cells with fused Adam. Each net first trains `--warm` steps on its one batch (its gates saturate as it fits it,
which is where denormals appear), then each round times one step under each mode (order alternating). Prints ms
per step under each, the flush speed-up and the ratio to nn.LSTM/nn.GRU under each.

    .venv/bin/python scripts/bench_denormals.py --shape ucf11 --bases lstm     # 10 warm steps, 5 rounds
    .venv/bin/python scripts/bench_denormals.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tensorlstm.bench import FACTORIZED, SEQ, UCF, TorchRNN, factorized, our_dense_loop, step_inputs, training_step
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
from tensorlstm.host_memory import set_host_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("sequence", "ucf11"), default="ucf11")
    parser.add_argument("--bases", default="lstm")
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the mode is per thread: one thread does all the arithmetic here
    set_host_memory("keep")
    shape = SEQ if args.shape == "sequence" else UCF
    for base in args.bases.split(","):
        x, labels = step_inputs(shape, torch.device("cpu"))
        nets = {f"nn.{base.upper()}": TorchRNN(base, shape["input"], shape["hidden"]),
                "our dense loop": our_dense_loop(base, shape["input"], shape["hidden"]),
                f"cell={base} (YAML)": build_cell(cell_config(base, denormals=None), shape["input"], shape["hidden"]),
                **{fmt: factorized(fmt, base, shape) for fmt in FACTORIZED}}
        steps = {k: training_step(net, shape, x, labels, fused=not k.startswith("nn.")) for k, net in nets.items()}
        for step in steps.values():
            for _ in range(args.warm):
                step()
        times = {(k, m): [] for k in steps for m in ("ieee", "flush")}
        for r in range(args.rounds):
            for mode in ("ieee", "flush") if r % 2 == 0 else ("flush", "ieee"):
                torch.set_flush_denormal(mode == "flush")
                for k, step in steps.items():
                    t0 = time.thread_time()
                    step()
                    times[(k, mode)].append(time.thread_time() - t0)
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        ref = f"nn.{base.upper()}"
        print(f"\n{args.shape}, {base}, after {args.warm} warm steps: ms per step (median of {args.rounds})")
        print(f"| case | ieee ms | vs {ref} | flush ms | vs {ref} | flush speed-up |")
        print("|---|---|---|---|---|---|")
        for k in steps:
            print(f"| {k} | {med[(k, 'ieee')]:.1f} | {med[(ref, 'ieee')] / med[(k, 'ieee')]:.2f}x | "
                  f"{med[(k, 'flush')]:.1f} | {med[(ref, 'flush')] / med[(k, 'flush')]:.2f}x | "
                  f"{med[(k, 'ieee')] / med[(k, 'flush')]:.2f}x |")


if __name__ == "__main__":
    main()
