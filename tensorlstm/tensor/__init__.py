"""Linear maps from I = prod(in_modes) inputs to J = prod(out_modes) outputs: dense or factorized.

`build_map(fmt, in_modes, out_modes, rank, blocks, forward)` is the one entry point the cells use. Each format is one
class registered with `@register_format` (tensor/registry.py); importing its module below registers it, and
everything else (cells, bench, DRAW's decoder shorthand) reads the format list from the registry.
Formats (parameters):  dense I*J | tt sum_k r_{k-1} I_k J_k r_k | bt N (sum_k I_k J_k R + R^d)
| cp R sum_k (I_k + J_k) | tucker prod(ranks) + sum_k mode_k rank_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tensorlstm.errors import UserError
from tensorlstm.tensor.base import LinearMap

# importing a format's module registers it; the order here is the order of FORMATS (and of every listing)
# isort: off
from tensorlstm.tensor.dense import DenseMap
from tensorlstm.tensor.tt import TTMap
from tensorlstm.tensor.bt import BTMap
from tensorlstm.tensor.cp import CPMap
from tensorlstm.tensor.tucker import TuckerMap

# isort: on
from tensorlstm.tensor.factorized import MODES, FactorizedMap, check_mode
from tensorlstm.tensor.registry import MAP_FORMATS, factorized_formats, map_format, register_format
from tensorlstm.tensor.shapes import check_modes, factorize, gate_modes

FORMATS = tuple(MAP_FORMATS)
DEFAULT_RANK = {name: cls.default_rank for name, cls in MAP_FORMATS.items() if cls.default_rank is not None}

__all__ = [
    "FORMATS",
    "MODES",
    "MAP_FORMATS",
    "LinearMap",
    "FactorizedMap",
    "DenseMap",
    "TTMap",
    "BTMap",
    "CPMap",
    "TuckerMap",
    "build_map",
    "factorize",
    "factorized_formats",
    "check_modes",
    "gate_modes",
    "map_format",
    "register_format",
]


def build_map(
    fmt: str,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    rank: int | Sequence[int] | None = None,
    blocks: int = 1,
    forward: str = "auto",
    **renamed,
) -> LinearMap:
    """A bias-free map (..., prod(in_modes)) -> (..., prod(out_modes)) in format `fmt`.

    rank: tt: int r (ranks 1-r-..-r-1) or the d+1 ranks; bt: R (core R^d per block), with `blocks` = N;
    cp: R; tucker: int, d ranks (same for in and out modes) or 2d ranks (in modes, then out modes).
    None takes the format's default rank. forward: factorized | reconstruct | auto (how x W is computed, as
    cell.forward; the keyword was `mode`, which is refused with a hint).
    """
    if "mode" in renamed:
        raise TypeError(f"build_map(mode=...) is now build_map(forward=...): write forward={renamed['mode']!r}")
    if renamed:
        raise TypeError(f"build_map() got an unexpected keyword argument {next(iter(renamed))!r}")
    mode = forward
    cls = map_format(fmt)
    check_mode(mode)
    in_list = check_modes(in_modes, math.prod(int(m) for m in in_modes), "in_modes") if in_modes else None
    out_list = (
        check_modes(out_modes, math.prod(int(m) for m in out_modes), "out_modes") if out_modes else None
    )
    if in_list is None or out_list is None:
        raise UserError("in_modes and out_modes must be non-empty lists of positive integers")
    return cls.from_spec(in_list, out_list, cls.default_rank if rank is None else rank, blocks=blocks, mode=mode)
