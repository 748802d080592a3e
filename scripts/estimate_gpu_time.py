"""Expected GPU time of a table's rows, estimated on the CPU from one real training step of each row.

For every row of configs/table/<table>.yaml (its experiment and overrides, then yours) this builds the task
with its data and the model, and runs training steps (forward, backward, clip, Adam) on one CPU thread:

  * CPU s/step: the median of the timed steps (here, on this machine's load);
  * GFLOP/step: torch.utils.flop_counter over one step (matrix products and convolutions, forward + backward);
  * ops/step: the innermost computing aten operators of one step (scripts/ops_per_step.py's rule), about one
    kernel launch each on a GPU;
  * fused torch.nn.LSTM/GRU calls (cuDNN on a GPU, one opaque call here): their time steps x layers, and their
    FLOPs computed from the sizes (the FLOP counter does not see inside them).

A recurrent step at these batch sizes is launch-bound on a GPU, so the estimate is
GPU s/step = max(ops x --launch-us + 2 x fused layer-steps x --fused-step-us, FLOPs / --gpu-tflops), stated
assumptions (7 us per launch of an eager PyTorch op; 15 us per cuDNN time step and layer, forward and backward
each; 10 TFLOP/s achieved in fp32 at these small matrix sizes), times the row's trainer.max_steps; evaluations and
data loading are not included. A GPU measurement replaces it: `tlstm reproduce <table>` on one.

    python scripts/estimate_gpu_time.py ye2018_draw --rows "no attention LSTM encoder" task.data_dir=<mnist>
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops_per_step import _computes  # noqa: E402 - the same counting rule as the per-time-step proxy

from tensorlstm.cli import CONFIG_DIR, load_config  # noqa: E402
from tensorlstm.engine.build import build  # noqa: E402
from tensorlstm.engine.optim import build_optimizer  # noqa: E402
from tensorlstm.engine.trainer import _clip  # noqa: E402
from tensorlstm.reproduce.table import load_table, row_overrides  # noqa: E402


def one_step(task, model, optimizer, tcfg, step: int) -> None:
    model.train()
    loss, _, _ = task.loss(model, task.train_batch(step), None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _clip(model, tcfg)
    optimizer.step()


class FusedCalls:
    """Records the fused recurrent kernels of a step (torch.lstm / torch.gru: torch.nn.LSTM/GRU and sLSTM call
    them; cuDNN on a GPU, one opaque aten call here), which the FLOP counter and the op count cannot see into:
    their time steps x layers and their FLOPs from the weight shapes (6 x weights x rows, forward + backward)."""

    NAMES = ("lstm", "gru", "rnn_tanh", "rnn_relu")

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def _wrap(self, fn):
        def call(*args, **kwargs):
            self._record(args)
            return fn(*args, **kwargs)
        return call

    def _record(self, args) -> None:
        packed = isinstance(args[1], torch.Tensor) and args[1].dim() == 1  # (data, batch_sizes, hx, params, ...)
        params, layers, bidirectional = (args[3], args[5], args[8]) if packed else (args[2], args[4], args[7])
        if packed:
            steps, rows = len(args[1]), int(args[0].shape[0])
        else:
            batch_first = args[8]
            steps = args[0].shape[1] if batch_first else args[0].shape[0]
            rows = args[0].shape[0] * args[0].shape[1]
        weights = sum(p.numel() for p in params if p.dim() == 2)
        self.calls.append({"steps": int(steps), "layers": int(layers) * (2 if bidirectional else 1),
                           "gflop": 6 * weights * rows / 1e9})

    def __enter__(self):
        import torch.nn.modules.rnn as rnn_module

        self._saved = {n: getattr(torch, n) for n in self.NAMES}
        self._vf = rnn_module._VF
        wrapped = {n: self._wrap(getattr(self._vf, n)) for n in self.NAMES}
        for n in self.NAMES:
            setattr(torch, n, wrapped[n])
        rnn_module._VF = type("VF", (), {"__getattr__": lambda _, a: wrapped.get(a) or getattr(self._vf, a)})()
        return self

    def __exit__(self, *exc) -> None:
        import torch.nn.modules.rnn as rnn_module

        for n, fn in self._saved.items():
            setattr(torch, n, fn)
        rnn_module._VF = self._vf


def measure(overrides: list[str], timed: int) -> dict:
    _, cfg = load_config(overrides)
    torch.manual_seed(int(cfg["seed"]))
    task, model, _ = build(cfg, prepare=True)
    task.device = torch.device("cpu")
    optimizer = build_optimizer(model, cfg["optim"])
    tcfg = cfg["trainer"]
    one_step(task, model, optimizer, tcfg, 0)  # warm-up (plans, caches, lazy data)
    times = []
    for k in range(timed):
        t0 = time.perf_counter()
        one_step(task, model, optimizer, tcfg, 1 + k)
        times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as flops, FusedCalls() as fused:
        one_step(task, model, optimizer, tcfg, 1 + timed)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(task, model, optimizer, tcfg, 2 + timed)
    ops = sum(1 for e in prof.events() if e.device_type.name == "CPU" and _computes(e))
    return {"cpu_s_per_step": statistics.median(times),
            "gflop_per_step": flops.get_total_flops() / 1e9 + sum(c["gflop"] for c in fused.calls),
            "ops_per_step": ops, "fused_layer_steps": sum(c["steps"] * c["layers"] for c in fused.calls),
            "max_steps": int(tcfg["max_steps"]),
            "batch_size": cfg["task"].get("batch_size"), "params_total": sum(p.numel() for p in model.parameters())}


HEADER = ["| row | batch | CPU s/step | GFLOP/step | ops/step | GPU s/step (est.) | max_steps | GPU h (est.) |",
          "|---|---|---|---|---|---|---|---|"]


def markdown_row(m: dict) -> str:
    return (f"| {m['row']} | {m['batch_size']} | {m['cpu_s_per_step']:.3g} | {m['gflop_per_step']:.3g} | "
            f"{m['ops_per_step']:,} | {m['gpu_s_per_step_est']:.3g} | {m['max_steps']:,} | {m['gpu_h_est']:.2g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table")
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: every row)")
    parser.add_argument("--timed", type=int, default=2, help="timed steps per row (after one warm-up)")
    parser.add_argument("--launch-us", type=float, default=7.0, help="assumed GPU time per launched op (us)")
    parser.add_argument("--fused-step-us", type=float, default=15.0,
                        help="assumed cuDNN time per time step and layer of a fused nn.LSTM/GRU, forward or backward")
    parser.add_argument("--gpu-tflops", type=float, default=10.0, help="assumed achieved fp32 TFLOP/s on the GPU")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(1)
    table = load_table(args.table, CONFIG_DIR)
    rows = table["rows"] if args.rows is None else [r for r in table["rows"] if r["name"] in args.rows.split(",")]
    out = []
    print("\n".join(HEADER))
    for row in rows:
        m = measure([*row_overrides(row, overrides), "threads=1", "device=cpu"], args.timed)
        launches = m["ops_per_step"] * args.launch_us + 2 * m["fused_layer_steps"] * args.fused_step_us  # us
        gpu = max(launches * 1e-6, m["gflop_per_step"] / (args.gpu_tflops * 1e3))
        m |= {"row": row["name"], "gpu_s_per_step_est": gpu, "gpu_h_est": gpu * m["max_steps"] / 3600,
              "launch_us": args.launch_us, "fused_step_us": args.fused_step_us, "gpu_tflops": args.gpu_tflops}
        out.append(m)
        print(markdown_row(m), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
