"""A CPU-sized version of He et al. (2017)'s addition and memorization comparison: sLSTM vs tLSTM over L.

The paper's metric is the number of training samples seen until the validation sequence accuracy first reaches
99% (samples_to_99). Here the tasks are shrunk so that a laptop-class CPU can run the whole grid in minutes:
addition of two 2-digit integers and memorization of 5 symbols from 10 (the paper: 15 digits; 20 symbols from
65). Every run is `tlstm train` with `threads=1`; a run stops as soon as validation reaches 99%
(`trainer.stop_at`), else at --max-steps, and reports its best validation sequence accuracy.

    .venv/bin/python scripts/run_he2017_small.py                 # the default grid, 2 runs at a time
    .venv/bin/python scripts/run_he2017_small.py --jobs 1 --max-steps 2000 --only memorization

Writes outputs/he2017_small/results.json and table.md (and prints the table). A run whose result.json
exists is not run again, so an interrupted grid continues where it stopped. CPU seconds are the child's own
user + system time (os.wait4), so they do not depend on how busy the machine is; wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TASKS = {  # shrunk protocols (see the module docstring)
    "addition": ["task=addition", "task.digits=2"],
    "memorization": ["task=memorization", "task.length=5", "task.symbols=10"],
}


def models(width: int, depths: list[int]) -> list[tuple[str, int, list[str]]]:
    """(label, L, overrides): sLSTM and 2D tLSTM at every depth, plus one 3D tLSTM+LN."""
    grid = []
    for L in depths:
        grid.append(("sLSTM", L, ["cell=slstm", f"cell.layers={L}", f"cell.hidden_size={width}"]))
    for L in depths:
        grid.append(("2D tLSTM", L, ["cell=tlstm", f"cell.P={L}", f"cell.M={width}"]))
    grid.append(("3D tLSTM+LN", 2, ["cell=tlstm", "cell.P=[2,2]", f"cell.M={width}", "cell.norm=ln"]))
    return grid


@dataclass
class Run:
    task: str
    model: str
    L: int
    seed: int
    args: list[str]
    run_dir: Path
    proc: subprocess.Popen | None = None
    log: object = None
    started: float = 0.0
    result: dict = field(default_factory=dict)


def valid_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("split") == "valid":
            records.append(record)
    return records


def _name(run: Run) -> str:
    return f"{run.task:12s} {run.model:12s} L={run.L} seed={run.seed}"


def start(run: Run) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "tensorlstm.cli", "train", *run.args, f"hydra.run.dir={run.run_dir}"]
    run.log = open(run.run_dir / "stdout.log", "w")  # noqa: SIM115 (closed in finish)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=run.log, stderr=subprocess.STDOUT, env=env)
    run.started = time.perf_counter()
    print(f"[start] {_name(run)}: {' '.join(run.args)}", flush=True)


def finish(run: Run, batch_size: int, threshold: float, rusage) -> None:
    run.log.close()
    records = valid_records(run.run_dir)
    solved = next((r for r in records if r.get("seq_accuracy", 0.0) >= threshold), None)
    text = (run.run_dir / "stdout.log").read_text()
    match = re.search(r"model: (\{.*\})", text)
    info = json.loads(match.group(1)) if match else {}
    steps = max((r["step"] for r in records), default=0)
    cpu = rusage.ru_utime + rusage.ru_stime
    run.result = {
        "task": run.task, "model": run.model, "L": run.L, "seed": run.seed, "depth": info.get("depth"),
        "params": info.get("params_recurrent_layer"),
        "samples_to_99": solved["step"] * batch_size if solved else None,
        "best_valid_seq_accuracy": max((r.get("seq_accuracy", 0.0) for r in records), default=None),
        "steps": steps, "cpu_s": round(cpu, 1), "wall_s": round(time.perf_counter() - run.started, 1),
        "cpu_ms_per_step": round(1e3 * cpu / steps, 1) if steps else None,
        "run_dir": str(run.run_dir),
    }
    (run.run_dir / "result.json").write_text(json.dumps(run.result, indent=2))
    print(f"[done]  {_name(run)}: {json.dumps(run.result)}", flush=True)


def render(results: list[dict], args) -> str:
    """One row per (task, model, L); per-seed values separated by ' / ' in seed order."""
    head = (f"CPU-scale He 2017 comparison: addition of 2-digit integers, memorization of 5 symbols from 10; "
            f"width {args.width}, batch {args.batch_size}, Adam {args.lr}, at most {args.max_steps} steps, "
            f"validation ({args.valid_size} sequences) every {args.eval_every} steps; seeds "
            f"{' / '.join(str(s) for s in args.seeds)}.\n\n")
    lines = ["| task | model | L | params | samples to 99% | best valid seq acc | steps | CPU ms/step |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["task"], r["model"], r["L"]), []).append(r)
    for (task, model, L), runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        samples = " / ".join("-" if r["samples_to_99"] is None else f"{r['samples_to_99']:,}" for r in runs)
        best = " / ".join(f"{r['best_valid_seq_accuracy']:.3f}" for r in runs)
        steps = " / ".join(str(r["steps"]) for r in runs)
        ms = " / ".join(str(r["cpu_ms_per_step"]) for r in runs)
        params = f"{runs[0]['params']:,}" if runs[0]["params"] else "-"
        lines.append(f"| {task} | {model} | {L} | {params} | {samples} | {best} | {steps} | {ms} |")
    return head + "\n".join(lines) + "\n\n'-': 99% not reached within the step limit.\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--width", type=int, default=32, help="tLSTM M = sLSTM hidden size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--valid-size", type=int, default=500)
    parser.add_argument("--threshold", type=float, default=0.99)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--cpu-budget", type=float, default=1500.0, help="CPU seconds, then skip")
    parser.add_argument("--only", choices=sorted(TASKS), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1234, 1235])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "he2017_small")
    args = parser.parse_args()

    common = [f"task.batch_size={args.batch_size}", f"task.valid_size={args.valid_size}",
              f"task.test_size={args.valid_size}", f"optim.lr={args.lr}",
              f"trainer.max_steps={args.max_steps}",
              f"trainer.eval_every={args.eval_every}", f"trainer.stop_at={args.threshold}",
              "trainer.clip_norm=1.0", "trainer.progress=false",
              "trainer.test_at_end=false", "logger.mode=disabled", "threads=1"]
    queue, done = [], []
    for seed in args.seeds:
        for task, task_args in TASKS.items():
            if args.only and task != args.only:
                continue
            for label, L, cell_args in models(args.width, args.depths):
                slug = f"{label.replace(' ', '_').replace('+', '_')}_L{L}"
                run = Run(task, label, L, seed, [*task_args, *cell_args, *common, f"seed={seed}"],
                          args.out / task / slug / f"seed{seed}")
                if (run.run_dir / "result.json").is_file():  # finished earlier: reuse
                    run.result = json.loads((run.run_dir / "result.json").read_text())
                    done.append(run)
                else:
                    queue.append(run)

    running: dict[int, Run] = {}
    cpu_used = 0.0  # of this invocation
    while queue or running:
        while queue and len(running) < args.jobs:
            if cpu_used >= args.cpu_budget:
                for run in queue:
                    print(f"[skip]  {_name(run)}: CPU budget spent", flush=True)
                queue.clear()
                break
            run = queue.pop(0)
            start(run)
            running[run.proc.pid] = run
        time.sleep(2.0)
        for pid, run in list(running.items()):
            waited, _, rusage = os.wait4(pid, os.WNOHANG)  # reap here (not Popen.poll) to get its CPU time
            if waited == pid:
                run.proc.returncode = 0
                finish(run, args.batch_size, args.threshold, rusage)
                cpu_used += run.result["cpu_s"]
                done.append(running.pop(pid))

    results = [run.result for run in done]
    results.sort(key=lambda r: (r["task"], r["model"], r["L"], r["seed"]))
    args.out.mkdir(parents=True, exist_ok=True)
    cpu_total = sum(r["cpu_s"] for r in results)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "cpu_s_total": round(cpu_total, 1), "runs": results},
                                                      indent=2))
    table = render(results, args)
    (args.out / "table.md").write_text(table)
    print(table)
    print(f"CPU: {cpu_used:.0f} s now, {cpu_total:.0f} s over all runs; wrote {args.out / 'table.md'}")


if __name__ == "__main__":
    main()
