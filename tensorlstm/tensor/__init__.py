"""Linear maps from I = prod(in_modes) inputs to J = prod(out_modes) outputs: dense or factorized.

`build_map(fmt, in_modes, out_modes, rank, blocks, mode)` is the one entry point the cells use.
Formats (parameters):  dense I*J | tt sum_k r_{k-1} I_k J_k r_k | bt N (sum_k I_k J_k R + R^d)
| cp R sum_k (I_k + J_k) | tucker prod(ranks) + sum_k mode_k rank_k.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from tensorlstm.errors import UserError
from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.bt import BTMap
from tensorlstm.tensor.cp import CPMap
from tensorlstm.tensor.dense import DenseMap
from tensorlstm.tensor.planning import MODES, FactorizedMap, check_mode
from tensorlstm.tensor.shapes import check_modes, factorize, gate_modes
from tensorlstm.tensor.tt import TTMap
from tensorlstm.tensor.tucker import TuckerMap

FORMATS = ("dense", "tt", "bt", "cp", "tucker")
DEFAULT_RANK = {"tt": 4, "bt": 4, "cp": 8, "tucker": 2}

__all__ = [
    "FORMATS",
    "MODES",
    "LinearMap",
    "FactorizedMap",
    "DenseMap",
    "TTMap",
    "BTMap",
    "CPMap",
    "TuckerMap",
    "build_map",
    "factorize",
    "check_modes",
    "gate_modes",
]


def _check_rank(rank: object, fmt: str) -> int | list[int]:
    if isinstance(rank, bool):
        raise UserError(f"rank must be a positive integer or a list of them, got {rank!r}")
    if isinstance(rank, numbers.Integral):
        if rank < 1:
            raise UserError(f"rank must be >= 1, got {rank} (format {fmt}); e.g. rank=4")
        return int(rank)
    if isinstance(rank, Sequence) and not isinstance(rank, str):
        ranks = []
        for r in rank:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral):
                raise UserError(f"ranks must be integers, got {list(rank)!r} (format {fmt})")
            if r < 1:
                raise UserError(f"every rank must be >= 1, got {list(rank)!r} (format {fmt})")
            ranks.append(int(r))
        return ranks
    raise UserError(f"rank must be a positive integer or a list of them, got {rank!r} (format {fmt})")


def build_map(
    fmt: str,
    in_modes: Sequence[int],
    out_modes: Sequence[int],
    rank: int | Sequence[int] | None = None,
    blocks: int = 1,
    mode: str = "auto",
) -> LinearMap:
    """A bias-free map (..., prod(in_modes)) -> (..., prod(out_modes)) in format `fmt`.

    rank: tt: int r (ranks 1-r-..-r-1) or the d+1 ranks; bt: R (core R^d per block), with `blocks` = N;
    cp: R; tucker: int, d ranks (same for in and out modes) or 2d ranks (in modes, then out modes).
    None takes DEFAULT_RANK. mode: factorized | reconstruct | auto (how forward is computed).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown map format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    check_mode(mode)
    in_list = check_modes(in_modes, math.prod(int(m) for m in in_modes), "in_modes") if in_modes else None
    out_list = (
        check_modes(out_modes, math.prod(int(m) for m in out_modes), "out_modes") if out_modes else None
    )
    if in_list is None or out_list is None:
        raise UserError("in_modes and out_modes must be non-empty lists of positive integers")
    if fmt == "dense":
        return DenseMap(math.prod(in_list), math.prod(out_list), in_list, out_list)
    if len(in_list) != len(out_list):
        raise UserError(
            f"{fmt}: in_modes {'x'.join(map(str, in_list))} and out_modes {'x'.join(map(str, out_list))} "
            f"need the same number of modes"
        )
    r = _check_rank(DEFAULT_RANK[fmt] if rank is None else rank, fmt)
    if fmt == "tt":
        return TTMap(in_list, out_list, r, mode=mode)
    if fmt in ("bt", "cp") and not isinstance(r, int):
        raise UserError(f"{fmt} takes a single rank R, got {r!r}")
    if fmt == "bt":
        if isinstance(blocks, bool) or not isinstance(blocks, numbers.Integral) or blocks < 1:
            raise UserError(f"bt: blocks (the number N of Tucker blocks) must be >= 1, got {blocks!r}")
        return BTMap(in_list, out_list, r, int(blocks), mode=mode)
    if fmt == "cp":
        return CPMap(in_list, out_list, r, mode=mode)
    return TuckerMap(in_list, out_list, r, mode=mode)
