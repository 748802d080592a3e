"""The interface every linear map from I inputs to J outputs implements (dense or factorized)."""

from __future__ import annotations

import torch
from torch import nn


class LinearMap(nn.Module):
    """A bias-free linear map x (..., I) -> x @ W (..., J), with W possibly stored in factorized form.

    Subclasses implement `forward`, `reconstruct` and `num_params`. Biases live in the cells, so
    `num_params` counts exactly the weights of the paper's formula.
    """

    in_features: int
    out_features: int
    format_name: str  # set by @register_format
    default_rank: int | None  # set by @register_format; None for formats without a rank (dense)

    @classmethod
    def from_spec(cls, in_modes: list[int], out_modes: list[int], rank, blocks: int, mode: str) -> LinearMap:
        """Check `rank` (and `blocks`) for this format and build the map; modes are already checked."""
        raise NotImplementedError

    def reconstruct(self) -> torch.Tensor:  # pragma: no cover - interface
        """The dense I x J matrix W such that forward(x) == x @ W."""
        raise NotImplementedError

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, params={self.num_params}"
