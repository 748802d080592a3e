"""The interface every task implements. Tasks never know which cell they got.

A task is built from a plain dict (its resolved ``task`` config) and a seed; Hydra is not visible here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensorlstm.cells.base import RecurrentNet

Batch = dict[str, Any]
# make_cell(input_size, hidden_size) -> RecurrentNet, configured by the user's cell config.
# hidden_size is the task's default width (e.g. 256 for UCF11); cells whose width is set otherwise
# (tLSTM's M) may ignore it; use net.output_size for the head.
CellFactory = Callable[..., RecurrentNet]


class Task:
    """Base class. Subclasses set the class attributes and implement the methods.

    * ``metric`` / ``higher_is_better``: the validation metric used for model selection.
    * ``carries_state``: truncated BPTT across batches (char LM): the trainer passes the previous
      step's detached state into ``loss`` and stores it in checkpoints.
    * ``scores_next_step``: the metric scores the prediction of input t+1 at step t over padded or windowed
      sequences (char LM, polyphonic), so a net whose y_t sees later inputs (tLSTM ``norm=cn``) reads the
      answer: ``validate`` refuses that unless ``cell.allow_lookahead=true``.
    * ``build_model(make_cell)`` must not touch data files (``tlstm info`` calls it with no data).
    * ``train_batch(step)`` is a pure function of (seed, step) so that a resumed run sees the same
      batches as an uninterrupted one (e.g. epoch = step // steps_per_epoch, permutation from
      seed + epoch). It returns CPU tensors; the trainer moves them to the device.
    * ``loss(model, batch, state)`` -> (loss, stats, state): loss is the scalar to minimise; stats are
      floats for logging (e.g. accuracy on this batch).
    * ``evaluate(model, split)`` -> metrics dict over the whole split ('valid' or 'test'), with the
      names of the task's contract (accuracy, seq_accuracy, bpc, nll, frame_accuracy, nll_bound...).
    * ``artifacts(model, run_dir, step)``: optional files written at each evaluation (samples, plots);
      ``test_artifacts(model, run_dir)`` the same after the final test evaluation.
    * ``summarize(history)``: optional extra entries for summary.json from the list of eval records.
    """

    name: str = "task"
    metric: str = "loss"
    higher_is_better: bool = False
    carries_state: bool = False
    scores_next_step: bool = False

    def __init__(self, cfg: dict, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed

    def build_model(self, make_cell: CellFactory) -> nn.Module:  # pragma: no cover
        raise NotImplementedError

    def prepare(self) -> None:
        """Load data (called once before training/eval, never by ``tlstm info``)."""

    def train_batch(self, step: int) -> Batch:  # pragma: no cover
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch, state=None) -> tuple[torch.Tensor, dict, Any]:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def loss_terms(self, batch: Batch) -> float:
        """How many terms the mean in ``loss`` runs over for this batch (data-parallel runs weight each rank's
        loss by it). Default: the batch rows, right for a mean over rows or over a fixed number per row."""
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value.shape[0]
        raise ValueError("a batch without a batched tensor: override Task.loss_terms")

    def artifacts(self, model: nn.Module, run_dir: Path, step: int) -> list[Path]:
        return []

    def test_artifacts(self, model: nn.Module, run_dir: Path) -> list[Path]:
        """Optional files written after the final test evaluation (e.g. the test split's captions)."""
        return []

    def summarize(self, history: list[dict]) -> dict:
        return {}

    @property
    def device(self) -> torch.device:
        return getattr(self, "_device", torch.device("cpu"))

    @device.setter
    def device(self, value: torch.device) -> None:
        self._device = value
