"""Turn a resolved config (a plain dict) into a task and its model; count parameters for `tlstm info`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from torch import nn

from tensorlstm.cells import build_cell
from tensorlstm.cells.base import RecurrentNet
from tensorlstm.engine.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_scheduler
from tensorlstm.errors import UserError
from tensorlstm.tasks import build_task, task_class
from tensorlstm.tasks.base import Task


@dataclass
class CellFactory:
    """The `make_cell` handed to a task: builds nets from the user's cell config and remembers them."""

    cell_cfg: dict
    built: list[RecurrentNet] = field(default_factory=list)

    def __call__(self, input_size: int, hidden_size: int, in_modes=None, hidden_modes=None) -> RecurrentNet:
        net = build_cell(self.cell_cfg, input_size, hidden_size, in_modes=in_modes, hidden_modes=hidden_modes)
        self.built.append(net)
        return net


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(low: int):
    def check(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low, f"an integer >= {low}"
    return check


def _number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
            nullable: bool = False):
    def check(v):
        if v is None and nullable:
            return True, ""
        ok = _is_number(v) and math.isfinite(v)
        ok = ok and (low is None or (v > low if low_open else v >= low))
        ok = ok and (high is None or (v < high if high_open else v <= high))
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        want = "a finite number" + (f" {lo}" if lo else "") + (" and" if lo and hi else "") + (f" {hi}" if hi else "")
        return ok, want + (" or null" if nullable else "")
    return check


def _choice(*values):
    def check(v):
        return v in values, "one of " + ", ".join(map(str, values))
    return check


def _nullable(check):
    def wrapped(v):
        return (True, "") if v is None else (lambda r: (r[0], r[1] + " or null"))(check(v))
    return wrapped


def _rank(v):
    ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (
        isinstance(v, list) and bool(v) and all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in v))
    return ok, "an integer >= 1 (e.g. rank=4) or a list of TT ranks like [4,4,4]"


def _device(v):
    return isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N"


def _fractions(v):
    ok = isinstance(v, list) and len(v) == 3 and all(_is_number(x) and x >= 0 for x in v) and v[0] > 0 and v[1] > 0 \
        and abs(sum(v) - 1) < 1e-6
    return ok, "three fractions train/valid/test that sum to 1, e.g. [0.9,0.05,0.05]"


def _fps(v):
    ok = v is None or v == "auto" or (_is_number(v) and math.isfinite(v) and v > 0)
    return ok, "a frame rate > 0, auto or null"


def _betas(v):
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return ok, "two numbers in [0, 1), e.g. [0.9,0.999]"


# Values that composition accepts (right type) but that would fail late, misleadingly, or do nothing.
# Keys absent from a config (another task's keys) are skipped. Cell/task enums the builders check are left to them.
RULES: list[tuple[str, object]] = [
    ("rank", _rank),
    ("seed", _int_at_least(0)),
    ("threads", _nullable(_int_at_least(1))),
    ("device", _device),
    ("trainer.max_steps", _int_at_least(1)),
    ("trainer.eval_every", _int_at_least(1)),
    ("trainer.log_every", _int_at_least(1)),
    ("trainer.checkpoint_every_s", _number(0, low_open=True, nullable=True)),
    ("trainer.progress_every_s", _number(0, low_open=True)),
    ("trainer.nonfinite", _choice("stop", "skip")),
    ("trainer.clip_norm", _number(0, low_open=True, nullable=True)),
    ("trainer.clip_value", _number(0, low_open=True, nullable=True)),
    ("trainer.stop_at", _number(nullable=True)),
    ("optim.name", _choice(*OPTIMIZERS)),
    ("optim.schedule", _choice(*SCHEDULES)),
    ("optim.decay_params", _choice("all", "matrices", "none")),
    ("optim.lr", _number(0, low_open=True)),
    ("optim.weight_decay", _number(0)),
    ("optim.momentum", _number(0, 1, high_open=True)),
    ("optim.betas", _betas),
    ("optim.warmup_steps", _int_at_least(0)),
    ("optim.step_size", _int_at_least(1)),
    ("optim.gamma", _number(0, low_open=True)),
    ("optim.decay", _number(0)),
    ("optim.min_lr", _number(0)),
    ("logger.mode", _choice("online", "offline", "disabled")),
    ("cell.gate_mode", _choice("first", "last")),
    ("cell.hidden_size", _nullable(_int_at_least(1))),
    ("task.level", _choice("char", "byte")),
    ("task.split", _fractions),
    ("task.embed_size", _nullable(_int_at_least(1))),
    ("task.decoder_hidden_size", _nullable(_int_at_least(1))),
    ("task.vocab_size", _nullable(_int_at_least(2))),
    ("task.valid_max_chars", _nullable(_int_at_least(1))),
    ("task.valid_max_images", _nullable(_int_at_least(1))),
    ("task.max_train", _nullable(_int_at_least(1))),
    ("task.num_samples", _int_at_least(1)),
    ("task.eval_samples", _int_at_least(1)),
    ("task.sample_length", _int_at_least(0)),
    ("task.sample_temperature", _number(0, low_open=True)),
    ("task.num_folds", _int_at_least(2)),
    ("task.test_fraction", _number(0, 1, low_open=True, high_open=True)),
    ("task.valid_fraction", _number(0, 1, low_open=True, high_open=True)),
    ("task.prefetch", _int_at_least(0)),
    ("task.sample_prime", _int_at_least(0)),
    ("task.solved_threshold", _number(0, 1, low_open=True)),
    ("task.num_classes", _int_at_least(2)),
    ("task.l2_classifier", _number(0)),
    ("task.decoder_rank", _rank),
    ("task.fps", _fps),
    ("cell.M", _nullable(_int_at_least(1))),
    ("cell.forget_bias", _number()),
]
# any key of these names, in task or cell: sizes and counts that must be positive, probabilities in [0, 1)
POSITIVE_INTS = ("batch_size", "eval_batch_size", "hidden_size", "valid_size", "test_size", "bptt", "max_frames",
                 "eval_frame_budget", "layers", "d", "blocks")
PROBABILITIES = ("dropout", "recurrent_dropout")


def validate(cfg: dict) -> None:
    """Checks that composition cannot make: one line each, naming the key and what to give instead."""
    rules = list(RULES)
    for group in ("task", "cell"):
        for key, value in (cfg.get(group) or {}).items():
            if key in POSITIVE_INTS and value is not None:
                rules.append((f"{group}.{key}", _int_at_least(1)))
            elif key in PROBABILITIES:
                rules.append((f"{group}.{key}", _number(0, 1, high_open=True)))
            elif key.endswith("_seed"):  # data seeds (split, permutation, binarization): null = the run's seed
                rules.append((f"{group}.{key}", _nullable(_int_at_least(0))))
    for key, check in rules:
        value = _get(cfg, key)
        if value is _MISSING:
            continue
        ok, want = check(value)
        if not ok:
            shown = "null" if value is None else value
            raise UserError(f"{key}={shown}: expected {want}")
    fold, folds = _get(cfg, "task.fold"), _get(cfg, "task.num_folds")
    if fold is not _MISSING and folds is not _MISSING and not (isinstance(fold, int) and 0 <= fold < folds):
        raise UserError(f"task.fold={fold}: expected an integer in 0..{folds - 1} (task.num_folds={folds})")
    if _get(cfg, "cell.name") == "tlstm" and _get(cfg, "cell.norm") == "cn" and not cfg["cell"]["allow_lookahead"] \
            and task_class(cfg["task"]["name"]).scores_next_step:
        raise UserError(f"cell.norm=cn lets the tLSTM's output for step t see inputs up to t+L-1, and task "
                        f"{cfg['task']['name']} scores predictions of the next input: the metric would be invalid; "
                        "use cell.norm=ccn (causal CN) or ln, or add cell.allow_lookahead=true to run it anyway")


def build(cfg: dict, prepare: bool = False) -> tuple[Task, nn.Module, CellFactory]:
    """Task and model from a resolved config. `prepare=True` loads the data first (train, eval), so a model
    may take statistics from it (e.g. UCF11's per-channel means); `tlstm info` builds without data."""
    validate(cfg)
    task = build_task(dict(cfg["task"]), int(cfg["seed"]))
    if prepare:
        task.prepare()
    factory = CellFactory(dict(cfg["cell"]))
    model = task.build_model(factory)
    if not factory.built:
        raise UserError(f"task {cfg['task']['name']} built no recurrent net from cell={cfg['cell']['name']}")
    return task, model, factory


def check_fits(cfg: dict) -> None:
    """Build the model on torch's meta device (no memory, no data): shape and option errors surface before a run
    starts, and a model whose weights, gradients and Adam state (16 bytes a parameter) exceed this machine's
    memory is refused with the figure, instead of an allocation failure deep in torch."""
    import torch

    try:
        with torch.device("meta"):
            _, model, _ = build(cfg)
            build_scheduler(build_optimizer(model, cfg["optim"]), cfg["optim"], int(cfg["trainer"]["max_steps"]))
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - an op without a meta kernel (tLSTM's): the real build checks the rest
        return
    params = sum(p.numel() for p in model.parameters())
    need, have, where = 16 * params, *_memory_of(cfg["device"])
    if have and need > have:
        raise UserError(f"the model has {params:,} parameters: training needs ~{need / 2**30:.0f} GiB (weights, "
                        f"gradients, Adam state), more than the {have / 2**30:.0f} GiB of {where}; lower "
                        "task.hidden_size or use a factorized cell (cell=tt|bt|cp|tucker)")


def _memory_of(device: str) -> tuple[int, str]:
    """Bytes of memory of the device a run would use (0 when unknown), and its name."""
    import os

    import torch

    if device != "cpu" and device != "mps" and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {index}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return 0, "RAM"


def primary_net(model: nn.Module, factory: CellFactory) -> RecurrentNet:
    """The net the user's `cell=` configured: the model's `primary_net()` if it names one (DRAW's encoder),
    else the first net the factory built."""
    pick = getattr(model, "primary_net", None)
    return pick() if callable(pick) else factory.built[0]


def model_info(model: nn.Module, factory: CellFactory) -> dict:
    """Parameter counts of the model and of the user's recurrent layer(s) (`tlstm info`, summary.json)."""
    first = primary_net(model, factory)
    input_map = first.input_map_params()
    dense = first.dense_input_map_params()
    info = {
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_recurrent_layer": sum(p.numel() for net in factory.built for p in net.parameters()),
        "params_input_map": input_map,
        "compression_input_map": round(dense / input_map, 2) if input_map else None,
        "depth": first.describe().get("depth", getattr(first, "delay", 0) + 1),
    }
    kernel = first.describe().get("kernel")  # a dense cell's execution path (cell.kernel)
    if kernel is not None:
        info["kernel"] = kernel
    return info
