"""cell.host_memory=keep against glibc's defaults, interleaved in one process: the training steps of a `tlstm
bench` shape (sequence: B32 x T100, 256 -> 512; ucf11: B16 x T6, 57,600 -> 256 + Linear(256, 11); forward +
backward + Adam, one thread, CPU time) for nn.LSTM/nn.GRU with default Adam, our dense loop and the factorized
cells with fused Adam, each round timed once under each setting (order alternating, one settling step after each
switch), with the minor page faults per step. Prints ms per step, faults per step and the ratio to
nn.LSTM/nn.GRU under each.

    .venv/bin/python scripts/bench_host_memory.py              # sequence shape, both bases, 5 rounds
    .venv/bin/python scripts/bench_host_memory.py --shape ucf11 --bases lstm --rounds 3
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from tensorlstm.bench import FACTORIZED, SEQ, UCF, TorchRNN, factorized, our_dense_loop, step_inputs, training_step
from tensorlstm.host_memory import tune_glibc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("sequence", "ucf11"), default="sequence")
    parser.add_argument("--bases", default="lstm,gru")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not tune_glibc(False):
        raise SystemExit("bench_host_memory: needs glibc's mallopt (Linux)")
    shape = SEQ if args.shape == "sequence" else UCF
    for base in args.bases.split(","):
        x, labels = step_inputs(shape, torch.device("cpu"))
        nets = {f"nn.{base.upper()}": TorchRNN(base, shape["input"], shape["hidden"]),
                "our dense loop": our_dense_loop(base, shape["input"], shape["hidden"]),
                **{fmt: factorized(fmt, base, shape) for fmt in FACTORIZED}}
        steps = {k: training_step(net, shape, x, labels, fused=not k.startswith("nn.")) for k, net in nets.items()}
        times = {(k, m): [] for k in steps for m in ("system", "keep")}
        faults = dict.fromkeys(times, 0)
        for r in range(args.rounds):
            for mode in ("system", "keep") if r % 2 == 0 else ("keep", "system"):
                tune_glibc(mode == "keep")
                for k, step in steps.items():
                    step()  # the first step after a switch settles the heap
                    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
                    step()
                    times[(k, mode)].append(time.thread_time() - t0)
                    faults[(k, mode)] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        ref = f"nn.{base.upper()}"
        print(f"\n{args.shape}, {base}: ms per step (median of {args.rounds}), minor faults per step, speed vs {ref}")
        print(f"| case | system ms | system faults | vs {ref} | keep ms | keep faults | vs {ref} | keep speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for k in steps:
            cells = []
            for mode in ("system", "keep"):
                cells += [f"{med[(k, mode)]:.1f}", f"{faults[(k, mode)] // args.rounds:,}",
                          f"{med[(ref, mode)] / med[(k, mode)]:.2f}x"]
            print(f"| {k} | " + " | ".join(cells) + f" | {med[(k, 'system')] / med[(k, 'keep')]:.2f}x |")


if __name__ == "__main__":
    main()
