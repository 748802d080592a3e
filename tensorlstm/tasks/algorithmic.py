"""Addition and memorization (the Grid LSTM protocol, Kalchbrenner et al. 2016, used by He et al. 2017).

Generated on the fly: the training batch of step s comes from a generator seeded by (seed, s), so a resumed
run sees the same batches; the validation and test sets are fixed by the seed and disjoint in their seeds.

addition, n digits (most significant first, or least significant first with reverse_digits; 2545 + 9542):
    input   2 5 4 5 - 9 5 4 2 - - - - - -
    target  . . . . . . . . . . 1 2 0 8 7      ('.' = no loss; the sum has n + 1 digits, zero-padded)
memorization, n symbols from a vocabulary of V:
    input   s1 .. sn - - .. -
    target  .  ..  . . s1 .. sn
The reported metrics: per-symbol `accuracy` over the answer, `seq_accuracy` (the whole answer right), and
`samples_to_99` in summary.json: training samples seen when validation seq_accuracy first reached 0.99.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tensorlstm.errors import UserError
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import evaluating, seeded_generator


class SequenceClassifierHead(nn.Module):
    """One-hot symbols -> recurrent net -> linear logits at every step."""

    def __init__(self, vocab: int, classes: int, make_cell: CellFactory, hidden_size: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.rnn = make_cell(vocab, hidden_size)
        self.head = nn.Linear(self.rnn.output_size, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.one_hot(tokens, self.vocab).to(self.head.weight.dtype)
        y, _ = self.rnn(x)
        return self.head(y)


class GeneratedSequenceTask(Task):
    """Base of the generated tasks: subclasses implement `generate(generator, n)`."""

    metric = "seq_accuracy"
    higher_is_better = True
    vocab: int
    classes: int

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.batch_size = int(cfg["batch_size"])
        self.splits: dict[str, tuple[torch.Tensor, ...]] = {}

    def generate(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs (n, T) long, targets (n, T) long, answer mask (n, T) bool)."""
        raise NotImplementedError

    def build_model(self, make_cell: CellFactory) -> nn.Module:
        return SequenceClassifierHead(self.vocab, self.classes, make_cell, int(self.cfg["hidden_size"]))

    def _gen(self, salt: int) -> torch.Generator:
        return seeded_generator(self.seed, salt)

    def prepare(self) -> None:
        for i, split in enumerate(("valid", "test")):
            n = int(self.cfg.get(f"{split}_size", 1000))
            self.splits[split] = self.generate(self._gen(-(i + 1)), n)

    def train_batch(self, step: int) -> Batch:
        x, y, m = self.generate(self._gen(step), self.batch_size)
        return {"x": x, "y": y, "mask": m}

    def loss(self, model: nn.Module, batch: Batch, state=None):
        logits = model(batch["x"])
        m = batch["mask"]
        loss = F.cross_entropy(logits[m], batch["y"][m])
        with torch.no_grad():
            correct = (logits.argmax(-1) == batch["y"]) | ~m
            stats = {"accuracy": correct[m].float().mean(), "seq_accuracy": correct.all(1).float().mean()}
        return loss, stats, None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        x, y, m = self.splits[split]
        n_sym = n_ok = n_seq = 0
        total_loss = 0.0
        bs = int(self.cfg["eval_batch_size"])
        with evaluating(model):
            for i in range(0, x.shape[0], bs):
                xb, yb, mb = (t[i : i + bs].to(self.device) for t in (x, y, m))
                logits = model(xb)
                total_loss += F.cross_entropy(logits[mb], yb[mb], reduction="sum").item()
                correct = (logits.argmax(-1) == yb) | ~mb
                n_ok += correct[mb].sum().item()
                n_sym += mb.sum().item()
                n_seq += correct.all(1).sum().item()
        return {"loss": total_loss / n_sym, "accuracy": n_ok / n_sym, "seq_accuracy": n_seq / x.shape[0]}

    def summarize(self, history: list[dict]) -> dict:
        """samples_to_99: training samples seen when validation seq_accuracy first reached 0.99 (else null)."""
        threshold = float(self.cfg["solved_threshold"])
        for record in history:
            if record.get("seq_accuracy", 0.0) >= threshold:
                return {"samples_to_99": record["step"] * self.batch_size}
        return {"samples_to_99": None}


class AdditionTask(GeneratedSequenceTask):
    name = "addition"

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.digits = int(cfg["digits"])
        if not 1 <= self.digits <= 18:
            raise UserError(f"task.digits={self.digits}: choose 1 to 18 digits (addition sums are exact in int64)")
        self.reverse = bool(cfg["reverse_digits"])
        self.vocab = 11  # 0-9 and '-'
        self.classes = 10

    def generate(self, gen: torch.Generator, n: int):
        k = self.digits
        a = torch.randint(0, 10, (n, k), generator=gen)
        b = torch.randint(0, 10, (n, k), generator=gen)
        total = _to_int(a) + _to_int(b)
        answer = _to_digits(total, k + 1)
        if self.reverse:  # least significant digit first: carries flow forward in time
            a, b, answer = a.flip(1), b.flip(1), answer.flip(1)
        blank = torch.full((n, 1), 10)
        x = torch.cat([a, blank, b, blank, torch.full((n, k + 1), 10)], dim=1)
        y = torch.zeros_like(x)
        y[:, 2 * k + 2 :] = answer
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, 2 * k + 2 :] = True
        return x, y, mask


class MemorizationTask(GeneratedSequenceTask):
    name = "memorization"

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.length = int(cfg["length"])
        self.classes = int(cfg["symbols"])
        if self.length < 1 or self.classes < 2:
            raise UserError(f"task.length={self.length}, task.symbols={self.classes}: need length >= 1, symbols >= 2")
        self.vocab = self.classes + 1  # + the blank '-'

    def generate(self, gen: torch.Generator, n: int):
        k, blank = self.length, self.classes
        s = torch.randint(0, self.classes, (n, k), generator=gen)
        x = torch.cat([s, torch.full((n, k + 1), blank)], dim=1)
        y = torch.zeros_like(x)
        y[:, k + 1 :] = s
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[:, k + 1 :] = True
        return x, y, mask


def _to_int(digits: torch.Tensor) -> torch.Tensor:
    """Digits (n, k), most significant first -> int64 values."""
    powers = 10 ** torch.arange(digits.shape[1] - 1, -1, -1, dtype=torch.int64)
    return (digits * powers).sum(1)


def _to_digits(values: torch.Tensor, k: int) -> torch.Tensor:
    powers = 10 ** torch.arange(k - 1, -1, -1, dtype=torch.int64)
    return (values.unsqueeze(1) // powers) % 10
