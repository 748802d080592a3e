"""Turn a resolved config (a plain dict) into a task and its model; count parameters for `tlstm info`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tensorlstm.cells import build_cell
from tensorlstm.cells.base import RecurrentNet
from tensorlstm.errors import UserError
from tensorlstm.tasks import build_task
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


def validate(cfg: dict) -> None:
    """Checks that composition cannot make: one line each, what to do."""
    rank = cfg.get("rank")
    if rank is not None and not isinstance(rank, (list, tuple)) and int(rank) < 1:
        raise UserError(f"rank={rank} must be >= 1 (e.g. rank=4)")
    steps = cfg["trainer"]["max_steps"]
    if int(steps) < 1:
        raise UserError(f"trainer.max_steps={steps} must be >= 1")
    if int(cfg["trainer"]["eval_every"]) < 1:
        raise UserError(f"trainer.eval_every={cfg['trainer']['eval_every']} must be >= 1")


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
    return info
