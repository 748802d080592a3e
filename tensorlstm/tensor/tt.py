"""Tensor-train (TT-matrix, Novikov 2015) map.

W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_d[:, i_d, j_d, :],
cores G_k in R^{r_{k-1} x I_k x J_k x r_k}, r_0 = r_d = 1.
Parameters: sum_k r_{k-1} I_k J_k r_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.errors import UserError
from tensorlstm.tensor.factorized import FactorizedMap
from tensorlstm.tensor.registry import register_format


def tt_ranks(rank: int | Sequence[int], d: int) -> list[int]:
    """int r -> [1, r, ..., r, 1]; an explicit list must have d+1 entries starting and ending with 1."""
    if isinstance(rank, int):
        return [1] + [rank] * (d - 1) + [1]
    ranks = [int(r) for r in rank]
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise UserError(
            f"tt ranks must be d+1 = {d + 1} numbers starting and ending with 1 (e.g. "
            f"{'-'.join(map(str, [1] + [4] * (d - 1) + [1]))}), got {'-'.join(map(str, ranks))}"
        )
    return ranks


def interval_orders(d: int) -> list[list[int]]:
    """All orders of 0..d-1 in which the visited modes always form one contiguous interval."""
    orders = []

    def grow(lo: int, hi: int, acc: list[int]) -> None:
        if len(acc) == d:
            orders.append(acc)
            return
        if lo > 0:
            grow(lo - 1, hi, acc + [lo - 1])
        if hi < d - 1:
            grow(lo, hi + 1, acc + [hi + 1])

    for start in range(d):
        grow(start, start, [start])
    return orders


@register_format("tt", default_rank=4)
class TTMap(FactorizedMap):
    """rank: int r (ranks 1-r-..-r-1) or the d+1 ranks (checked by `tt_ranks`)."""

    def __init__(
        self,
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: int | Sequence[int] = 4,
        mode: str = "auto",
    ):
        super().__init__(in_modes, out_modes, mode)
        d = len(self.in_modes)
        self.ranks = tt_ranks(rank, d)
        rank_subs = [self.new_index() for _ in self.ranks]
        names, subs = [], []
        for k in range(d):
            name = f"core{k}"
            shape = (self.ranks[k], self.in_modes[k], self.out_modes[k], self.ranks[k + 1])
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            names.append(name)
            subs.append(rank_subs[k] + self.in_subs[k] + self.out_subs[k] + rank_subs[k + 1])
        self.set_factors(names, subs, n_terms=math.prod(self.ranks))

    def forward_chains(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """x absorbs the cores growing an interval (other orders make larger intermediates); the
        first two cores may be merged first, or all cores merged into two halves (partial rebuilds:
        fewer passes, more FLOPs)."""
        d = len(self.in_modes)
        chains = []
        for order in interval_orders(d):
            chains.append(tuple((k,) for k in order))
            if len(order) > 1:
                chains.append((tuple(sorted(order[:2])),) + tuple((k,) for k in order[2:]))
        for split in range(1, d):  # two partial rebuilds: the cores before and after `split`
            head, tail = tuple(range(split)), tuple(range(split, d))
            chains += [(tail, head), (head, tail)]
        return tuple(chains)

    def reconstruct_chains(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(order) for order in interval_orders(len(self.in_modes)))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={'-'.join(map(str, self.ranks))}"
