"""A process-wide setting of the cells' YAML against its alternative, interleaved in one process: the training steps
of a `tlstm bench` shape (sequence: B32 x T100, 256 -> 512; ucf11: B16 x T6, 57,600 -> 256 + Linear(256, 11); forward
+ backward + Adam, one thread, CPU time) for nn.LSTM/nn.GRU with default Adam, our dense loop, the YAML's dense cell
and the factorized cells with fused Adam.

* `--setting host_memory`: cell.host_memory=keep against glibc's defaults (`system`), with the minor page faults;
* `--setting denormals`: cell.denormals=flush against IEEE denormals (`ieee`), which show up as a net fits its one
  batch and its gates saturate (hence `--warm`).

Each net first trains `--warm` steps; then each round times every net once under each mode (order alternating, one
settling step after each switch). Prints ms and minor faults per step under each, the ratio to nn.LSTM/nn.GRU under
each and the setting's speed-up.

    .venv/bin/python scripts/bench_process_modes.py --setting host_memory              # sequence shape, both bases
    .venv/bin/python scripts/bench_process_modes.py --setting denormals --shape ucf11 --bases lstm
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from tensorlstm.bench import FACTORIZED, SEQ, UCF, TorchRNN, factorized, our_dense_loop, step_inputs, training_step
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
from tensorlstm.host_memory import tune_glibc

# setting -> (the alternative, the YAML's mode), how to switch the process to a mode
SETTINGS = {
    "host_memory": (("system", "keep"), lambda mode: tune_glibc(mode == "keep")),
    "denormals": (("ieee", "flush"), lambda mode: torch.set_flush_denormal(mode == "flush")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=tuple(SETTINGS), required=True)
    parser.add_argument("--shape", choices=("sequence", "ucf11"), default="sequence")
    parser.add_argument("--bases", default="lstm,gru")
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the denormal mode is per thread: one thread does all the arithmetic here
    modes, switch = SETTINGS[args.setting]
    if not switch(modes[0]):
        raise SystemExit(f"bench_process_modes: --setting {args.setting} cannot be switched here")
    shape = SEQ if args.shape == "sequence" else UCF
    for base in args.bases.split(","):
        x, labels = step_inputs(shape, torch.device("cpu"))
        yaml_cell = cell_config(base, host_memory=None, denormals=None)  # building it leaves the process's modes
        nets = {f"nn.{base.upper()}": TorchRNN(base, shape["input"], shape["hidden"]),
                "our dense loop": our_dense_loop(base, shape["input"], shape["hidden"]),
                f"cell={base} (YAML)": build_cell(yaml_cell, shape["input"], shape["hidden"]),
                **{fmt: factorized(fmt, base, shape) for fmt in FACTORIZED}}
        steps = {k: training_step(net, shape, x, labels, fused=not k.startswith("nn.")) for k, net in nets.items()}
        for step in steps.values():
            for _ in range(args.warm):
                step()
        times = {(k, m): [] for k in steps for m in modes}
        faults = dict.fromkeys(times, 0)
        for r in range(args.rounds):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                switch(mode)
                for k, step in steps.items():
                    step()  # the first step after a switch settles the heap
                    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
                    step()
                    times[(k, mode)].append(time.thread_time() - t0)
                    faults[(k, mode)] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        ref = f"nn.{base.upper()}"
        off, on = modes
        print(f"\n{args.setting}, {args.shape}, {base}, after {args.warm} warm steps: ms per step (median of "
              f"{args.rounds}), minor faults per step, speed vs {ref}")
        print(f"| case | {off} ms | {off} faults | vs {ref} | {on} ms | {on} faults | vs {ref} | {on} speed-up |")
        print("|---|---|---|---|---|---|---|---|")
        for k in steps:
            cells = []
            for mode in modes:
                cells += [f"{med[(k, mode)]:.1f}", f"{faults[(k, mode)] // args.rounds:,}",
                          f"{med[(ref, mode)] / med[(k, mode)]:.2f}x"]
            print(f"| {k} | " + " | ".join(cells) + f" | {med[(k, off)] / med[(k, on)]:.2f}x |")


if __name__ == "__main__":
    main()
