"""`tlstm bench`: speed of the factorized maps and cells, as ratios measured in one run.

Sections (every figure is a ratio of medians of repeated runs in the same process; seconds are
printed and stored only as auxiliary data):

* maps: the input map alone, forward+backward (x is data: no input gradient), at the UCF11 shape
  (16 x 6 rows, 57,600 -> 4 x 256; 8x20x20x18 -> 16x4x4x4) and at a sequence shape (32 x 100 rows,
  256 -> 3 x 512; 4x4x4x4 -> 8x4x4x12), for each format and forward mode, against
  - dense `nn.Linear` (speedup = dense time / our time),
  - the memory floor `x.sum()`, one pass over the input (ratio = our time / floor time),
  - tensorly-torch's `FactorizedLinear` on the same factorization (cp, tucker, blocktt = TT), when
    installed (speedup = its best implementation's time / ours in `auto` mode);
  plus time-batched projection (one call for all B*T rows) vs per-step projection (T calls of B rows,
  what released TT/BT-RNN codes do).
* cells: a whole training step (forward, backward, Adam) of each cell vs the dense LSTM/GRU cell
  (torch.nn.LSTM/GRU), and the peak memory of that step (CUDA: max_memory_allocated; CPU: bytes of
  parameters, gradients, Adam state and tensors saved for backward).

`--quick` runs in under about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tensorlstm.cells.recurrent import GATES
from tensorlstm.defaults import cell_config
from tensorlstm.errors import UserError
from tensorlstm.tensor import DEFAULT_RANK, build_map, factorized_formats, gate_modes

# name -> rows (B, T), in modes, hidden modes, gates, gate mode, ranks per format
SHAPES = {
    "ucf11": dict(
        batch=16,
        steps=6,
        in_modes=[8, 20, 20, 18],
        hidden_modes=[4, 4, 4, 4],
        base="lstm",
        gate_mode="first",
        ranks={"tt": 4, "bt": 4, "cp": 20, "tucker": 4},
        blocks=2,
    ),
    "sequence": dict(
        batch=32,
        steps=100,
        in_modes=[4, 4, 4, 4],
        hidden_modes=[8, 4, 4, 4],
        base="gru",
        gate_mode="last",
        ranks={"tt": 4, "bt": 4, "cp": 50, "tucker": [2, 4, 2, 4]},
        blocks=2,
    ),
}
FORMATS = factorized_formats()  # every registered format; a shape without a rank for one uses its default
TLTORCH_NAME = {"tt": "blocktt", "cp": "cp", "tucker": "tucker"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeats: int, device: torch.device, timer: str) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    clock = time.perf_counter if timer == "wall" else time.process_time
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        for p in module.parameters():
            p.grad = None
        module(x).backward(grad)

    return run


def per_step_fwd_bwd(
    module: nn.Module, x: torch.Tensor, grad: torch.Tensor, batch: int
) -> Callable[[], None]:
    """x, grad: (B*T, .) rows in (B, T) order; the map is called once per step on B rows."""
    xs = x.reshape(batch, -1, x.shape[-1])
    gs = grad.reshape(batch, -1, grad.shape[-1])

    def run() -> None:
        for p in module.parameters():
            p.grad = None
        ys = torch.stack([module(xs[:, t]) for t in range(xs.shape[1])], dim=1)
        ys.backward(gs)

    return run


def tltorch_layer(fmt: str, in_modes: list[int], out_modes: list[int], rank, implementation: str):
    import tltorch  # lazily: an optional peer

    if fmt == "tucker":
        d = len(in_modes)
        ranks = [rank] * (2 * d) if isinstance(rank, int) else list(rank) * (2 if len(rank) == d else 1)
        in_r, out_r = ranks[:d], ranks[d:]
        rank = tuple(out_r + in_r)  # tltorch orders the weight's modes (out..., in...)
    return tltorch.FactorizedLinear(
        tuple(in_modes),
        tuple(out_modes),
        bias=False,
        factorization=TLTORCH_NAME[fmt],
        rank=rank,
        implementation=implementation,
    )


def bench_maps(
    name: str, spec: dict, device: torch.device, repeats: int, quick: bool, timer: str, notes: list[str]
) -> list[dict]:
    torch.manual_seed(0)
    in_modes = spec["in_modes"]
    out_modes = gate_modes(spec["hidden_modes"], GATES[spec["base"]], spec["gate_mode"])
    rows = spec["batch"] * spec["steps"]
    n_in, n_out = math.prod(in_modes), math.prod(out_modes)
    x = torch.randn(rows, n_in, device=device)
    grad = torch.randn(rows, n_out, device=device)
    results = []

    def add(impl: str, mode: str, params: int, seconds: float, **extra) -> None:
        results.append(dict(shape=name, impl=impl, mode=mode, params=params, seconds=seconds, **extra))

    floor = measure(lambda: x.sum(), repeats, device, timer)
    add("x.sum() floor", "-", 0, floor)
    dense = nn.Linear(n_in, n_out, bias=False).to(device)
    dense_s = measure(fwd_bwd(dense, x, grad), repeats, device, timer)
    add("nn.Linear", "dense", n_in * n_out, dense_s)
    del dense
    big_w = n_in * n_out > 1e7
    for fmt in FORMATS:
        rank = spec["ranks"].get(fmt, DEFAULT_RANK[fmt])
        ours: dict[str, float] = {}
        for mode in ("factorized", "reconstruct"):
            if mode == "reconstruct" and big_w and quick:
                continue
            m = build_map(fmt, in_modes, out_modes, rank=rank, blocks=spec["blocks"], mode=mode).to(device)
            ours[mode] = measure(fwd_bwd(m, x, grad), repeats, device, timer)
            add(fmt, mode, m.num_params, ours[mode])
        # `auto` runs exactly the code of the mode it picks: report that mode's time under its name
        m = build_map(fmt, in_modes, out_modes, rank=rank, blocks=spec["blocks"], mode="auto").to(device)
        choice = m.choose_mode(rows, x.dtype, x.device)
        if choice not in ours:
            ours[choice] = measure(fwd_bwd(m, x, grad), repeats, device, timer)
        add(fmt, "auto", m.num_params, ours[choice], auto_choice=choice)
        if fmt == "bt" or (fmt == "tt" and not quick):
            ps = measure(per_step_fwd_bwd(m, x, grad, spec["batch"]), repeats, device, timer)
            add(fmt, "auto, per step", m.num_params, ps, batched_over_per_step=ps / ours[choice])
        if fmt in TLTORCH_NAME:
            best = None
            for impl in ("factorized", "reconstructed"):
                if impl == "reconstructed" and big_w:
                    continue  # rebuilding the 59M-entry W is far slower than its factorized path
                try:
                    layer = tltorch_layer(fmt, in_modes, out_modes, rank, impl).to(device)
                except ImportError:
                    notes.append(
                        "tensorly-torch not installed: no peer comparison (pip install tensorly-torch)"
                    )
                    break
                except Exception as exc:  # noqa: BLE001 - a peer failure is reported, not fatal
                    notes.append(f"tltorch {fmt}/{impl} failed to build: {type(exc).__name__}: {exc}")
                    continue
                s = measure(fwd_bwd(layer, x, grad), repeats, device, timer)
                add(f"tltorch {TLTORCH_NAME[fmt]}", impl, sum(p.numel() for p in layer.parameters()), s)
                best = s if best is None else min(best, s)
            if best is not None:
                for r in results:
                    if r["impl"] == fmt and r["mode"] in ("auto", "factorized"):
                        r["speedup_vs_tltorch"] = best / r["seconds"]
    for r in results:
        r["speedup_vs_dense"] = dense_s / r["seconds"]
        r["ratio_to_floor"] = r["seconds"] / floor
    return results


class _SavedBytes:
    """Counts the bytes of tensors autograd saves for backward (each storage once)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            key = t.untyped_storage().data_ptr()
            if key not in self.seen:
                self.seen.add(key)
                self.bytes += t.untyped_storage().nbytes()
        except RuntimeError:  # pragma: no cover - tensors without storage
            pass
        return t


def bench_cells(
    name: str, spec: dict, device: torch.device, repeats: int, timer: str, notes: list[str]
) -> list[dict]:
    try:
        from tensorlstm.cells import build_cell
    except Exception as exc:  # noqa: BLE001
        notes.append(f"cells not available ({type(exc).__name__}: {exc}); cell section skipped")
        return []
    torch.manual_seed(0)
    base = spec["base"]
    in_size, hidden = math.prod(spec["in_modes"]), math.prod(spec["hidden_modes"])
    x = torch.randn(spec["batch"], spec["steps"], in_size, device=device)
    results = []
    for fmt in ("dense",) + FORMATS:
        # the cell as `cell=<fmt> cell.base=<base>` composes it (configs/cell/*.yaml), at this shape's ranks
        shape = dict(base=base, d=len(spec["in_modes"]), gate_mode=spec["gate_mode"])
        if fmt == "dense":
            cfg = cell_config(base, **shape)
        else:
            cfg = cell_config(fmt, **shape, rank=spec["ranks"].get(fmt, DEFAULT_RANK[fmt]),
                              **({"blocks": spec["blocks"]} if fmt == "bt" else {}))
        try:
            net = build_cell(cfg, in_size, hidden, spec["in_modes"], spec["hidden_modes"]).to(device)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"cell {fmt}/{base} at {name} failed to build: {type(exc).__name__}: {exc}")
            continue
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def step(net=net, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            y, _ = net(x)
            y.square().mean().backward()
            opt.step()

        try:
            seconds = measure(step, repeats, device, timer)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"cell {fmt}/{base} at {name} failed to run: {type(exc).__name__}: {exc}")
            continue
        # memory of one step
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            step()
            _sync(device)
            peak, how = torch.cuda.max_memory_allocated(device), "cuda.max_memory_allocated"
        else:
            counter = _SavedBytes()
            opt.zero_grad(set_to_none=True)
            with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                y, _ = net(x)
            y.square().mean().backward()
            opt.step()
            state = sum(
                t.numel() * t.element_size()
                for s in opt.state.values()
                for t in s.values()
                if isinstance(t, torch.Tensor)
            )
            params = sum(p.numel() * p.element_size() for p in net.parameters())
            peak, how = counter.bytes + 2 * params + state, "saved-for-backward + params + grads + Adam state"
        params_input = net.input_map_params() if hasattr(net, "input_map_params") else None
        results.append(
            dict(
                shape=name,
                cell=fmt if fmt != "dense" else base,
                base=base,
                seconds=seconds,
                params_input_map=params_input,
                params_total=sum(p.numel() for p in net.parameters()),
                peak_bytes=peak,
                memory_measure=how,
            )
        )
        del net, opt
    dense = next((r for r in results if r["cell"] == base), None)
    for r in results:
        if dense is not None:
            r["speedup_vs_dense"] = dense["seconds"] / r["seconds"]
            r["memory_vs_dense"] = r["peak_bytes"] / dense["peak_bytes"]
    return results


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_tables(maps: list[dict], cells: list[dict]) -> None:
    if maps:
        print("\nInput map, forward+backward (medians; ratios measured in this run)")
        head = (
            f"{'shape':9} {'impl':18} {'mode':16} {'params':>10} {'vs dense':>9} {'vs floor':>9} "
            f"{'vs tltorch':>10} {'batched/step':>12} {'aux ms':>9}"
        )
        print(head)
        print("-" * len(head))
        for r in maps:
            mode = r["mode"] + (f"->{r['auto_choice'][:4]}" if "auto_choice" in r else "")
            print(
                f"{r['shape']:9} {r['impl']:18} {mode:16} {r['params']:>10} "
                f"{_fmt_ratio(r.get('speedup_vs_dense')):>9} {_fmt_ratio(r.get('ratio_to_floor')):>9} "
                f"{_fmt_ratio(r.get('speedup_vs_tltorch')):>10} "
                f"{_fmt_ratio(r.get('batched_over_per_step')):>12} {1e3 * r['seconds']:>9.2f}"
            )
        print(
            "vs dense / vs tltorch: speedup (>1 = ours faster); vs floor: our time / x.sum() time;"
            " batched/step: per-step time / batched time"
        )
    if cells:
        print("\nTraining step of a cell (forward+backward+Adam)")
        head = (
            f"{'shape':9} {'cell':8} {'input params':>12} {'vs dense':>9} {'memory/dense':>12} {'aux ms':>9}"
        )
        print(head)
        print("-" * len(head))
        for r in cells:
            print(
                f"{r['shape']:9} {r['cell']:8} {str(r['params_input_map']):>12} "
                f"{_fmt_ratio(r.get('speedup_vs_dense')):>9} {_fmt_ratio(r.get('memory_vs_dense')):>12} "
                f"{1e3 * r['seconds']:>9.2f}"
            )


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (UserError: exit 2), not argparse's usage block."""

    def error(self, message: str):
        raise UserError(f"tlstm bench: {message}; see tlstm bench --help")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="tlstm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, skip the slowest cases (< 2 min)"
    )
    parser.add_argument("--out", default="bench.json", help="where to write the JSON results")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock, or process CPU time (steadier on a shared CPU machine)",
    )
    parser.add_argument("--sections", default="maps,cells", help="comma list of: maps, cells")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of: {', '.join(SHAPES)}")
    args = parser.parse_args(argv)
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise UserError(f"tlstm bench --device {args.device}: choose auto, cpu, cuda or cuda:N")
    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats)):
        if value is not None and value < 1:
            raise UserError(f"tlstm bench {flag} {value}: give a positive integer")
    bad = sorted({s.strip() for s in args.sections.split(",") if s.strip()} - {"maps", "cells"})
    if bad:
        raise UserError(f"tlstm bench --sections: unknown {', '.join(bad)}; choose from maps, cells")
    out_dir = Path(args.out).resolve().parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        raise UserError(f"tlstm bench --out {args.out}: folder {out_dir} does not exist or is not writable; "
                        "create it or choose another --out")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    repeats = args.repeats or (2 if args.quick else 7)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise UserError(f"tlstm bench --shapes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    notes: list[str] = []
    maps, cells = [], []
    started = time.perf_counter()
    for name in shapes:
        spec = dict(SHAPES[name])
        if "maps" in sections:
            maps += bench_maps(name, spec, device, repeats, args.quick, args.timer, notes)
        if "cells" in sections:
            cspec = dict(spec)
            if args.quick and name == "sequence":
                cspec["steps"] = 25  # the per-step loop dominates; ratios barely change
            cells += bench_cells(name, cspec, device, repeats, args.timer, notes)
    print_tables(maps, cells)
    for n in dict.fromkeys(notes):
        print("note:", n)
    result = dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        timer=args.timer,
        repeats=repeats,
        quick=args.quick,
        shapes={k: SHAPES[k] for k in shapes},
        maps=maps,
        cells=cells,
        notes=list(dict.fromkeys(notes)),
        elapsed_seconds=time.perf_counter() - started,
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nwrote {args.out} ({result['elapsed_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
