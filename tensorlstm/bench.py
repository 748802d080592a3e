"""`tlstm bench`: speed of the factorized cells and maps, as ratios measured in one interleaved run.

Every section times its cases in rounds: each round runs every case once, the order rotated by one per round
(A B C, B C A, C A B, ...), after one warm-up call each; a case's figure is the median over rounds and its
spread the min-max. A ratio is the median over rounds of the per-round ratio (the two cases ran moments apart),
with its min-max, and is only ever formed between cases of the same section of the same run. Default timer:
CPU time of this thread with torch on one thread (`--threads 1 --timer cpu`), the steadiest figure on a shared
machine; `--timer wall` (always on CUDA, with a synchronize) for wall clock.

Sections (`--sections`):
* sequence: a training step (forward, backward, optimizer) at B32 x T100, 256 -> 512, LSTM and GRU bases:
  torch.nn.LSTM/GRU with default Adam (what a user writes), torch.nn with fused Adam, our dense loop with fused
  Adam, the dense cell as the YAML composes it (`cell=lstm|gru`: cell.kernel=auto, torch.nn's weights run by
  whichever of those two paths is faster here); every factorized cell (cell=<fmt>, defaults from configs/cell/,
  fused Adam as `optim.implementation=auto` gives); and the Contract cases of issue 13 (`cell=tt rank=4`,
  `cell=bt rank=4 cell.blocks=2` with default Adam).
  Each is compared with the *best dense step* (the fastest dense case of the section) and with nn.LSTM/GRU +
  default Adam.
* ucf11: the same at B16 x T6, 57,600 -> 256 (8x20x20x18 -> 4x4x4x4) + Linear(256, 11) on the last output, LSTM.
* maps: the input map alone, forward+backward (x is data: no input gradient), at both shapes, against nn.Linear
  and against tensorly-torch's FactorizedLinear with the same factorization (its fastest implementation;
  tednet is timed too where installed).
* tlstm: forward+backward per input step of the tLSTM (P = L, M = 128, B16) and of a stacked nn.LSTM of L layers
  at the same width, with their GEMM FLOPs (3 x the forward GEMMs: forward, input and weight gradients) and the
  GFLOP/s each reaches.

`tlstm bench --out docs/speed.md` writes the printed tables as markdown (the README's speed lines come from
there), `--json FILE` the raw times. `--quick`: 3 rounds and the smaller cases, a few minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tensorlstm import native
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
from tensorlstm.denormals import set_denormals
from tensorlstm.engine.seeding import set_tf32
from tensorlstm.errors import ArgumentParser, UserError
from tensorlstm.host_memory import set_host_memory
from tensorlstm.tensor import DEFAULT_RANK, build_map, factorized_formats, gate_modes, kernels

SEQ = dict(batch=32, steps=100, input=256, hidden=512, in_modes=[4, 4, 4, 4], hidden_modes=[8, 4, 4, 4])
UCF = dict(batch=16, steps=6, input=57600, hidden=256, in_modes=[8, 20, 20, 18], hidden_modes=[4, 4, 4, 4],
           classes=11)
# the factorized cells of the sections: cell=<fmt> with these overrides (everything else from configs/cell/)
# every registered factorized format, at these ranks; one registered without an entry runs at its default rank
RANKS = {"tt": dict(rank=4), "bt": dict(rank=4, blocks=2), "cp": dict(rank=20), "tucker": dict(rank=4)}
FACTORIZED = {fmt: RANKS.get(fmt, dict(rank=DEFAULT_RANK[fmt])) for fmt in factorized_formats()}
TLTORCH_NAME = {"tt": "blocktt", "cp": "cp", "tucker": "tucker"}


# ---------------------------------------------------------------------------------------------------------
# interleaved timing
# ---------------------------------------------------------------------------------------------------------
class Timer:
    def __init__(self, kind: str, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda" or kind == "wall":
            self.kind, self.clock = "wall", time.perf_counter
        else:  # this thread's CPU time when torch runs on this thread alone, else the process's
            one = torch.get_num_threads() == 1
            self.kind = "cpu (thread)" if one else "cpu (process)"
            self.clock = time.thread_time if one else time.process_time

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def interleave(cases: dict[str, Callable[[], object]], rounds: int, timer: Timer) -> dict[str, list[float]]:
    """Seconds per round of every case; round r runs the cases in the order rotated by r."""
    names = list(cases)
    for n in names:
        cases[n]()
    timer.sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            timer.sync()
            start = timer.clock()
            cases[n]()
            timer.sync()
            times[n].append(timer.clock() - start)
    return times


def ratio(base: list[float], case: list[float]) -> tuple[float, float, float]:
    """Speed-up of `case` over `base`: median and min-max of the per-round ratios."""
    rs = [b / c for b, c in zip(base, case)]
    return statistics.median(rs), min(rs), max(rs)


def _ms(ts: list[float]) -> str:
    return f"{1e3 * statistics.median(ts):.1f} [{1e3 * min(ts):.1f}-{1e3 * max(ts):.1f}]"


def _x(r: tuple[float, float, float] | None) -> str:
    return "-" if r is None else f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


# ---------------------------------------------------------------------------------------------------------
# training-step cases
# ---------------------------------------------------------------------------------------------------------
def adam(params, fused: bool) -> torch.optim.Optimizer:
    """torch.optim.Adam with its defaults (what a user writes), or its fused kernel (optim.implementation=auto)."""
    return torch.optim.Adam(params, fused=True) if fused else torch.optim.Adam(params)


class TorchRNN(nn.Module):
    """torch.nn.LSTM/GRU(I, H) as the user writes it: time-major input, (y, state) out; batch-first here."""

    def __init__(self, base: str, i: int, h: int) -> None:
        super().__init__()
        self.rnn = (nn.LSTM if base == "lstm" else nn.GRU)(i, h)

    def forward(self, x):
        y, s = self.rnn(x.transpose(0, 1))
        return y.transpose(0, 1), s


def our_dense_loop(base: str, i: int, h: int) -> nn.Module:
    """`cell=<base> cell.kernel=loop`: our time loop (fused_loop.py) with a dense input map."""
    return build_cell(cell_config(base, kernel="loop"), i, h)


def factorized(fmt: str, base: str, shape: dict, **extra) -> nn.Module:
    """`cell=<fmt> cell.base=<base>` as configs/cell/ composes it, with the section's rank (and blocks)."""
    cfg = cell_config(fmt, base=base, **{**FACTORIZED[fmt], **extra})
    return build_cell(cfg, shape["input"], shape["hidden"], shape["in_modes"], shape["hidden_modes"])


def step_fn(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, head: nn.Module | None = None,
            labels: torch.Tensor | None = None) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        y, _ = net(x)
        if head is None:
            loss = y.square().mean()
        else:
            loss = nn.functional.cross_entropy(head(y[:, -1]), labels)
        loss.backward()
        opt.step()

    return step


def step_inputs(shape: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The section's batch (B, T, input) and class labels (used where the shape has a classification head)."""
    torch.manual_seed(0)
    x = torch.randn(shape["batch"], shape["steps"], shape["input"], device=device)
    labels = torch.randint(0, shape.get("classes", 1), (shape["batch"],), device=device)
    return x, labels


def training_step(net: nn.Module, shape: dict, x: torch.Tensor, labels: torch.Tensor,
                  fused: bool) -> Callable[[], None]:
    """One training step of `net` at `shape`: the Linear head on the last output where the shape has classes
    (else the mean square of the outputs), Adam (fused or torch's default) over the net and the head."""
    head = nn.Linear(shape["hidden"], shape["classes"]).to(x.device) if "classes" in shape else None
    params = list(net.parameters()) + ([] if head is None else list(head.parameters()))
    return step_fn(net, adam(params, fused), x, head, labels)


def bench_steps(section: str, shape: dict, bases: list[str], quick: bool, device, timer, rounds: int,
                notes: list[str]) -> list[dict]:
    rows = []
    for base in bases:
        rows += _bench_base(section, shape, base, device, timer, rounds)
    return rows


def _bench_base(section: str, shape: dict, base: str, device, timer, rounds: int) -> list[dict]:
    rows = []
    x, labels = step_inputs(shape, device)
    builders: dict[str, tuple[str, Callable[[], nn.Module], bool]] = {}
    tname = f"nn.{base.upper()}"
    builders[f"{tname} + Adam"] = ("user", lambda: TorchRNN(base, shape["input"], shape["hidden"]), False)
    builders[f"{tname} + fused Adam"] = ("dense", lambda: TorchRNN(base, shape["input"], shape["hidden"]), True)
    builders["our loop, dense + fused Adam"] = (
        "dense", lambda: our_dense_loop(base, shape["input"], shape["hidden"]), True)
    builders[f"cell={base} (YAML default, cell.kernel=auto) + fused Adam"] = (
        "dense", lambda: build_cell(cell_config(base), shape["input"], shape["hidden"]), True)
    for fmt in FACTORIZED:
        builders[f"{fmt} + fused Adam"] = ("ours", lambda fmt=fmt: factorized(fmt, base, shape), True)
    if base == "lstm":  # issue 13's Contract cases: cell_cfg from the YAML, default Adam
        builders["contract: cell=tt rank=4 + Adam"] = (
            "contract", lambda: factorized("tt", base, shape, rank=4), False)
        builders["contract: cell=bt rank=4 cell.blocks=2 + Adam"] = (
            "contract", lambda: factorized("bt", base, shape, rank=4, blocks=2), False)
    cases, kinds, params = {}, {}, {}
    for name, (kind, make, fused) in builders.items():
        torch.manual_seed(0)
        net = make().to(device)
        cases[name] = training_step(net, shape, x, labels, fused)
        kinds[name] = kind
        params[name] = sum(p.numel() for p in net.parameters())
    times = interleave(cases, rounds, timer)
    dense = [n for n in cases if kinds[n] in ("user", "dense")]
    best = min(dense, key=lambda n: statistics.median(times[n]))
    user = f"{tname} + Adam"
    for n in cases:
        rows.append(dict(section=section, base=base, case=n, kind=kinds[n], params=params[n],
                         seconds=times[n], best_dense=best,
                         vs_best_dense=None if n == best else ratio(times[best], times[n]),
                         vs_user=None if n == user else ratio(times[user], times[n])))
    return rows


def print_steps(rows: list[dict], title: str, out: list[str]) -> None:
    if not rows:
        return
    out += [f"\n### {title}\n", "| base | case | params (recurrent net) | ms per step [min-max] | "
            "vs best dense step | vs nn.LSTM/GRU + Adam |", "|---|---|---|---|---|---|"]
    for r in rows:
        best = " (best dense)" if r["case"] == r["best_dense"] else ""
        out.append(f"| {r['base']} | {r['case']}{best} | {r['params']:,} | {_ms(r['seconds'])} | "
                   f"{_x(r['vs_best_dense'])} | {_x(r['vs_user'])} |")


# ---------------------------------------------------------------------------------------------------------
# input maps alone
# ---------------------------------------------------------------------------------------------------------
def tltorch_layer(fmt: str, in_modes, out_modes, rank, implementation: str):
    import tltorch  # an optional peer (the dev extra installs it)

    if fmt == "tucker":  # tltorch orders the weight's modes (out..., in...)
        rank = tuple([rank] * (2 * len(in_modes)))
    return tltorch.FactorizedLinear(tuple(in_modes), tuple(out_modes), bias=False,
                                    factorization=TLTORCH_NAME[fmt], rank=rank, implementation=implementation)


def tednet_layer(fmt: str, in_modes, out_modes, rank):  # pragma: no cover - optional, rarely installed
    import tednet.tnn as tnn

    cls = {"tt": tnn.tensor_train.TTLinear, "bt": tnn.block_term.BTLinear}.get(fmt)
    if cls is None:
        return None
    if fmt == "tt":
        return cls(list(in_modes), list(out_modes), [rank] * (len(in_modes) - 1), bias=False)
    return cls(list(in_modes), list(out_modes), [rank] * len(in_modes), 2, bias=False)


def fwd_bwd(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        for p in m.parameters():
            p.grad = None
        m(x).backward(g)

    return run


def bench_maps(shape_name: str, shape: dict, device, timer, rounds: int, notes: list[str]) -> list[dict]:
    torch.manual_seed(0)
    in_modes = shape["in_modes"]
    out_modes = gate_modes(shape["hidden_modes"], 4, "first")
    n_in, n_out = math.prod(in_modes), math.prod(out_modes)
    x = torch.randn(shape["batch"] * shape["steps"], n_in, device=device)
    g = torch.randn(x.shape[0], n_out, device=device)
    cases: dict[str, Callable] = {"nn.Linear": fwd_bwd(nn.Linear(n_in, n_out, bias=False).to(device), x, g)}
    peers: dict[str, list[str]] = {}
    have_tltorch = importlib.util.find_spec("tltorch") is not None
    have_tednet = importlib.util.find_spec("tednet") is not None
    if not have_tltorch:
        notes.append("tensorly-torch not installed: no tltorch column (pip install -e '.[dev]')")
    if not have_tednet:
        notes.append("tednet not installed: no tednet column (optional peer)")
    for fmt, kw in FACTORIZED.items():
        m = build_map(fmt, in_modes, out_modes, rank=kw["rank"], blocks=kw.get("blocks", 1)).to(device)
        cases[fmt] = fwd_bwd(m, x, g)
        peers[fmt] = []
        if have_tltorch and fmt in TLTORCH_NAME:
            for impl in ("factorized", "reconstructed"):
                if impl == "reconstructed" and n_in * n_out > 1e7:
                    continue  # rebuilding a 59M-entry W per call is far slower than its factorized path
                try:
                    layer = tltorch_layer(fmt, in_modes, out_modes, kw["rank"], impl).to(device)
                except Exception as exc:  # noqa: BLE001 - a peer failure is reported, not fatal
                    notes.append(f"tltorch {fmt}/{impl} failed to build: {type(exc).__name__}: {exc}")
                    continue
                name = f"tltorch {TLTORCH_NAME[fmt]} ({impl})"
                cases[name] = fwd_bwd(layer, x, g)
                peers[fmt].append(name)
        if have_tednet:  # pragma: no cover
            try:
                layer = tednet_layer(fmt, in_modes, out_modes, kw["rank"])
                if layer is not None:
                    cases[f"tednet {fmt}"] = fwd_bwd(layer.to(device), x, g)
                    peers[fmt].append(f"tednet {fmt}")
            except Exception as exc:  # noqa: BLE001
                notes.append(f"tednet {fmt} failed: {type(exc).__name__}: {exc}")
    times = interleave(cases, rounds, timer)
    rows = []
    for fmt in FACTORIZED:
        tl = [p for p in peers[fmt] if p.startswith("tltorch")]
        best_tl = min(tl, key=lambda n: statistics.median(times[n])) if tl else None
        ted = [p for p in peers[fmt] if p.startswith("tednet")]
        rows.append(dict(section="maps", shape=shape_name, case=fmt, seconds=times[fmt],
                         vs_linear=ratio(times["nn.Linear"], times[fmt]),
                         tltorch=best_tl, vs_tltorch=ratio(times[best_tl], times[fmt]) if best_tl else None,
                         vs_tednet=ratio(times[ted[0]], times[fmt]) if ted else None))
    rows.append(dict(section="maps", shape=shape_name, case="nn.Linear", seconds=times["nn.Linear"],
                     vs_linear=None, tltorch=None, vs_tltorch=None, vs_tednet=None))
    return rows


def print_maps(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    out += ["\n### Input map alone, forward + backward\n",
            "| shape | map | ms [min-max] | vs nn.Linear | vs tensorly-torch (its fastest implementation) | "
            "vs tednet |", "|---|---|---|---|---|---|"]
    for r in rows:
        tl = "-" if r["vs_tltorch"] is None else f"{_x(r['vs_tltorch'])} ({r['tltorch']})"
        out.append(f"| {r['shape']} | {r['case']} | {_ms(r['seconds'])} | {_x(r['vs_linear'])} | {tl} | "
                   f"{_x(r['vs_tednet'])} |")


# ---------------------------------------------------------------------------------------------------------
# tLSTM against a stacked nn.LSTM of the same width
# ---------------------------------------------------------------------------------------------------------
def tlstm_flops(net, B: int, T: int, I: int) -> float:  # noqa: E741
    """GEMM FLOPs of one training pass (3 x forward: output, input and weight gradients) over T inputs."""
    M, taps, Mo = net.M, net.geo.taps, net.weight.shape[-1]
    N, steps = net.geo.locations, T + net.delay
    per_step = 2 * B * N * taps * M * Mo  # the cross-layer GEMM (im2col over all taps)
    pairs = net.input_locations.numel()
    fwd = steps * per_step + 2 * B * (T + net.delay) * pairs * M * Mo + 2 * B * T * I * M
    return 3.0 * fwd


def lstm_flops(layers: int, B: int, T: int, I: int, H: int) -> float:  # noqa: E741
    fwd = sum(2 * B * T * ((I if i == 0 else H) + H) * 4 * H for i in range(layers))
    return 3.0 * fwd


def bench_tlstm(depths: list[int], device, timer, rounds: int, notes: list[str]) -> list[dict]:
    B, T, M, I = 16, 20, 128, 128  # noqa: E741
    torch.manual_seed(0)
    x = torch.randn(B, T, I, device=device)
    cases, flops = {}, {}
    for L in depths:
        t = build_cell(cell_config("tlstm", P=L, M=M), I, M).to(device)
        cases[f"tLSTM P={L}"] = _fb(t, x)
        flops[f"tLSTM P={L}"] = tlstm_flops(t, B, T, I)
        s = nn.LSTM(I, M, num_layers=L, batch_first=True).to(device)
        cases[f"nn.LSTM x{L}"] = _fb(s, x)
        flops[f"nn.LSTM x{L}"] = lstm_flops(L, B, T, I, M)
    times = interleave(cases, rounds, timer)
    rows = []
    for L in depths:
        a, b = f"tLSTM P={L}", f"nn.LSTM x{L}"
        ga = flops[a] / statistics.median(times[a]) / 1e9
        gb = flops[b] / statistics.median(times[b]) / 1e9
        rows.append(dict(section="tlstm", L=L, tlstm=times[a], lstm=times[b], tlstm_flops=flops[a],
                         lstm_flops=flops[b], tlstm_gflops=ga, lstm_gflops=gb,
                         lstm_over_tlstm=ratio(times[b], times[a]), efficiency=ga / gb, steps=T))
    return rows


def _fb(net: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        net.zero_grad(set_to_none=True)
        y, _ = net(x)
        y.square().mean().backward()

    return run


def print_tlstm(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    out += ["\n### tLSTM (P = L, K = 3, M = 128) vs a stacked nn.LSTM of L layers (H = 128), B16 x T20, fwd+bwd\n",
            "| L | tLSTM ms per input step | nn.LSTM ms per input step | tLSTM speed vs nn.LSTM | tLSTM MFLOP "
            "| nn.LSTM MFLOP | tLSTM GFLOP/s | nn.LSTM GFLOP/s | tLSTM efficiency / nn.LSTM's |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        T = r["steps"]
        out.append(f"| {r['L']} | {1e3 * statistics.median(r['tlstm']) / T:.2f} | "
                   f"{1e3 * statistics.median(r['lstm']) / T:.2f} | {_x(r['lstm_over_tlstm'])} | "
                   f"{r['tlstm_flops'] / 1e6:.0f} | {r['lstm_flops'] / 1e6:.0f} | {r['tlstm_gflops']:.1f} | "
                   f"{r['lstm_gflops']:.1f} | {100 * r['efficiency']:.0f}% |")


# ---------------------------------------------------------------------------------------------------------
def machine() -> str:
    """The CPU as the header names it: model name, x86 family and model numbers (which tell CPU generations apart
    where the model name is generic, e.g. "AMD EPYC" under a hypervisor), and the vector unit torch uses."""
    name = kernels.cpu_info("model name") or platform.machine()
    family, model = kernels.cpu_info("cpu family"), kernels.cpu_info("model")
    ident = f"family {family} model {model}, " if family else ""
    return f"{name} ({ident}{torch.backends.cpu.get_cpu_capability()})"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser("tlstm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, fewer tLSTM depths (a few minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per section (default 9)")
    parser.add_argument("--sections", default="sequence,ucf11,maps,tlstm",
                        help="comma list of: sequence, ucf11, maps, tlstm")
    parser.add_argument("--out", default=None, help="write the tables as markdown (e.g. docs/speed.md); "
                        "a .json path writes the raw times instead")
    parser.add_argument("--json", default=None, help="write the raw per-round times as JSON")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                        help="cpu: CPU time (default, steadiest when shared); wall: wall clock")
    args = parser.parse_args(argv)
    if args.out and args.out.endswith(".json") and not args.json:  # --out x.json: the raw JSON, as before
        args.json, args.out = args.out, None
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    known = ("sequence", "ucf11", "maps", "tlstm")
    bad = sorted(set(sections) - set(known))
    if bad or not sections:
        raise UserError(f"tlstm bench --sections: unknown {', '.join(bad) or '(none)'}; "
                        f"choose from {', '.join(known)}")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise UserError(f"tlstm bench --device {args.device}: choose auto, cpu, cuda or cuda:N")
    for flag, value in (("--threads", args.threads), ("--rounds", args.rounds)):
        if value is not None and value < 1:
            raise UserError(f"tlstm bench {flag} {value}: give a positive integer")
    for flag, path in (("--out", args.out), ("--json", args.json)):
        folder = None if path is None else Path(path).resolve().parent
        if folder is not None and (not folder.is_dir() or not os.access(folder, os.W_OK)):
            raise UserError(f"tlstm bench {flag} {path}: folder {folder} does not exist or is not writable; "
                            f"create it or choose another {flag}")
    # the cells' YAML defaults, for the whole process before anything is timed: the baselines run under them too
    # (the denormal mode before torch starts its intra-op threads, which inherit it)
    defaults = cell_config("lstm")
    denormals = defaults["denormals"] if set_denormals(defaults["denormals"]) or defaults["denormals"] == "ieee" \
        else f"{defaults['denormals']} (no effect: not supported here)"
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    set_tf32(False)  # cuDNN's nn.LSTM baseline and our cuBLAS GEMMs in the same (strict fp32) precision
    host_memory = defaults["host_memory"]
    if not set_host_memory(host_memory) and host_memory == "keep":
        host_memory = "keep (no effect: no glibc mallopt here)"
    gates = defaults["gates"]  # our loops' gate math (the YAML default), stated in the header
    if gates == "native":
        gates = "native (tensorlstm/native.cpp)" if native.kernels(torch.zeros(1, device=device)) else \
            "native asked, torch ops ran (not built here, or not a CPU)"
    chains = "oneDNN" if kernels.onednn_beats_mkl() else "torch's matmul (MKL on an Intel CPU)"
    steps = ("torch.addmm" if device.type != "cpu" else "transposed, (4H x H) @ (H x B) (AVX2 CPU)"
             if kernels.transposed_steps() else "(B x H) @ (H x 4H), oneDNN's packed weight")
    timer = Timer(args.timer, device)
    rounds = args.rounds or (3 if args.quick else 9)
    notes: list[str] = []
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    out = ["# Speed", "", f"Made by `tlstm bench {' '.join(argv if argv is not None else sys.argv[1:])}` on "
           f"{machine()} ({device}), torch {torch.__version__}, "
           f"{torch.get_num_threads()} thread(s), timer: {timer.kind}, host memory: "
           f"{host_memory} (cell.host_memory, for every case), denormal floats: {denormals} (cell.denormals, for "
           f"every case), gate math of our loops: {gates} (cell.gates), "
           f"the maps' chain GEMMs and the dense loop's input projection (float32, CPU): {chains}, the LSTM loop's "
           f"step products: "
           f"{steps} (tensor/kernels.py), {rounds} interleaved rounds "
           "per section (order rotated each round). Times: median [min-max]; ratios: median [min-max] of the per-round "
           "ratios, >1 = the row is faster. Only cases of one table are compared, and every table was measured "
           "in this one run."]
    if "sequence" in sections:
        results["sequence"] = bench_steps("sequence", SEQ, ["lstm", "gru"], args.quick, device, timer, rounds,
                                          notes)
        print_steps(results["sequence"], "Training step, sequence shape: B32 x T100, 256 -> 512 "
                    "(forward + backward + Adam)", out)
    if "ucf11" in sections:
        results["ucf11"] = bench_steps("ucf11", UCF, ["lstm"], args.quick, device, timer, rounds, notes)
        print_steps(results["ucf11"], "Training step, UCF11 shape: B16 x T6, 57,600 -> 256, + Linear(256, 11) "
                    "on the last output (forward + backward + Adam)", out)
    if "maps" in sections:
        results["maps"] = bench_maps("ucf11", UCF, device, timer, rounds, notes) + \
            bench_maps("sequence", SEQ, device, timer, rounds, notes)
        print_maps(results["maps"], out)
    if "tlstm" in sections:
        results["tlstm"] = bench_tlstm([1, 4] if args.quick else [1, 2, 4, 8], device, timer, rounds, notes)
        print_tlstm(results["tlstm"], out)
    out.append("")
    out += [f"note: {n}" for n in dict.fromkeys(notes)]
    out.append(f"\n({time.perf_counter() - started:.0f} s)")
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                           timer=timer.kind, rounds=rounds, results=results, notes=list(dict.fromkeys(notes))),
                      f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
