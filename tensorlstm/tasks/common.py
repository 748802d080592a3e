"""Small helpers the tasks share: seeded generators, epoch orders, full-precision losses, evaluation mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """The one way to evaluate: eval mode (no dropout) and no autograd inside the block, and the model's previous
    mode back after it, also when the block raises. Tasks wrap their evaluate/sample bodies in it, the trainer and
    `tlstm eval` every task.evaluate call (so a task that forgets still evaluates in eval mode); nesting is free.
    (no_grad, as before, not inference_mode: tensors made in inference mode cannot enter autograd later.)"""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (e.g. seed, epoch), so draws are pure functions of them."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits under AMP are summed in float32; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class EpochOrder:
    """The order of n training items in epoch e: a permutation drawn from (seed, e), cached for one epoch.

    Batches are then a pure function of (seed, step), which is what makes a resumed run exact."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: tuple[int, int, torch.Tensor] | None = None

    def __call__(self, epoch: int, n: int) -> torch.Tensor:
        if self._cache is None or self._cache[:2] != (epoch, n):
            self._cache = (epoch, n, torch.randperm(n, generator=seeded_generator(self.seed, epoch)))
        return self._cache[2]
