"""The training loop: BPTT (full or truncated across batches), clipping, evaluation on the validation
split, model selection on it, checkpoints, resume, signals, and the final test of the best checkpoint.

Read top to bottom: `train(cfg, run_dir)` is the whole story.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensorlstm.cells.base import detach_state, map_state
from tensorlstm.engine.build import build, model_info
from tensorlstm.engine.checkpoint import check_resumable, find_checkpoint, load_checkpoint, save_checkpoint
from tensorlstm.engine.logger import RunLogger, read_metrics
from tensorlstm.engine.optim import build_optimizer, build_scheduler
from tensorlstm.engine.seeding import resolve_device, rng_state, seed_everything, set_rng_state
from tensorlstm.errors import UserError

log = logging.getLogger("tensorlstm")


class TrainingStopped(Exception):
    """The run stopped before the end (signal or non-finite loss); the message says where its checkpoint is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def is_better(new: float, best: float | None, higher: bool) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return not math.isnan(new)
    return new > best if higher else new < best


class _Signals:
    """SIGINT/SIGTERM set a flag; the loop saves last.pt at the next step boundary and exits non-zero."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(cfg: dict, run_dir: Path) -> dict:
    """Train (or resume) the run described by the resolved config `cfg` in `run_dir`; return the summary."""
    run_dir = Path(run_dir)
    tcfg = cfg["trainer"]
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    seed_everything(int(cfg["seed"]), bool(tcfg.get("deterministic", True)))
    device = resolve_device(cfg.get("device", "auto"))
    task, model, factory = build(cfg, prepare=True)
    info = model_info(model, factory)
    task.device = device
    model.to(device)
    max_steps = int(tcfg["max_steps"])
    optimizer = build_optimizer(model, cfg["optim"])
    scheduler = build_scheduler(optimizer, cfg["optim"], max_steps)
    ckpt_dir = run_dir / "checkpoints"

    use_amp = bool(tcfg.get("amp")) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    # ---- resume -------------------------------------------------------------------------------------
    step, best, history, carry, skipped, wandb_id = 0, None, [], None, 0, None
    resume_from = _resume_checkpoint(cfg.get("resume"), ckpt_dir)
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, map_location=device)
        check_resumable(ckpt["config"], cfg, str(resume_from))
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        step, best, history = ckpt["step"], ckpt["best"], ckpt["history"]
        carry, skipped, wandb_id = to_device(ckpt.get("carry"), device), ckpt.get("skipped", 0), ckpt.get("wandb_id")
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _truncate_metrics(run_dir, step)
        print(f"tensorlstm: resuming {run_dir} from {resume_from} at step {step}")

    logger = RunLogger(run_dir, cfg, cfg.get("logger", {}), run_id=wandb_id)
    if resume_from is None:
        log.info("model: %s", json.dumps(info))

    def checkpoint(name: str) -> Path:
        return save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "step": step,
                "best": best,
                "history": history,
                "carry": map_state(lambda t: t.cpu(), carry),
                "skipped": skipped,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "config": cfg,
                "wandb_id": logger.run_id,
                "info": info,
            },
            ckpt_dir / name,
        )

    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp else nullcontext
    eval_every, log_every = int(tcfg["eval_every"]), int(tcfg.get("log_every", 50))
    progress = _progress(tcfg, step, max_steps)
    train_time, timed_steps, running = 0.0, 0, []
    exit_code = 0
    try:
        with _Signals() as signals:
            while step < max_steps:
                t0 = time.perf_counter()
                model.train()
                batch = to_device(task.train_batch(step), device)
                with autocast():
                    loss, stats, new_carry = task.loss(model, batch, carry if task.carries_state else None)
                finite = bool(torch.isfinite(loss))
                if not finite and tcfg.get("nonfinite", "stop") != "skip":
                    last = ckpt_dir / "last.pt"
                    raise TrainingStopped(
                        f"non-finite loss ({loss.item()}) at step {step}; the last good checkpoint is "
                        f"{last if last.exists() else 'not written yet'}; lower optim.lr, set "
                        "trainer.clip_norm, or trainer.nonfinite=skip", 1)
                optimizer.zero_grad(set_to_none=True)
                if finite:
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    _clip(model, tcfg)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    carry = detach_state(new_carry) if task.carries_state else None
                    running.append(float(loss.detach()))
                else:  # skipped: no update, counted in the summary; the schedule still follows the step count
                    skipped += 1
                scheduler.step()
                step += 1
                train_time += time.perf_counter() - t0
                timed_steps += 1
                progress.update(1)
                if running and (step % log_every == 0 or step == max_steps):
                    record = {"step": step, "split": "train", "loss": sum(running) / len(running),
                              "lr": scheduler.get_last_lr()[0],
                              **{k: float(v) for k, v in stats.items()}}
                    running = []
                    logger.log(record)
                    progress.set_postfix(loss=f"{record['loss']:.4f}",
                                         steps_per_s=f"{timed_steps / max(train_time, 1e-9):.1f}")
                if step % eval_every == 0 or step == max_steps:
                    metrics = _evaluate(task, model, "valid")
                    record = {"step": step, "split": "valid", **metrics}
                    history.append(record)
                    images = [p for p in task.artifacts(model, run_dir, step) if str(p).endswith(".png")]
                    logger.log(record, images)
                    log.info("step %d valid %s", step, json.dumps(metrics))
                    value = metrics.get(task.metric)
                    if value is not None and is_better(float(value), best, task.higher_is_better):
                        best = float(value)
                        checkpoint("best.pt")
                    checkpoint("last.pt")
                    if _reached(value, tcfg.get("stop_at"), task.higher_is_better):
                        log.info("step %d: valid %s=%s reached trainer.stop_at=%s; stopping", step, task.metric,
                                 value, tcfg["stop_at"])
                        break
                if signals.received is not None:
                    path = checkpoint("last.pt")
                    name = signal.Signals(signals.received).name
                    raise TrainingStopped(f"{name} at step {step}: saved {path}; resume with resume={run_dir}",
                                          128 + signals.received)
    except TrainingStopped as stop:
        exit_code = stop.exit_code
        raise
    finally:
        progress.close()
        if exit_code:
            logger.finish(exit_code)

    # ---- final test of the best checkpoint ----------------------------------------------------------
    best_path = ckpt_dir / "best.pt"
    if best_path.exists():
        model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    final_valid = history[-1] if history else {}
    test = _evaluate(task, model, "test") if tcfg.get("test_at_end", True) else {}
    if test:
        logger.log({"step": step, "split": "test", **test})
    summary = {
        "task": cfg["task"]["name"],
        "cell": cfg["cell"]["name"],
        "steps": step,
        "metric": task.metric,
        "best_valid": best,
        "valid": {k: v for k, v in final_valid.items() if k not in ("step", "split")},
        "test": test,
        **{k: v for k, v in test.items()},  # the task's metrics by name at top level (contract)
        **info,
        "seconds_per_step": round(train_time / max(timed_steps, 1), 5),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "nonfinite_skipped": skipped,
        "device": str(device),
        "wandb_id": logger.run_id,
        **task.summarize(history),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot_curves(run_dir)
    logger.summary(summary)
    logger.finish(0)
    return summary


def _reached(value, target, higher: bool) -> bool:
    """Early stop: the validation metric reached trainer.stop_at (>= when higher is better, else <=)."""
    if value is None or target is None:
        return False
    return float(value) >= float(target) if higher else float(value) <= float(target)


def _evaluate(task, model: nn.Module, split: str) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return {k: float(v) for k, v in task.evaluate(model, split).items()}


def _clip(model: nn.Module, tcfg: dict) -> None:
    if tcfg.get("clip_value") is not None:
        nn.utils.clip_grad_value_(model.parameters(), float(tcfg["clip_value"]))
    if tcfg.get("clip_norm") is not None:
        nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["clip_norm"]))


def _progress(tcfg: dict, step: int, max_steps: int):
    from tqdm import tqdm

    quiet = not tcfg.get("progress", True) or not sys.stderr.isatty()
    return tqdm(total=max_steps, initial=step, disable=quiet, unit="step", dynamic_ncols=True)


def _resume_checkpoint(resume: str | None, ckpt_dir: Path) -> Path | None:
    """The checkpoint to resume from. The CLI has already pointed the run dir at the run to continue."""
    if resume in (None, "", "none", "null"):
        return None
    if str(resume).endswith(".pt"):  # an explicit checkpoint file (e.g. best.pt) wins over last.pt
        return find_checkpoint(resume)
    last = ckpt_dir / "last.pt"
    if last.exists():
        return last
    if resume == "auto":
        return None  # nothing to continue: a fresh run
    raise UserError(f"resume={resume}: no checkpoints/last.pt there; pass a run dir of tlstm train or resume=auto")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    records = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _plot_curves(run_dir: Path) -> None:
    """loss.png: training loss and the validation metric against steps."""
    records = read_metrics(run_dir)
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_r = [r for r in records if r.get("split") == "train"]
    valid_r = [r for r in records if r.get("split") == "valid"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot([r["step"] for r in train_r], [r["loss"] for r in train_r])
    axes[0].set(xlabel="step", ylabel="training loss", title="training loss")
    keys = [k for k in (valid_r[0] if valid_r else {}) if k not in ("step", "split", "wall_time")]
    for k in keys:
        axes[1].plot([r["step"] for r in valid_r], [r[k] for r in valid_r], marker="o", label=k)
    axes[1].set(xlabel="step", title="validation")
    if keys:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)
