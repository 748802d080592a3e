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
from tensorlstm.denormals import set_denormals
from tensorlstm.engine import distributed, provenance
from tensorlstm.engine.build import build, model_info
from tensorlstm.engine.checkpoint import (
    check_resumable,
    find_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from tensorlstm.engine.logger import RunLogger, read_metrics, rewrite_metrics
from tensorlstm.engine.optim import build_optimizer, build_scheduler
from tensorlstm.engine.seeding import resolve_device, rng_state, seed_everything, set_rng_state, set_tf32
from tensorlstm.errors import UserError
from tensorlstm.tasks.common import evaluating

log = logging.getLogger("tensorlstm")


class TrainingStopped(Exception):
    """The run stopped before the end (signal or non-finite loss); the message says where its checkpoint is."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def to_device(obj: Any, device: torch.device, pin: bool = False) -> Any:
    """Tensors to the device; with `pin`, CPU tensors go through pinned memory so that the copy is
    asynchronous (a non_blocking copy from pageable memory is a synchronous one)."""
    if isinstance(obj, torch.Tensor):
        if pin and obj.device.type == "cpu" and obj.dim() > 0:
            obj = obj.pin_memory()
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device, pin) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, pin) for v in obj)
    return obj


def is_better(new: float, best: float | None, higher: bool) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return not math.isnan(new)
    return new > best if higher else new < best


# SIGUSR1/SIGUSR2: what SLURM sends before a time limit or preemption (`#SBATCH --signal=USR1@120`; submitit
# uses USR2). The run saves last.pt, then hands the signal to the handler that was installed before it (submitit's
# requeues the job, which continues with resume=auto), else exits non-zero.
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


class _Signals:
    """SIGINT/SIGTERM/SIGUSR1/SIGUSR2 set a flag; the loop saves last.pt at the next step boundary and exits
    non-zero (or passes a preemption signal on to the previous handler, see PREEMPT_SIGNALS)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old = {}

    def pass_on(self, signum: int) -> None:
        """Call the handler that was there before us (e.g. submitit's checkpoint-and-requeue), if any."""
        old = self._old.get(signum)
        if callable(old):
            old(signum, None)

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM, *PREEMPT_SIGNALS):
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
    # before torch's first parallel op: the intra-op threads it starts then inherit this thread's float mode
    set_denormals(cfg["cell"].get("denormals"))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    seed_everything(int(cfg["seed"]), bool(tcfg["deterministic"]))
    world = distributed.current()
    device = distributed.device_for(resolve_device(cfg["device"]), world)
    set_tf32(bool(tcfg["tf32"]))
    task, model, factory = build(cfg, prepare=True)
    info = model_info(model, factory)
    task.device = device
    model.to(device)
    if world.enabled:
        _check_world(task, world)
        if world.rank:  # other dropout masks per rank (DDP copies rank 0's initial parameters to all)
            torch.manual_seed(int(cfg["seed"]) + world.rank)
    max_steps = int(tcfg["max_steps"])
    optimizer = build_optimizer(model, cfg["optim"])
    scheduler = build_scheduler(optimizer, cfg["optim"], max_steps)
    ckpt_dir = run_dir / "checkpoints"

    amp_dtype = _amp_dtype(tcfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None  # bf16 needs none
    # ---- resume -------------------------------------------------------------------------------------
    step, best, history, carry, skipped, wandb_id = 0, None, [], None, 0, None
    running, train_time, timed_steps, elapsed = [], 0.0, 0, 0.0  # loss since the last record; timing so far
    if world.main:
        remove_stale_temp_files(ckpt_dir)  # of saves a kill interrupted
    resume_from = _resume_checkpoint(cfg["resume"], ckpt_dir)
    if resume_from is not None:
        # on the CPU: RNG states must stay CPU ByteTensors; the optimizer moves its state to the parameters
        ckpt = load_checkpoint(resume_from, map_location="cpu")
        check_resumable(ckpt["config"], cfg, str(resume_from))
        source = ckpt["config"]["compress"]["source"]  # `compress` is no resume key, but its source is
        if source != cfg["compress"]["source"]:
            raise UserError(f"resume: {run_dir} fine-tunes a compression of {source}, not of "
                            f"{cfg['compress']['source']}; start a new run")
        model.load_state_dict(distributed.clean_state_dict(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        ranks = ckpt.get("rng_ranks")
        set_rng_state(ranks[world.rank] if ranks and len(ranks) == world.size else ckpt["rng"])
        if world.rank and not (ranks and len(ranks) == world.size):  # saved by another world size
            torch.manual_seed(int(cfg["seed"]) + world.rank + ckpt["step"])
        step, best, history = ckpt["step"], ckpt["best"], ckpt["history"]
        carry = to_device(distributed.shard_state(ckpt.get("carry"), world), device)
        skipped, wandb_id = ckpt.get("skipped", 0), ckpt.get("wandb_id")
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        progress_state = ckpt.get("progress") or {}
        running = list(progress_state.get("running", []))
        train_time = progress_state.get("train_time", 0.0)
        timed_steps = progress_state.get("timed_steps", 0)
        elapsed = progress_state.get("elapsed", 0.0)
        if world.main:
            print(f"tensorlstm: resuming {run_dir} from {resume_from} at step {step}")
    if world.main:
        # metrics.jsonl holds exactly the records up to the step we start from (none for a fresh start), so
        # records logged after the last checkpoint, a line cut by a kill, or a previous run's test record never
        # appear twice
        rewrite_metrics(run_dir, lambda r: r.get("step", 0) <= step and r.get("split") != "test")
        logger = RunLogger(run_dir, cfg, cfg["logger"], run_id=wandb_id, elapsed=elapsed)
    else:  # rank 0 alone writes the run dir, W&B and checkpoints
        logger = distributed.NullLogger(wandb_id, elapsed)
    code = provenance.extend(ckpt.get("code", []) if resume_from is not None else [], step)
    if resume_from is None:
        log.info("model: %s", json.dumps(info))
    log.info("code: %s", json.dumps(code[-1]))
    # ---- warm start: tlstm compress initialises the model from a dense run (facts kept in every checkpoint) --
    warm = ckpt.get("warm_start") if resume_from is not None else None

    def checkpoint(name: str) -> Path:
        # collective under DDP (every rank calls it): the full-batch carried state and every rank's RNG state
        full_carry = distributed.gather_state(carry, world)
        rngs = distributed.gather_objects(rng_state(), world)
        path = ckpt_dir / name
        if not world.main:
            return path
        return save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rngs[0],
                "rng_ranks": rngs if world.enabled else None,
                "step": step,
                "best": best,
                "history": history,
                "carry": map_state(lambda t: t.cpu(), full_carry),
                "skipped": skipped,
                "scaler": scaler.state_dict() if scaler is not None else None,
                "config": cfg,
                "wandb_id": logger.run_id,
                "info": info,
                "world_size": world.size,
                "progress": {"running": list(running), "train_time": train_time, "timed_steps": timed_steps,
                             "elapsed": logger.elapsed()},
                "warm_start": warm,
                "code": code,
            },
            path,
        )

    def save_last() -> Path:
        nonlocal last_saved
        last_saved = time.monotonic()
        return checkpoint("last.pt")

    if resume_from is None and cfg["compress"]["source"]:
        from tensorlstm.engine.compress import warm_start

        warm = warm_start(cfg, task, model, factory, device)
        checkpoint("last.pt")  # step 0: resuming continues from the compressed model, never from a random init

    train_model = distributed.wrap(model, device, world)  # the DDP wrapper trains; `model` evaluates
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else nullcontext
    eval_every, log_every = int(tcfg["eval_every"]), int(tcfg["log_every"])
    checkpoint_every_s = tcfg["checkpoint_every_s"]
    last_saved = time.monotonic()

    def checkpoint_due() -> bool:  # time-based last.pt between evaluations; under DDP on rank 0's clock
        return bool(checkpoint_every_s) and time.monotonic() - last_saved >= checkpoint_every_s
    progress = Progress(tcfg if world.main else {**tcfg, "progress": False}, step, max_steps)
    exit_code = 0
    model.train()  # every evaluation below runs in tasks.common.evaluating, which puts this mode back
    try:
        with _Signals() as signals, progress.redirect_logging():
            while step < max_steps:
                t0 = time.perf_counter()
                batch = to_device(distributed.shard(task.train_batch(step), world), device, device.type == "cuda")
                with autocast():
                    loss, stats, new_carry = task.loss(train_model, batch, carry if task.carries_state else None)
                if world.enabled:  # one all-reduce: the same decisions everywhere, the global loss and stats
                    due = checkpoint_due()
                    loss, stats, finite, stop_signal, due = _reduce_step(task, batch, loss, stats, signals, due,
                                                                         world, device)
                else:
                    finite = bool(torch.isfinite(loss))
                if not finite and tcfg["nonfinite"] != "skip":
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
                        scale = scaler.get_scale()
                        scaler.step(optimizer)
                        scaler.update()
                        skipped += scaler.get_scale() < scale  # inf/NaN gradients: the scaler skipped the step
                    else:
                        optimizer.step()
                    carry = detach_state(new_carry) if task.carries_state else None
                    running.append(float(getattr(loss, "logged", loss.detach())))
                else:  # skipped: no update, counted in the summary; the schedule still follows the step count
                    skipped += 1
                scheduler.step()
                step += 1
                train_time += time.perf_counter() - t0
                timed_steps += 1
                if running and (step % log_every == 0 or step == max_steps):
                    record = {"step": step, "split": "train", "loss": sum(running) / len(running),
                              "lr": scheduler.get_last_lr()[0],
                              **{k: float(v) for k, v in stats.items()}}
                    running = []
                    logger.log(record)
                    progress.loss = record["loss"]
                progress.update(step)
                if step % eval_every == 0 or step == max_steps:
                    metrics = evaluate(task, model, "valid") if world.main else None
                    metrics = distributed.broadcast(metrics, world)  # rank 0 evaluates; all decide alike
                    record = {"step": step, "split": "valid", **metrics}
                    history.append(record)
                    if world.main:
                        with evaluating(model):
                            images = [p for p in task.artifacts(model, run_dir, step) if str(p).endswith(".png")]
                        logger.log(record, images)
                    log.info("step %d valid %s", step, json.dumps(rounded(metrics)))
                    value = metrics.get(task.metric)
                    if value is not None and is_better(float(value), best, task.higher_is_better):
                        best = float(value)
                        checkpoint("best.pt")
                    save_last()
                    if _reached(value, tcfg["stop_at"], task.higher_is_better):
                        log.info("step %d: valid %s=%s reached trainer.stop_at=%s; stopping", step, task.metric,
                                 value, tcfg["stop_at"])
                        break
                elif due if world.enabled else checkpoint_due():  # one process: decided after the step
                    save_last()  # between evaluations, so that a kill loses at most checkpoint_every_s of work
                if not world.enabled:
                    stop_signal = signals.received
                if stop_signal is not None:
                    path = save_last()
                    name = signal.Signals(stop_signal).name
                    if stop_signal in PREEMPT_SIGNALS:
                        logger.finish(128 + stop_signal)
                        signals.pass_on(stop_signal)  # e.g. submitit requeues the job here
                    raise TrainingStopped(f"{name} at step {step}: saved {path}; resume with resume={run_dir} "
                                          "(or resume=auto)", 128 + stop_signal)
    except TrainingStopped as stop:
        exit_code = stop.exit_code
        raise
    finally:
        progress.close()
        if exit_code:
            logger.finish(exit_code)

    # ---- final test of the best checkpoint ----------------------------------------------------------
    if not world.main:  # rank 0 tests and writes the summary; the others return it
        return distributed.broadcast(None, world)
    best_path = ckpt_dir / "best.pt"
    if best_path.exists():
        model.load_state_dict(distributed.clean_state_dict(load_checkpoint(best_path)["model"]))
    final_valid = history[-1] if history else {}
    test, files = test_evaluation(task, model, run_dir) if tcfg["test_at_end"] else ({}, [])
    if test:
        logger.log({"step": step, "split": "test", **test}, [p for p in files if str(p).endswith(".png")])
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
        "world_size": world.size,
        "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else None,
        "wandb_id": logger.run_id,
        "code": code,
        **task.summarize(history),
        **(warm or {}),
    }
    if warm:  # a warm-started run is a fine-tuning run: its test metric is the metric after fine-tuning
        summary["metric_after_finetune"] = test.get(task.metric)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot = plot_curves(run_dir, summary)
    if plot is not None:
        logger.log_images([plot], step)
    logger.summary(summary)
    logger.finish(0)
    return distributed.broadcast(summary, world)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _amp_dtype(tcfg: dict, device: torch.device) -> torch.dtype | None:
    """trainer.amp with trainer.amp_dtype: bf16 (CUDA and CPU autocast, no loss scaling) or fp16 (CUDA, with
    a GradScaler); None when amp is off, or on a device without autocast for that dtype (then ignored)."""
    if not tcfg["amp"]:
        return None
    name = tcfg["amp_dtype"]
    if name not in AMP_DTYPES:
        raise UserError(f"trainer.amp_dtype={name!r}; choose bf16 or fp16")
    if device.type == "cuda" or (device.type == "cpu" and name == "bf16"):
        return AMP_DTYPES[name]
    log.warning("trainer.amp with %s is not supported on %s; training in fp32", name, device.type)
    return None


def _check_world(task, world: distributed.World) -> None:
    """Carried TBPTT states are gathered into full-batch checkpoints, so their shards must be equal."""
    rows = getattr(task, "batch_size", None)
    if task.carries_state and rows is not None and rows % world.size:
        fit = rows - rows % world.size or world.size
        raise UserError(f"task.batch_size={rows} does not split into {world.size} equal shards; a task that carries "
                        f"its state needs a multiple of the world size (e.g. task.batch_size={fit})")


def _reduce_step(task, batch, loss: torch.Tensor, stats: dict, signals, due: bool, world: distributed.World,
                 device: torch.device):
    """All-reduce (terms, loss x terms, non-finite, signals, checkpoint due, stats x terms) over the ranks.

    Returns the loss to backpropagate, reweighted by world * n_r / n so that DDP's average of the gradients
    is the gradient of the global batch's loss (n_r: the terms of this rank's loss, `Task.loss_terms`), the
    global stats (means over the global batch), and the decisions every rank then takes alike: finite, the
    signal to stop on, and whether rank 0's clock says a time-based checkpoint is due."""
    terms = float(task.loss_terms(batch))
    local = float(loss.detach())
    finite = math.isfinite(local)
    keys = sorted(stats)
    got = signals.received is not None
    values = [terms, local * terms if finite else 0.0, 0.0 if finite else 1.0, float(got),
              float(signals.received or 0), float(due and world.main), *[float(stats[k]) * terms for k in keys]]
    total, loss_sum, nonfinite, n_sig, sig_sum, due_sum, *stat_sums = distributed.all_sum(values, device, world)
    scaled = loss * (world.size * terms / total) if total > 0 else loss * 0.0
    scaled.logged = loss_sum / total if total > 0 else 0.0
    stats = {k: v / total if total > 0 else 0.0 for k, v in zip(keys, stat_sums)}
    sig = None  # a signal on any rank stops every rank (the signal they got, or SIGTERM if they got different ones)
    if n_sig:
        mean = sig_sum / n_sig
        sig = int(mean) if mean == int(mean) and int(mean) in set(signal.Signals) else int(signal.SIGTERM)
    return scaled, stats, nonfinite == 0, sig, due_sum > 0


def _reached(value, target, higher: bool) -> bool:
    """Early stop: the validation metric reached trainer.stop_at (>= when higher is better, else <=)."""
    if value is None or target is None:
        return False
    return float(value) >= float(target) if higher else float(value) <= float(target)


def evaluate(task, model: nn.Module, split: str) -> dict[str, float]:
    """The task's metrics on a split as floats, in eval mode without autograd (tasks.common.evaluating); the
    model's mode is restored after. Validation, the final test, `tlstm compress` and `tlstm eval` all use it."""
    with evaluating(model):
        return {k: float(v) for k, v in task.evaluate(model, split).items()}


def test_evaluation(task, model: nn.Module, run_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """The test split's metrics and the task's test files (e.g. captions_test.json): the end of training and
    `tlstm eval` alike."""
    metrics = evaluate(task, model, "test")
    with evaluating(model):
        return metrics, task.test_artifacts(model, Path(run_dir))


def _clip(model: nn.Module, tcfg: dict) -> None:
    if tcfg["clip_value"] is not None:
        nn.utils.clip_grad_value_(model.parameters(), float(tcfg["clip_value"]))
    if tcfg["clip_norm"] is not None:
        nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["clip_norm"]))


def rounded(metrics: dict) -> dict:
    """Metrics for a human: floats to 4 significant digits (the files keep full precision)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in metrics.items()}


class Progress:
    """What a person watching the run sees. On a terminal: a tqdm bar (steps, one rate, ETA, the last
    training loss) with log lines printed above it. Elsewhere (nohup, SLURM, tee): a plain line every
    trainer.progress_every_s seconds - step, loss, steps/s, ETA - so a cluster log shows the run is alive."""

    def __init__(self, tcfg: dict, step: int, max_steps: int) -> None:
        self.enabled = bool(tcfg["progress"])
        self.every = float(tcfg["progress_every_s"])
        self.max_steps, self.start_step = max_steps, step
        self.loss: float | None = None
        self.t0 = self.last = time.monotonic()
        self.bar = None
        if self.enabled and sys.stderr.isatty() and sys.stdout.isatty():  # `| tee` gets the plain lines
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=step, unit="step", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    def redirect_logging(self):
        """Log lines go through tqdm.write while the bar is shown, so they are never glued to it."""
        if self.bar is None:
            return nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm()

    def update(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if self.loss is not None:
                self.bar.set_postfix_str(f"loss {self.loss:.4g}", refresh=False)
            return
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.every and step < self.max_steps):
            return
        self.last = now
        rate = (step - self.start_step) / max(now - self.t0, 1e-9)
        eta = (self.max_steps - step) / rate if rate > 0 else float("inf")
        loss = f"loss {self.loss:.4g}, " if self.loss is not None else ""
        log.info("step %d/%d (%d%%): %s%.2f steps/s, ETA %s", step, self.max_steps, 100 * step // self.max_steps,
                 loss, rate, _duration(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


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


def plot_curves(run_dir: Path, summary: dict) -> Path | None:
    """loss.png: the training loss and one panel per validation metric (their scales differ: a KL of 3 beside
    an NLL of 190), the best validation step marked and the test value of the best checkpoint shown.
    Title: task, cell and parameter count."""
    records = read_metrics(run_dir)
    train_r = [r for r in records if r.get("split") == "train"]
    valid_r = [r for r in records if r.get("split") == "valid"]
    if not train_r and not valid_r:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (valid_r[-1] if valid_r else {}) if k not in ("step", "split", "wall_time")]
    metric, test = summary["metric"], summary["test"]
    panels = 1 + len(keys)
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows + 0.4), squeeze=False)
    axes = grid.ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes[0].plot([r["step"] for r in train_r], [r["loss"] for r in train_r], lw=1)
    axes[0].set(xlabel="step (optimizer updates)", ylabel="loss (nats; the training objective)",
                title="training loss")
    best_step = None
    if summary["best_valid"] is not None:
        best_step = next((r["step"] for r in valid_r if r.get(metric) == summary["best_valid"]), None)
    for ax, key in zip(axes[1:], keys):
        points = [(r["step"], r[key]) for r in valid_r if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=1, label="valid")
        if best_step is not None:
            ax.axvline(best_step, color="tab:green", ls="--", lw=1, label=f"best {metric} (step {best_step:,})")
        if isinstance(test.get(key), (int, float)):
            ax.axhline(test[key], color="tab:red", ls=":", lw=1, label=f"test {test[key]:.4g}")
        ax.set(xlabel="step (optimizer updates)", title=f"validation {key}")
        ax.legend(fontsize=7)
    params = summary.get("params_total")
    fig.suptitle(f"{summary['task']} / {summary['cell']}" + (f", {params:,} parameters" if params else ""))
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
