"""Polyphonic music modelling on 88-key piano rolls (JSB Chorales, Nottingham, MuseData, Piano-midi.de).

Tjandra et al. 2017/2018's model: Linear(88 -> 256) + LeakyReLU(0.1) -> recurrent net (hidden 512) ->
Linear(-> 88) logits of the next frame's notes. With ``task.predict_first=true`` (the default: the standard
per-frame NLL over all T frames) the net reads a silent frame then frames 1..T-1 and predicts frames 1..T;
with ``false`` it reads frames 1..T-1 and predicts 2..T only (the first frame is not scored).

Metrics, over all real (unpadded) predicted frames of a split:
  * ``nll``: binary cross-entropy with logits summed over the 88 notes, averaged over frames (nats/frame);
  * ``frame_accuracy``: TP / (TP + FP + FN) with notes on where sigmoid(logit) > 0.5, the counts pooled
    over all frames of the split (Bay et al. 2009's frame-level accuracy; 1.0 if the split is all silence
    and the model predicts silence).

Sequences have different lengths: batches are padded, ``lengths`` tells the net where each one ends, and
padded frames are masked out of the loss and the metrics.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.piano_roll import NUM_KEYS, PianoRolls, load_piano_rolls
from tensorlstm.errors import UserError
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import EpochOrder, evaluating, full_precision


def masked_nll(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over masked frames of the BCE summed over notes, number of masked frames).

    logits, targets: (B, T, 88); mask: (B, T) bool."""
    bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none").sum(-1)
    return (bce * mask.to(bce.dtype)).sum(), mask.sum()


def frame_counts(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Counts (TP, FP, FN) over the masked frames, notes predicted on where logit > 0 (sigmoid > 0.5)."""
    pred = (logits > 0) & mask.unsqueeze(-1)
    true = targets.bool() & mask.unsqueeze(-1)
    tp = (pred & true).sum()
    return torch.stack([tp, pred.sum() - tp, true.sum() - tp])


def frame_accuracy(tp: float, fp: float, fn: float) -> float:
    """TP / (TP + FP + FN); 1.0 when there is nothing to find and nothing was predicted."""
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


class PianoRollModel(nn.Module):
    """Frames (B, T, 88) -> Linear + LeakyReLU(0.1) -> dropout -> RNN -> dropout -> Linear -> logits."""

    def __init__(self, rnn: RecurrentNet, embed_size: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Linear(NUM_KEYS, embed_size)
        self.rnn = rnn
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(rnn.output_size, NUM_KEYS)

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = F.leaky_relu(self.embed(frames.to(self.embed.weight.dtype)), 0.1)
        y, _ = self.rnn(self.dropout(x), lengths=lengths)
        return self.head(self.dropout(y))


class PolyphonicTask(Task):
    name = "polyphonic"
    metric = "nll"
    higher_is_better = False
    scores_next_step = True

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.batch_size = int(cfg["batch_size"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("task.batch_size and task.eval_batch_size must be >= 1")
        self.predict_first = bool(cfg["predict_first"])
        self.data: dict[str, PianoRolls] = {}
        self._epoch_order = EpochOrder(self.seed)

    def build_model(self, make_cell: CellFactory) -> nn.Module:
        embed = int(self.cfg["embed_size"])
        rnn = make_cell(
            embed,
            int(self.cfg["hidden_size"]),
            in_modes=self.cfg["in_modes"],
            hidden_modes=self.cfg["hidden_modes"],
        )
        return PianoRollModel(rnn, embed, float(self.cfg["dropout"]))

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.data = load_piano_rolls(
            self.cfg["data_dir"], str(self.cfg["dataset"])
        )

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data["train"]) / self.batch_size)  # the last batch may be smaller

    def train_batch(self, step: int) -> Batch:
        """Batch `step` of its epoch's order (drawn from (seed, epoch)): rolls (B, T, 88) uint8, lengths."""
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._epoch_order(epoch, len(self.data["train"]))[i * self.batch_size : (i + 1) * self.batch_size]
        rolls, lengths = self.data["train"].batch(idx)
        return {"rolls": rolls, "lengths": lengths}

    # -- objective -------------------------------------------------------------------------------
    def _predict(self, model: nn.Module, rolls: torch.Tensor, lengths: torch.Tensor):
        """Logits, targets and mask of the predicted frames."""
        if self.predict_first:
            inputs = F.pad(rolls[:, :-1], (0, 0, 1, 0))
            targets, n_pred = rolls, lengths
        else:
            inputs, targets, n_pred = rolls[:, :-1], rolls[:, 1:], lengths - 1
        steps = torch.arange(targets.shape[1], device=rolls.device)
        mask = steps.unsqueeze(0) < n_pred.unsqueeze(1)
        logits = model(inputs, n_pred.clamp(min=1))
        return logits, targets, mask

    def loss_terms(self, batch: Batch) -> float:
        """The loss is a mean over predicted frames (all of them with predict_first, else one fewer per roll)."""
        lengths = batch["lengths"]
        return float((lengths if self.predict_first else lengths - 1).clamp(min=0).sum())

    def loss(self, model: nn.Module, batch: Batch, state=None):
        logits, targets, mask = self._predict(model, batch["rolls"], batch["lengths"])
        total, count = masked_nll(logits, targets, mask)
        loss = total / count.clamp(min=1)
        tp, fp, fn = frame_counts(logits.detach(), targets, mask).tolist()
        return loss, {"nll": float(loss.detach()), "frame_accuracy": frame_accuracy(tp, fp, fn)}, None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        rolls = self.data[split]
        order = torch.argsort(rolls.lengths, descending=True)  # similar lengths together: less padding
        with evaluating(model):
            total, frames = 0.0, 0
            counts = torch.zeros(3, dtype=torch.int64)
            for start in range(0, len(rolls), self.eval_batch_size):
                batch, lengths = rolls.batch(order[start : start + self.eval_batch_size])
                logits, targets, mask = self._predict(model, batch.to(self.device), lengths.to(self.device))
                nll, n = masked_nll(full_precision(logits), targets, mask)
                total += float(nll)
                frames += int(n)
                counts += frame_counts(logits, targets, mask).cpu()
        tp, fp, fn = counts.tolist()
        return {"nll": total / max(frames, 1), "frame_accuracy": frame_accuracy(tp, fp, fn)}
