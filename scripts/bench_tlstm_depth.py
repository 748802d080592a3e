"""Runtime vs depth (He et al. 2017's central claim): tLSTM deepens by delay at little extra runtime, sLSTM
by stacking at a linear cost. Measures milliseconds of forward + backward per time step of one batch for the
2D tLSTM (P = L, K = 3, so depth L) and the sLSTM (L shared-weight layers) at L = 1, 2, 4, 8 with the same M,
in one run, and prints each model's ratio to its L = 1 time (fastest of the repeats, which run round-robin
over the configurations; medians beside). Writes the figures as JSON.

    .venv/bin/python scripts/bench_tlstm_depth.py                       # CPU defaults
    .venv/bin/python scripts/bench_tlstm_depth.py --device cuda --batch 128 --M 512

The tLSTM time per input step includes its L - 1 delay steps (T + L - 1 cell steps for T inputs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config


def time_fwd_bwd(net: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward over the batch."""
    net.zero_grad(set_to_none=True)
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    y, _ = net(x)
    y.square().mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--M", type=int, default=128, help="channels (tLSTM) = hidden size (sLSTM)")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="input time steps T")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadiest when shared)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/tlstm_depth.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.input_size, device=device)
    models = {
        "tLSTM (2D, K=3, P=L)": lambda L: cell_config("tlstm", P=L, M=args.M),
        "sLSTM (L shared layers)": lambda L: cell_config("slstm", layers=L, hidden_size=args.M),
    }
    nets = {(model, L): build_cell(make_cfg(L), args.input_size, args.M).to(device)
            for model, make_cfg in models.items() for L in args.depths}
    # Round-robin over the configurations, so that a change in machine load hits all of them alike;
    # the headline is the fastest repeat (the least disturbed), the median is kept too.
    times: dict[tuple, list[float]] = {key: [] for key in nets}
    for i in range(args.warmup + args.repeats):
        for key, net in nets.items():
            seconds = time_fwd_bwd(net, x)
            if i >= args.warmup:
                times[key].append(seconds)
    rows = []
    for (model, L), net in nets.items():
        ms = 1e3 * min(times[(model, L)]) / args.steps
        median = 1e3 * statistics.median(times[(model, L)]) / args.steps
        base = 1e3 * min(times[(model, args.depths[0])]) / args.steps
        base_median = 1e3 * statistics.median(times[(model, args.depths[0])]) / args.steps
        params = sum(p.numel() for p in net.parameters())
        rows.append({"model": model, "L": L, "depth": net.describe()["depth"], "ms_per_step": round(ms, 4),
                     "ratio_to_L1": round(ms / base, 3), "ms_per_step_median": round(median, 4),
                     "ratio_to_L1_median": round(median / base_median, 3), "params": params})
        print(f"{model:26s} L={L:<2d} {ms:8.3f} ms/step  x{ms / base:5.2f} vs L=1   (median {median:7.3f} ms, "
              f"x{median / base_median:5.2f})  params {params:,}", flush=True)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads, "batch": args.batch, "steps": args.steps, "M": args.M,
        "input_size": args.input_size, "repeats": args.repeats, "torch": torch.__version__, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
