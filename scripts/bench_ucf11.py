#!/usr/bin/env python
"""UCF11 pipeline benchmark: prepare throughput, loader batches/s, and one training step per cell at the
papers' shapes (57,600 -> 4x256, batch 16 x 6 frames), as ratios to the dense LSTM. Prints a table and
writes JSON.

    python scripts/bench_ucf11.py                      # builds a stand-in cache from the real clips
    python scripts/bench_ucf11.py --cache data/ucf11   # a real prepared UCF11 cache

Without a UCF11 cache it lays out the real H.264 clips of ../shared/data/video (or any --clips folder) as
11 classes x 3 groups x 2 clips of the official layout and prepares that: real decoding, real frame sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import tensorlstm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from tensorlstm.cells import build_cell
from tensorlstm.data.ucf11 import UCF11_CLASSES, prepare_cache
from tensorlstm.data.video import quiet_opencv
from tensorlstm.defaults import cell_config, group_config
from tensorlstm.tasks.ucf11 import UCF11Task

PAPER_CELL = dict(rank=4, blocks=1, d=4, in_modes=None, hidden_modes=None, hidden_size=None,
                  gate_mode="first", factorize_hidden=False, mode="auto", layers=1, dropout=0.25,
                  recurrent_dropout=0.25,
                  gate_activation="hard_sigmoid", base="lstm")
CELLS = {  # name -> cell config overrides (the papers' settings: hard-sigmoid gates, dropout 0.25/0.25)
    "LSTM": dict(name="lstm", format="dense"),
    "LSTM (nn.LSTM, sigmoid, no rec. dropout)": dict(name="lstm", format="dense", gate_activation="sigmoid",
                                                     recurrent_dropout=0.0),
    "TT-LSTM r=4": dict(name="tt", format="tt"),
    "BT-LSTM R=4 N=2": dict(name="bt", format="bt", blocks=2),
    "BT-LSTM R=1 N=1": dict(name="bt", format="bt", rank=1),
}


def stand_in_cache(clips_dir: Path, work: Path, workers: int) -> tuple[Path, dict]:
    videos = sorted(p for p in clips_dir.iterdir() if p.suffix.lower() in (".mp4", ".mpg", ".avi"))
    if not videos:
        raise SystemExit(f"no clips in {clips_dir}; pass --cache <prepared UCF11 cache>")
    src = work / "UCF11_updated_mpg"
    n = 0
    for c in UCF11_CLASSES:
        for g in (1, 2, 3):
            for k in (1, 2):
                link = src / c / f"v_{c}_{g:02d}" / f"v_{c}_{g:02d}_{k:02d}{videos[n % len(videos)].suffix}"
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.exists():
                    link.symlink_to(videos[n % len(videos)].resolve())
                n += 1
    out = work / "cache"
    start = time.perf_counter()
    report = prepare_cache(src, out, workers=workers, log=lambda _m: None)
    seconds = time.perf_counter() - start
    return out, {"clips": report.n_clips, "frames": report.n_frames, "seconds": round(seconds, 2),
                 "clips_per_s": round(report.n_new / seconds, 2) if report.n_new else None,
                 "frames_per_s": round(report.n_frames / seconds, 1) if report.n_new else None,
                 "workers": workers}


def time_loader(task: UCF11Task, n: int, clock=time.perf_counter) -> dict:
    task.train_batch(0)
    times = []
    for step in range(1, n + 1):
        start = clock()
        batch = task.train_batch(step)
        times.append(clock() - start)
    med = statistics.median(times)
    return {"s_per_batch": med, "batches_per_s": 1.0 / med, "shape": list(batch["frames"].shape)}


def time_step(task: UCF11Task, cell: dict, steps: int, device: torch.device, clock=time.perf_counter) -> dict:
    torch.manual_seed(0)
    model = task.build_model(lambda i, h, **kw: build_cell(cell, i, h, **kw)).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [{k: v.to(device) for k, v in task.train_batch(s).items()} for s in range(3)]
    times = []
    for s in range(steps + 2):  # two warm-up steps (allocations, contraction plans)
        batch = batches[s % len(batches)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        loss, _, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if s >= 2:
            times.append(clock() - start)
    return {"s_per_step": statistics.median(times), "params_total": params,
            "params_input_map": model.rnn.input_map_params()}


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--cache", type=Path, help="a prepared UCF11 cache (default: build a stand-in)")
    clips = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
    parser.add_argument("--clips", type=Path, default=clips, help="real clips for the stand-in cache")
    parser.add_argument("--work", type=Path, help="where the stand-in cache goes (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per cell (median)")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--cells", nargs="*", default=list(CELLS), help=f"subset of {list(CELLS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time, "
                        "steadier on a shared machine (with --threads 1 it approximates one idle core)")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench_ucf11.json"))
    args = parser.parse_args(argv)
    quiet_opencv()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict = {"device": str(device), "threads": torch.get_num_threads(), "clock": args.clock}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.cache is None:
            cache, result["prepare"] = stand_in_cache(args.clips, work, args.workers)
            print(f"prepare (stand-in, real H.264 clips): {result['prepare']}")
        else:
            cache = args.cache
        base = group_config("task", "ucf11", data_dir=str(cache), prefetch=0)
        if args.cache is None:  # the stand-in has 3 groups per class: one per side
            base.update(num_folds=3)
        loaders = {}
        for protocol in ("ye2018", "yang2017", "group"):
            task = UCF11Task(dict(base, protocol=protocol), seed=0)
            task.prepare()
            loaders[protocol] = time_loader(task, args.loader_batches, clock)
            print(f"loader {protocol:9s} {loaders[protocol]['batches_per_s']:8.1f} batches/s "
                  f"(batch {loaders[protocol]['shape']})")
        result["loader"] = loaders
        task = UCF11Task(dict(base, protocol="ye2018"), seed=0)
        task.prepare()
        steps = {}
        for name in args.cells:
            over = {**PAPER_CELL, **CELLS[name]}
            cell = cell_config(over.pop("name"), **over)
            steps[name] = time_step(task, cell, args.steps, device, clock)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            steps[name]["peak_rss_mb_so_far"] = round(rss)
            print(f"{name:42s} {steps[name]['s_per_step']:.4f} s/step  "
                  f"input map {steps[name]['params_input_map']:>10,}  (peak RSS so far {rss:.0f} MB)")
        ref = steps.get("LSTM", next(iter(steps.values())))["s_per_step"]
        ye = loaders["ye2018"]["s_per_batch"]
        print("\n| cell | s/step | LSTM / cell | loader share of a step |\n|---|---|---|---|")
        for name, r in steps.items():
            r["speedup_vs_lstm"] = ref / r["s_per_step"]
            r["loader_fraction"] = ye / r["s_per_step"]
            print(f"| {name} | {r['s_per_step']:.4f} | {r['speedup_vs_lstm']:.1f}x "
                  f"| {100 * r['loader_fraction']:.1f}% |")
        result["train_step"] = steps
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
