"""Is the data pipeline ever the bottleneck? Batches per second of `task.train_batch` alone vs training steps
per second of the task's default model (forward + backward + Adam), for smnist, pmnist, char_lm, polyphonic.

    .venv/bin/python scripts/bench_data.py [--data-root ../shared/data] [--cell lstm] [--steps 3]
        [--threads N]
        [--tasks smnist,pmnist,char_lm,polyphonic] [--json outputs/bench_data.json] [overrides ...]

Configs are composed exactly as `tlstm train task=<t> cell=<cell> <overrides>` would (task defaults: sMNIST
784 steps, batch 100, hidden 128; char_lm PTB-char, batch 32 x 100, hidden 512; polyphonic JSB, batch 16,
hidden 512). The ratio loader/step says how many times faster the loader is than the step it feeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

DATA = {"smnist": "mnist", "pmnist": "mnist", "char_lm": "ptb", "polyphonic": "polyphonic"}


def time_loader(task, n: int) -> float:
    """Batches per second of train_batch over n consecutive steps (crossing an epoch boundary if short)."""
    task.train_batch(0)  # the first call draws the epoch's order
    start = time.perf_counter()
    for step in range(1, n + 1):
        task.train_batch(step)
    return n / (time.perf_counter() - start)


def time_steps(task, model, steps: int, device: torch.device) -> float:
    """Training steps per second (median of `steps` timed steps after one warm-up)."""
    from tensorlstm.cells.base import detach_state
    from tensorlstm.engine.trainer import to_device

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state, times = None, []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = to_device(task.train_batch(step), device)
        loss, _, new_state = task.loss(model, batch, state if task.carries_state else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = detach_state(new_state) if task.carries_state else None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default="../shared/data", help="folder with mnist/, ptb/, polyphonic/")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--tasks", default="smnist,pmnist,char_lm,polyphonic")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per task")
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args, overrides = parser.parse_known_args(argv)

    from tensorlstm.cli import load_config
    from tensorlstm.engine.build import build
    from tensorlstm.engine.seeding import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.tasks.split(","):
        data_dir = Path(args.data_root) / DATA[name]
        _, cfg = load_config([f"task={name}", f"cell={args.cell}", f"task.data_dir={data_dir}", *overrides])
        task, model, _ = build(cfg)
        task.device = device
        t0 = time.perf_counter()
        task.prepare()
        prepare_s = time.perf_counter() - t0
        model.to(device).train()
        loader = time_loader(task, args.loader_batches)
        steps = time_steps(task, model, args.steps, device)
        rows.append(
            {
                "task": name,
                "cell": args.cell,
                "device": str(device),
                "prepare_s": round(prepare_s, 2),
                "loader_batches_per_s": round(loader, 1),
                "train_steps_per_s": round(steps, 3),
                "loader_over_step": round(loader / steps, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print("\n| task | prepare (s) | loader batches/s | train steps/s | loader / step |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['prepare_s']} | {r['loader_batches_per_s']:,} | {r['train_steps_per_s']} | "
            f"{r['loader_over_step']:,}x |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
