"""Kernel-launch proxy of the recurrent time loops: operators per time step, forward + backward.

Each innermost aten operator the profiler records that computes something (views, reshapes and allocations
excluded) is about one kernel launch on a GPU, so ops per step x a few microseconds of launch overhead bounds
how fast a Python time loop can run there, whatever B and H are.
Per-step counts are the difference of two sequence lengths (T and 2T) divided by T, so the work done once per
sequence (the time-batched input projection, dL/dU as one matmul) drops out.

    python scripts/ops_per_step.py                      # CPU: aten ops per step
    python scripts/ops_per_step.py --device cuda        # also CUDA kernels per step (the real launches)
    python scripts/ops_per_step.py --compile            # + the LSTM step math eager vs torch.compile

Prints one JSON line per case (and writes them to --out).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config

BASE = cell_config("lstm", rank=4, blocks=2, d=4, in_modes=None, hidden_modes=None, hidden_size=None,
                   gate_mode="first", factorize_hidden=False, forward="auto", layers=1, dropout=0.0,
                   recurrent_dropout=0.0, gate_activation="sigmoid", reset_after=True)
TLSTM = {"name": "tlstm", "P": 4, "M": None, "K": None, "feedback": True, "memory_conv": True, "norm": "none",
         "forget_bias": 1.0, "dropout": 0.0}
CASES = {
    "lstm_fused (nn.LSTM)": {**BASE, "name": "lstm"},
    "tt_lstm": {**BASE, "name": "tt", "format": "tt"},
    "tt_lstm_lengths": {**BASE, "name": "tt", "format": "tt"},
    "bt_gru": {**BASE, "name": "bt", "format": "bt", "base": "gru"},
    "tt_gru_cho": {**BASE, "name": "tt", "format": "tt", "base": "gru", "reset_after": False},
    "tlstm_p4": TLSTM,
    "tlstm_p4_ln": {**TLSTM, "norm": "ln"},
}


# aten ops that launch no kernel (metadata only, or allocation)
NO_KERNEL = {"view", "_unsafe_view", "reshape", "as_strided", "t", "transpose", "permute", "expand", "unsqueeze",
             "squeeze", "split", "split_with_sizes", "unbind", "select", "slice", "detach", "alias", "empty",
             "empty_like", "empty_strided", "lift_fresh", "unflatten", "flatten", "narrow", "resize_", "result_type",
             "_reshape_alias", "view_as", "expand_as", "contiguous", "chunk", "numpy_T",
             "_has_compatible_shallow_copy_type"}


def _computes(event) -> bool:
    name = event.name.removeprefix("aten::")
    leaf = not any(c.name.startswith("aten::") for c in event.cpu_children)
    return event.name.startswith("aten::") and leaf and name not in NO_KERNEL


def count(net, x, lengths, device) -> tuple[int, int]:
    """(innermost computing aten ops, CUDA kernels) of one forward + backward."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        y, _ = net(x, None, lengths)
        y.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = sum(1 for e in events if e.device_type.name == "CPU" and _computes(e))
    kernels = sum(1 for e in events if e.device_type.name == "CUDA")
    return aten, kernels


def seconds(net, x, lengths, device, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y, _ = net(x, None, lengths)
        y.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="T (the counts use T and 2T)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also time the LSTM step math under torch.compile")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, cfg in CASES.items():
        torch.manual_seed(0)
        net = build_cell(cfg, args.input, args.hidden).to(device)
        per = {}
        for T in (args.steps, 2 * args.steps):
            x = torch.randn(args.batch, T, args.input, device=device)
            lengths = torch.full((args.batch,), T, device=device) if name.endswith("_lengths") else None
            count(net, x, lengths, device)  # warm-up (plans, caches)
            per[T] = (*count(net, x, lengths, device), seconds(net, x, lengths, device))
        (a1, k1, s1), (a2, k2, s2) = per[args.steps], per[2 * args.steps]
        row = {"case": name, "device": str(device), "B": args.batch, "H": args.hidden,
               "aten_ops_per_step": round((a2 - a1) / args.steps, 1),
               "cuda_kernels_per_step": round((k2 - k1) / args.steps, 1) if device.type == "cuda" else None,
               "ms_per_step": round(1e3 * (s2 - s1) / args.steps, 3)}
        emit(rows, row, args.out)
    if args.compile:
        emit(rows, compile_probe(args, device), args.out)


def emit(rows: list, row: dict, out: str | None) -> None:
    """Print the row and rewrite --out with every row so far (a timeout keeps what was measured)."""
    rows.append(row)
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)


def lstm_step(xw_t, h, c, U, H: int):
    """The LSTM cell's per-step math (as in RecurrentLayer.cell): 1 GEMM + 8 elementwise ops forward."""
    i_f, g, o = torch.addmm(xw_t, h, U).split((2 * H, H, H), dim=1)
    i, f = torch.sigmoid(i_f).split(H, dim=1)
    c = f * c + i * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def compile_probe(args, device) -> dict:
    """ms per step of the LSTM step math, eager vs torch.compile (fullgraph, static shapes), fwd + bwd."""
    B, H, T = args.batch, args.hidden, 2 * args.steps
    U = torch.randn(H, 4 * H, device=device, requires_grad=True)
    xw = torch.randn(T, B, 4 * H, device=device, requires_grad=True)

    def run(step) -> None:
        h = c = torch.zeros(B, H, device=device)
        out = []
        for t in range(T):
            h, c = step(xw[t], h, c, U, H)
            out.append(h)
        torch.stack(out).sum().backward()

    def ms(step) -> float:
        times = []
        for _ in range(6):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return round(1e3 * sorted(times[1:])[2] / T, 3)

    t0 = time.perf_counter()
    compiled = torch.compile(lstm_step, fullgraph=True, dynamic=False)
    try:
        run(compiled)
    except Exception as e:  # noqa: BLE001 - report it
        return {"case": "compile_probe", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    compile_s = time.perf_counter() - t0
    return {"case": "compile_probe (LSTM step math)", "device": str(device), "B": B, "H": H,
            "eager_ms_per_step": ms(lstm_step), "compiled_ms_per_step": ms(compiled),
            "compile_seconds": round(compile_s, 1)}


if __name__ == "__main__":
    main()
