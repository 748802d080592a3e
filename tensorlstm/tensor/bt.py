"""Block-term (BT, Ye 2018) map: a sum of N Tucker blocks.

W[(i_1..i_d), (j_1..j_d)] = sum_n sum_{r_1..r_d} C_n[r_1..r_d] prod_k A_{n,k}[i_k, j_k, r_k],
core C_n in R^{R x ... x R} (R^d entries), factors A_{n,k} in R^{I_k x J_k x R}.
Parameters: N * (sum_k I_k J_k R + R^d).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.tensor.planning import FactorizedMap


class BTMap(FactorizedMap):
    """Stored with the block index first: core (N, R, ..., R), factor{k} (N, I_k, J_k, R)."""

    def __init__(
        self,
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        rank: int = 4,
        blocks: int = 1,
        mode: str = "auto",
    ):
        super().__init__(in_modes, out_modes, mode)
        d = len(self.in_modes)
        self.rank, self.blocks = int(rank), int(blocks)
        n = self.new_index()
        rank_subs = [self.new_index() for _ in range(d)]
        self.core = nn.Parameter(torch.empty(self.blocks, *([self.rank] * d)))
        names, subs = ["core"], [n + "".join(rank_subs)]
        for k in range(d):
            name = f"factor{k}"
            shape = (self.blocks, self.in_modes[k], self.out_modes[k], self.rank)
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
            names.append(name)
            subs.append(n + self.in_subs[k] + self.out_subs[k] + rank_subs[k])
        self.set_factors(names, subs, n_terms=self.blocks * self.rank**d)

    def forward_chains(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Per block (core at 0, factor k at 1+k): x absorbs the mode factors in any order with the
        core folded in after any of them, alone or merged with the next mode factor."""
        d = len(self.in_modes)
        chains = []
        if d <= 4:
            orders = list(itertools.permutations(range(1, d + 1)))
        else:  # any first mode, then by how much each mode shrinks the data: I_k / (J_k R)
            ratio = sorted(range(1, d + 1), key=lambda k: -self.in_modes[k - 1] / self.out_modes[k - 1])
            orders = [(f, *[k for k in ratio if k != f]) for f in ratio]
        for order in orders:
            for at in range(1, d + 1):
                head, tail = tuple((k,) for k in order[:at]), tuple((k,) for k in order[at:])
                chains.append(head + ((0,),) + tail)
                if tail:
                    chains.append(head + ((0, order[at]),) + tail[1:])
        return tuple(chains)

    def chain_terms(self) -> tuple[tuple[str, ...], list[list[torch.Tensor]]]:
        subs = tuple(s[1:] for s in self.factor_subs)  # drop the block index
        factors = self.factors()
        return subs, [[f[b] for f in factors] for b in range(self.blocks)]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", R={self.rank}, N={self.blocks}"
