"""Cell registry: every `cell=<name>` config maps to a builder here. Tasks call `build_cell`
through the factory the engine hands them; they never import a cell class directly."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.denormals import set_denormals
from tensorlstm.errors import UserError
from tensorlstm.host_memory import set_host_memory
from tensorlstm.tensor import factorized_formats

# name -> 'module:function'; each function has the signature of `build_cell` minus `cfg['name']` lookup.
# Every registered factorized map format is also an LSTM/GRU cell name (`cell=tt`, `cell=bt`, ...).
CELLS = {
    "lstm": "tensorlstm.cells.recurrent:build_recurrent",
    "gru": "tensorlstm.cells.recurrent:build_recurrent",
    **{fmt: "tensorlstm.cells.recurrent:build_recurrent" for fmt in factorized_formats()},
    "tlstm": "tensorlstm.cells.tlstm:build_tlstm",
    "slstm": "tensorlstm.cells.tlstm:build_slstm",
}


def build_cell(
    cfg: dict,
    input_size: int,
    hidden_size: int,
    in_modes: Sequence[int] | None = None,
    hidden_modes: Sequence[int] | None = None,
) -> RecurrentNet:
    """Build the recurrent net described by a cell config (a plain dict).

    `hidden_size`, `in_modes`, `hidden_modes` are the task's defaults (e.g. UCF11's 8x20x20x18 -> 4x4x4x4);
    explicit values in the cell config win over them. `cfg['host_memory']` (keep, the YAML's default) sets how
    this process's C allocator treats freed memory (tensorlstm/host_memory.py), `cfg['denormals']` (flush) how its
    CPU arithmetic treats denormal floats (tensorlstm/denormals.py).
    """
    set_host_memory(cfg.get("host_memory"))
    set_denormals(cfg.get("denormals"))
    name = cfg.get("name")
    if name not in CELLS:
        raise UserError(f"unknown cell {name!r}; choose one of: {', '.join(sorted(CELLS))}")
    module, fn = CELLS[name].split(":")
    builder = getattr(importlib.import_module(module), fn)
    return builder(cfg, input_size, hidden_size, in_modes=in_modes, hidden_modes=hidden_modes)
