"""Tucker map over the 2d modes, as in Tjandra 2018.

W[(i_1..i_d), (j_1..j_d)] = sum_{a, b} G[a_1..a_d, b_1..b_d] prod_k U_k[i_k, a_k] prod_k V_k[j_k, b_k],
core G in R^{ra_1 x .. x ra_d x rb_1 x .. x rb_d}, U_k in R^{I_k x ra_k}, V_k in R^{J_k x rb_k}.
Parameters: prod(ranks) + sum_k I_k ra_k + sum_k J_k rb_k.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.errors import UserError
from tensorlstm.tensor.factorized import FactorizedMap
from tensorlstm.tensor.registry import register_format


def tucker_ranks(rank: int | Sequence[int], d: int) -> tuple[list[int], list[int]]:
    """int r -> r for all 2d modes; a list of 2d -> (in ranks, out ranks); a list of d -> same for both."""
    if isinstance(rank, int):
        return [rank] * d, [rank] * d
    ranks = [int(r) for r in rank]
    if len(ranks) == 2 * d:
        return ranks[:d], ranks[d:]
    if len(ranks) == d:
        return list(ranks), list(ranks)
    raise UserError(
        f"tucker ranks: give one int, d = {d} ranks (used for the in and the out modes) or 2d = {2 * d} "
        f"ranks (in modes then out modes), got {len(ranks)}: {'-'.join(map(str, ranks))}"
    )


@register_format("tucker", default_rank=2)
class TuckerMap(FactorizedMap):
    """rank: int, d ranks (same for in and out modes) or 2d ranks (in modes, then out modes): `tucker_ranks`."""

    def __init__(
        self,
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: int | Sequence[int] = 2,
        mode: str = "auto",
    ):
        super().__init__(in_modes, out_modes, mode)
        d = len(self.in_modes)
        self.in_ranks, self.out_ranks = tucker_ranks(rank, d)
        a = [self.new_index() for _ in range(d)]
        b = [self.new_index() for _ in range(d)]
        self.core = nn.Parameter(torch.empty(*self.in_ranks, *self.out_ranks))
        names, subs = ["core"], ["".join(a) + "".join(b)]
        for k in range(d):
            self.register_parameter(
                f"in_factor{k}", nn.Parameter(torch.empty(self.in_modes[k], self.in_ranks[k]))
            )
            names.append(f"in_factor{k}")
            subs.append(self.in_subs[k] + a[k])
        for k in range(d):
            self.register_parameter(
                f"out_factor{k}", nn.Parameter(torch.empty(self.out_modes[k], self.out_ranks[k]))
            )
            names.append(f"out_factor{k}")
            subs.append(self.out_subs[k] + b[k])
        self.set_factors(names, subs, n_terms=math.prod(self.in_ranks) * math.prod(self.out_ranks))

    def forward_chains(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """x absorbs the in-mode factors one by one (any order for d <= 4, else by shrink ratio), then
        the core and the out-mode factors: one by one, or merged (core x out factors); or merge the
        in-mode factors too (a Kronecker product: x then needs only GEMMs)."""
        d = len(self.in_modes)
        by_ratio = sorted(range(d), key=lambda k: self.in_ranks[k] / self.in_modes[k])
        in_orders = itertools.permutations(range(d)) if d <= 4 else [by_ratio]
        outs = tuple(range(1 + d, 1 + 2 * d))
        chains = []
        for order in in_orders:
            head = tuple((1 + k,) for k in order)
            chains.append(head + ((0,),) + tuple((k,) for k in outs))
            chains.append(head + ((0, *outs),))
            chains.append(head + ((0,), outs))
        ins = tuple(range(1, 1 + d))  # Kronecker products of the factors: two or three GEMMs
        chains += [(ins, (0, *outs)), ((*ins, 0), outs), (ins, (0,), outs)]
        # the in-mode factors merged into the core (a small rebuild: the core's size), then the out-mode factors
        # one by one: x then needs one GEMM of K = prod(in_modes) and small products on the output
        grow = sorted(outs, key=lambda k: self.out_modes[k - 1 - d] / self.out_ranks[k - 1 - d])
        chains += [((*ins, 0), *((k,) for k in grow)), ((*ins, 0), tuple(grow[:-1]), (grow[-1],))]
        # two adjacent in-mode factors merged first (a Kronecker product of two small factors): x meets them in
        # one plain GEMM with K = I_k I_(k+1) that shrinks it by I_k I_(k+1) / (r_k r_(k+1)), the other in-mode
        # factors follow by shrink ratio, then the core and the out-mode factors (one by one, merged, or the
        # non-growing ones merged and the growing one last)
        for k in range(d - 1):
            rest = tuple((1 + j,) for j in by_ratio if j not in (k, k + 1))
            head = ((1 + k, 2 + k),) + rest
            chains += [head + ((0,),) + tuple((j,) for j in outs), head + ((0, *outs),), head + ((0,), outs),
                       head + ((0,), tuple(grow[:-1]), (grow[-1],))]
        return tuple(chains)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ranks={'-'.join(map(str, self.in_ranks + self.out_ranks))}"
