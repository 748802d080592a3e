"""The interface every recurrent network (cell=...) implements, and state helpers.

A *state* is any nesting of tuples/lists of tensors whose first dimension is the batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

State = Any


def map_state(fn, state: State) -> State:
    """Apply fn to every tensor in a (nested tuple/list) state."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s) for s in state)
    raise TypeError(f"unsupported state type {type(state)!r}")


def detach_state(state: State) -> State:
    return map_state(lambda t: t.detach(), state)


def select_state(mask: torch.Tensor, new: State, old: State) -> State:
    """Where mask (B,) is true take `new`, else `old` (variable-length sequences)."""
    if isinstance(new, torch.Tensor):
        return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
    return type(new)(select_state(mask, n, o) for n, o in zip(new, old))


class RecurrentNet(nn.Module):
    """A (possibly multi-layer) recurrent network over sequences.

    Contract, relied on by every task and by the trainer:
      * ``output_size``: feature size of the outputs.
      * ``delay``: extra steps the net needs after the last input before the output for that input
        is ready (tLSTM's depth by delay: L-1; 0 for ordinary cells). ``forward`` handles it
        internally: it appends ``delay`` blank steps and returns outputs aligned with the inputs.
      * ``forward(x, state=None, lengths=None)``: x is (B, T, I); returns (y, state) with y of shape
        (B, T, output_size), y[:, t] the output for input step t, and ``state`` the state after the
        last real input step (so truncated BPTT can carry it into the next chunk).
        ``lengths`` (B,) int64, optional: steps past a sequence's length do not change its state.
      * ``init_state(batch_size, device, dtype)`` -> zero state.
      * ``step(x_t, state)`` -> (y_t, state): one step, x_t of shape (B, I). For delayed nets y_t is
        the raw top output of this step (not aligned); DRAW and beam search use ``step``.
      * ``input_map_params()``: number of input-to-hidden weights (no biases) of the first layer;
        ``tlstm info`` reports it as params_input_map.
      * ``describe()``: a JSON-able dict of derived facts (modes, ranks, depth, ...) for ``tlstm info``.
    """

    output_size: int
    delay: int = 0

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:  # pragma: no cover
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # pragma: no cover
        raise NotImplementedError

    def input_map_params(self) -> int:  # pragma: no cover
        raise NotImplementedError

    def dense_input_map_params(self) -> int:
        """Weights a dense input map of the same shape would have (for the compression ratio)."""
        return self.input_map_params()

    def describe(self) -> dict:
        return {}
