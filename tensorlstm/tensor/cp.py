"""CP (canonical polyadic) map, as in Tjandra 2018.

W[(i_1..i_d), (j_1..j_d)] = sum_r prod_k A_k[i_k, r] prod_k B_k[j_k, r],
A_k in R^{I_k x R}, B_k in R^{J_k x R}: a rank-R CP of the 2d-way tensor.
Parameters: R * sum_k (I_k + J_k).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.tensor.planning import FactorizedMap


class CPMap(FactorizedMap):
    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], rank: int = 8, mode: str = "auto"):
        super().__init__(in_modes, out_modes, mode)
        self.rank = int(rank)
        r = self.new_index()
        names, subs = [], []
        for k, size in enumerate(self.in_modes):
            self.register_parameter(f"in_factor{k}", nn.Parameter(torch.empty(size, self.rank)))
            names.append(f"in_factor{k}")
            subs.append(self.in_subs[k] + r)
        for k, size in enumerate(self.out_modes):
            self.register_parameter(f"out_factor{k}", nn.Parameter(torch.empty(size, self.rank)))
            names.append(f"out_factor{k}")
            subs.append(self.out_subs[k] + r)
        self.set_factors(names, subs, n_terms=self.rank)

    def forward_chains(self) -> tuple[tuple[int, ...], ...]:
        """x absorbs the in-mode factors (largest modes first, or any order for d <= 4), then the out ones."""
        d = len(self.in_modes)
        ins = sorted(range(d), key=lambda k: -self.in_modes[k])
        in_orders = itertools.permutations(range(d)) if d <= 4 else [ins, ins[::-1]]
        outs = sorted(range(d), key=lambda k: self.out_modes[k])
        return tuple((0, *(1 + k for k in o), *(1 + d + k for k in outs)) for o in in_orders)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", R={self.rank}"
