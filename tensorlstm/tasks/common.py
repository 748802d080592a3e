"""Small helpers the tasks share: seeded generators, epoch orders, full-precision losses, evaluation mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
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


# The one way a task draws random batches: every draw comes from a generator made here from integers (the run's
# seed, then the epoch, step or item), so a batch is a pure function of (seed, step) and a resumed run is exact.
# torch draws (seeded_generator) and numpy draws (seeded_numpy: the tasks whose batches are built in numpy) keep
# each task's stream as it was; EpochOrder is the epoch-wise order of the training items.
def seeded_generator(*parts: int, device: str | torch.device | None = None) -> torch.Generator:
    """A torch generator (CPU unless `device`) seeded from integers (e.g. seed, epoch)."""
    value = 0
    for p in parts:
        value = (value * 1_000_003 + int(p)) % (2**63 - 1)
    return torch.Generator(device=device or "cpu").manual_seed(value)


def seeded_numpy(*parts: int) -> np.random.Generator:
    """A numpy generator seeded from integers (numpy's own mixing of the whole list; each taken mod 2^63)."""
    return np.random.default_rng([int(p) % 2**63 for p in parts])


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits under AMP are summed in float32; float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class EpochOrder:
    """The order of n training items in epoch e: a permutation drawn from (seed, e), cached for one epoch; a torch
    tensor (seeded_generator), or with `numpy=True` a numpy array (seeded_numpy).

    Batches are then a pure function of (seed, step), which is what makes a resumed run exact."""

    def __init__(self, seed: int, numpy: bool = False) -> None:
        self.seed, self.numpy = seed, numpy
        self._cache: tuple | None = None

    def __call__(self, epoch: int, n: int):
        cache = self._cache  # one read: prefetch threads may ask for the next epoch meanwhile
        if cache is None or cache[:2] != (epoch, n):
            order = seeded_numpy(self.seed, epoch).permutation(n) if self.numpy else \
                torch.randperm(n, generator=seeded_generator(self.seed, epoch))
            self._cache = cache = (epoch, n, order)
        return cache[2]
