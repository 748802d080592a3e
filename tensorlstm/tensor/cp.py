"""CP (canonical polyadic) map, as in Tjandra 2018.

W[(i_1..i_d), (j_1..j_d)] = sum_r prod_k A_k[i_k, r] prod_k B_k[j_k, r],
A_k in R^{I_k x R}, B_k in R^{J_k x R}: a rank-R CP of the 2d-way tensor.
Parameters: R * sum_k (I_k + J_k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.tensor.factorized import FactorizedMap
from tensorlstm.tensor.registry import register_format, single_rank


@register_format("cp", default_rank=8)
class CPMap(FactorizedMap):
    @classmethod
    def check_rank(cls, rank) -> int:
        return single_rank(rank, "cp")

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

    def forward_chains(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Khatri-Rao: merge the in-mode factors into one (I, R) matrix and the out-mode ones into
        (J, R): two GEMMs; or absorb the factors one by one (largest in modes first)."""
        d = len(self.in_modes)
        ins = tuple(range(d))
        outs = tuple(range(d, 2 * d))
        by_size = tuple((k,) for k in sorted(ins, key=lambda k: -self.in_modes[k]))
        return ((ins, outs), by_size + (outs,), by_size + tuple((k,) for k in outs))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", R={self.rank}"
