"""Dense map: y = x @ W with W in R^{I x J}; I*J parameters.

Initialization: W ~ N(0, 1/I) (fan-in variance 1/I, std 1/sqrt(I)); the factorized formats
rebuild a W with the same std, so formats are interchangeable at init.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.registry import register_format


@register_format("dense", default_rank=None)
class DenseMap(LinearMap):
    """W stored as one (I, J) parameter `weight` (the transpose of nn.Linear's layout)."""

    @classmethod
    def from_spec(cls, in_modes, out_modes, rank, blocks, mode) -> DenseMap:
        """Dense has no rank: `rank` and `blocks` are ignored, and forward is always one GEMM."""
        return cls(math.prod(in_modes), math.prod(out_modes), in_modes, out_modes)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.in_modes = tuple(in_modes) if in_modes is not None else (self.in_features,)
        self.out_modes = tuple(out_modes) if out_modes is not None else (self.out_features,)
        self.mode = "reconstruct"
        self.weight = nn.Parameter(torch.empty(self.in_features, self.out_features))
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(self.in_features) if std is None else float(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight

    def reconstruct(self) -> torch.Tensor:
        return self.weight
