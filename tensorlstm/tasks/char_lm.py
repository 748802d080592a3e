"""Character-level language modelling with truncated BPTT (enwik8, text8, PTB-char, any text file).

Batching (the classic LM protocol): a split's symbol stream is cut into ``batch_size`` contiguous
streams; training batch k is the k-th window of ``bptt`` symbols of every stream (targets shifted by
one), k = step mod windows-per-epoch, so it wraps around at each epoch. The state is carried from one
window to the next (the trainer detaches it between steps and stores it in checkpoints) and reset to
zero at the first window of every epoch. Evaluation runs over the whole valid/test stream, cut the same
way into ``eval_batch_size`` streams, with the state carried across all windows; the at most
``eval_batch_size - 1`` symbols that do not fill a stream are left out. bits per character =
mean NLL in nats / ln 2.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.text import STANDARD_SPLIT, CharCorpus, load_char_corpus
from tensorlstm.errors import UserError
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import evaluating, full_precision, seeded_generator

LN2 = math.log(2.0)
# symbols of the standard corpora (used to build the model without reading the data, for `tlstm info`)
KNOWN_VOCAB_SIZES = {"ptb_char": 50, "text8": 27, "enwik8": 205}


def bits_per_char(total_nll_nats: float, count: int) -> float:
    """Mean negative log-likelihood in bits: sum of NLLs in nats / count / ln 2."""
    return total_nll_nats / count / LN2


def stream_windows(ids: torch.Tensor, streams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-symbol targets as (streams, n) views of one 1-D stream (n = (len-1) // streams)."""
    n = (ids.numel() - 1) // streams
    if n < 1:
        raise UserError(
            f"a split of {ids.numel()} symbols cannot be cut into {streams} streams; "
            "lower task.batch_size / task.eval_batch_size or use more text"
        )
    return ids[: streams * n].view(streams, n), ids[1 : streams * n + 1].view(streams, n)


class CharLanguageModel(nn.Module):
    """ids (B, T) -> embedding (or one-hot) -> RNN -> dropout -> linear -> logits (B, T, V)."""

    def __init__(self, rnn: RecurrentNet, vocab_size: int, embed_size: int | None, dropout: float) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, embed_size) if embed_size else None
        self.rnn = rnn
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(rnn.output_size, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        ids = ids.long()
        if self.embed is not None:
            x = self.embed(ids)
        else:
            x = F.one_hot(ids, self.vocab_size).to(self.head.weight.dtype)
        y, state = self.rnn(x, state)
        return self.head(self.dropout(y)), state


class CharLMTask(Task):
    name = "char_lm"
    metric = "bpc"
    higher_is_better = False
    scores_next_step = True
    carries_state = True

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.batch_size = int(cfg["batch_size"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.bptt = int(cfg["bptt"])
        if min(self.batch_size, self.eval_batch_size, self.bptt) < 1:
            raise UserError("task.batch_size, task.eval_batch_size and task.bptt must be >= 1")
        self.corpus: CharCorpus | None = None

    # -- model -----------------------------------------------------------------------------------
    def vocab_size(self) -> int:
        """Outputs of the model: task.vocab_size, else the known size of a standard corpus, else 256.

        Never read from the data, so the model is the same whether it is built before or after prepare()
        (train, eval and ``tlstm info`` agree). A plain text file with fewer symbols leaves spare outputs that
        training pushes down; set task.vocab_size to its symbol count to drop them."""
        configured = self.cfg["vocab_size"]
        if configured:
            return int(configured)
        return KNOWN_VOCAB_SIZES.get(str(self.cfg["dataset"]), 256)

    def build_model(self, make_cell: CellFactory) -> nn.Module:
        vocab = self.vocab_size()
        embed = self.cfg["embed_size"]
        input_size = int(embed) if embed else vocab
        rnn = make_cell(
            input_size,
            int(self.cfg["hidden_size"]),
            in_modes=self.cfg["in_modes"],
            hidden_modes=self.cfg["hidden_modes"],
        )
        return CharLanguageModel(
            rnn, vocab, int(embed) if embed else None, float(self.cfg["dropout"])
        )

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.corpus = load_char_corpus(
            self.cfg["data_dir"],
            str(self.cfg["dataset"]),
            level=str(self.cfg["level"]),
            fractions=self.cfg["split"] or STANDARD_SPLIT,
        )
        if self.corpus.vocab_size > self.vocab_size():
            raise UserError(
                f"the text has {self.corpus.vocab_size} distinct symbols, more than the model's "
                f"{self.vocab_size()} outputs; set task.vocab_size={self.corpus.vocab_size}"
            )
        self._train_x, self._train_y = stream_windows(self.corpus.train, self.batch_size)
        if self._train_x.shape[1] < self.bptt:
            raise UserError(
                f"the training text gives streams of {self._train_x.shape[1]} symbols, shorter than "
                f"task.bptt={self.bptt}; lower task.bptt or task.batch_size"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self._train_x.shape[1] // self.bptt  # windows per epoch; a partial last window is dropped

    def train_batch(self, step: int) -> Batch:
        """Window k = step mod steps_per_epoch of every stream; `reset` is true on an epoch's first window."""
        k = step % self.steps_per_epoch
        window = slice(k * self.bptt, (k + 1) * self.bptt)
        return {
            "inputs": self._train_x[:, window],
            "targets": self._train_y[:, window],
            "reset": torch.tensor(k == 0),
        }

    # -- objective -------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, state=None):
        if state is not None and bool(batch["reset"]):
            state = None  # a new epoch starts the streams over
        logits, state = model(batch["inputs"], state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1).long())
        return loss, {"bpc": float(loss.detach()) / LN2}, state

    def _eval_stream(self, split: str) -> torch.Tensor:
        ids = self.corpus.split(split)
        limit = self.cfg["valid_max_chars"]
        if split == "valid" and limit:
            ids = ids[: int(limit) + 1]
        return ids

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        xs, ys = stream_windows(self._eval_stream(split), self.eval_batch_size)
        xs, ys = xs.to(self.device), ys.to(self.device)
        with evaluating(model):
            state, total = None, 0.0
            for start in range(0, xs.shape[1], self.bptt):
                logits, state = model(xs[:, start : start + self.bptt], state)
                target = ys[:, start : start + self.bptt].reshape(-1).long()
                total += float(
                    F.cross_entropy(full_precision(logits).reshape(-1, logits.shape[-1]), target, reduction="sum")
                )
        count = ys.numel()
        return {"bpc": bits_per_char(total, count), "nll": total / count}

    # -- samples ---------------------------------------------------------------------------------
    def sample(
        self,
        model: nn.Module,
        length: int,
        prime: torch.Tensor,
        generator: torch.Generator,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Feed `prime` (1-D ids), then draw `length` symbols one at a time. Returns the drawn ids."""
        with evaluating(model):
            logits, state = model(prime.view(1, -1).to(self.device), None)
            out, vocab = [], self.corpus.vocab_size if self.corpus is not None else logits.shape[-1]
            for _ in range(length):
                # only the data's symbols (a model built before the data was read may have spare outputs)
                probs = torch.softmax(logits[0, -1, :vocab].float().cpu() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
                out.append(int(nxt))
                logits, state = model(nxt.view(1, 1).to(self.device), state)
        return torch.tensor(out, dtype=torch.long)

    def artifacts(self, model: nn.Module, run_dir: Path, step: int) -> list[Path]:
        """Write `sample_<step>.txt`: a prime from the validation text and the model's continuation."""
        length = int(self.cfg["sample_length"])
        if length <= 0 or self.corpus is None:
            return []
        prime = self.corpus.valid[: max(1, int(self.cfg["sample_prime"]))]
        drawn = self.sample(
            model,
            length,
            prime,
            seeded_generator(self.seed * 7919 + step),
            float(self.cfg["sample_temperature"]),
        )
        path = Path(run_dir) / f"sample_{step}.txt"
        path.write_text(
            f"# step {step}: {len(prime)} symbols of the validation text, |>>|, {length} sampled symbols\n"
            f"{self.corpus.decode(prime)}|>>|{self.corpus.decode(drawn)}\n",
            encoding="utf-8",
        )
        return [path]
