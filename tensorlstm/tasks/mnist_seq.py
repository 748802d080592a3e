"""Sequential and permuted MNIST (pixel by pixel, 784 steps; or `chunk` pixels per step).

Data: the four standard IDX files (gzipped or not) in ``task.data_dir``. A validation split of
``task.valid_size`` images is carved from the 60,000 training images by a permutation drawn from
``task.split_seed`` (the run seed when null); the 10,000 test images are used only for the final test.
Pixels are scaled to [0, 1]. pMNIST applies one fixed pixel permutation drawn from
``task.permutation_seed`` (the same for every split and every run with that seed).

Model: the recurrent net reads the sequence; a linear head on its last output gives the 10 logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.idx import load_mnist
from tensorlstm.errors import UserError
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import EpochOrder, evaluating, full_precision, seeded_generator

NUM_PIXELS = 784
NUM_CLASSES = 10


def pixel_permutation(seed: int) -> torch.Tensor:
    """The pMNIST pixel order: a permutation of 0..783 fixed by `seed`."""
    return torch.randperm(NUM_PIXELS, generator=seeded_generator(seed, 7841))


class PixelSequenceClassifier(nn.Module):
    """uint8 images (B, 784) -> pixels in [0, 1] (optionally permuted) as (B, 784/chunk, chunk) -> RNN ->
    linear head on the last output."""

    def __init__(self, rnn: RecurrentNet, chunk: int, order: torch.Tensor | None) -> None:
        super().__init__()
        self.rnn = rnn
        self.chunk = chunk
        self.head = nn.Linear(rnn.output_size, NUM_CLASSES)
        # a buffer, so the permutation travels with the checkpoint
        self.register_buffer(
            "order", order if order is not None else torch.arange(NUM_PIXELS), persistent=True
        )
        self.permuted = order is not None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.head.weight.dtype) / 255.0
        if self.permuted:
            x = x[:, self.order]
        y, _ = self.rnn(x.view(x.shape[0], NUM_PIXELS // self.chunk, self.chunk))
        return self.head(y[:, -1])


class SequentialMNISTTask(Task):
    name = "smnist"
    metric = "accuracy"
    higher_is_better = True

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.chunk = int(cfg["chunk"])
        if self.chunk < 1 or NUM_PIXELS % self.chunk:
            divisors = [d for d in range(1, NUM_PIXELS + 1) if NUM_PIXELS % d == 0]
            raise UserError(
                f"task.chunk={self.chunk} must divide 784 (pixels per step); choose one of {divisors}"
            )
        self.batch_size = int(cfg["batch_size"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise UserError("task.batch_size and task.eval_batch_size must be >= 1")
        self.data: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._epoch_order = EpochOrder(self.seed)

    # -- model -----------------------------------------------------------------------------------
    def pixel_order(self) -> torch.Tensor | None:
        return None

    def build_model(self, make_cell: CellFactory) -> nn.Module:
        rnn = make_cell(
            self.chunk,
            int(self.cfg["hidden_size"]),
            in_modes=self.cfg["in_modes"],
            hidden_modes=self.cfg["hidden_modes"],
        )
        return PixelSequenceClassifier(rnn, self.chunk, self.pixel_order())

    # -- data ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        data_dir = self.cfg["data_dir"]
        images, labels = load_mnist(data_dir, "train")
        images = torch.from_numpy(images.reshape(len(images), NUM_PIXELS).copy())
        labels = torch.from_numpy(labels)
        valid_size = int(self.cfg["valid_size"])
        if not 0 < valid_size < len(images):
            raise UserError(
                f"task.valid_size={valid_size} must be between 1 and {len(images) - 1} "
                f"(the training set has {len(images)} images)"
            )
        split_seed = self.cfg["split_seed"]
        split_seed = self.seed if split_seed is None else int(split_seed)
        perm = torch.randperm(len(images), generator=seeded_generator(split_seed, 5151))
        valid_idx, train_idx = perm[:valid_size].sort().values, perm[valid_size:].sort().values
        max_train = self.cfg["max_train"]
        if max_train is not None:
            train_idx = train_idx[: int(max_train)]
        self.data["train"] = (images[train_idx].contiguous(), labels[train_idx].contiguous())
        self.data["valid"] = (images[valid_idx].contiguous(), labels[valid_idx].contiguous())
        test_images, test_labels = load_mnist(data_dir, "test")
        self.data["test"] = (
            torch.from_numpy(test_images.reshape(len(test_images), NUM_PIXELS).copy()),
            torch.from_numpy(test_labels),
        )
        if len(self.data["train"][0]) < self.batch_size:
            raise UserError(
                f"task.batch_size={self.batch_size} is larger than the training set "
                f"({len(self.data['train'][0])} images); lower it"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data["train"][0]) // self.batch_size  # the last partial batch is dropped

    def train_batch(self, step: int) -> Batch:
        """Batch `step`: epoch = step // steps_per_epoch, order from (seed, epoch). uint8 pixels (B, 784)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        idx = self._epoch_order(epoch, len(self.data["train"][0]))[i * self.batch_size : (i + 1) * self.batch_size]
        images, labels = self.data["train"]
        # index_select: a plain gather, much faster than advanced indexing when cores are oversubscribed
        return {"pixels": images.index_select(0, idx), "labels": labels.index_select(0, idx)}

    # -- objective -------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch, state=None):
        logits = model(batch["pixels"])
        loss = F.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": float(accuracy)}, None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        images, labels = self.data[split]
        with evaluating(model):
            correct, nll = 0, 0.0
            for start in range(0, len(images), self.eval_batch_size):
                x = images[start : start + self.eval_batch_size].to(self.device)
                y = labels[start : start + self.eval_batch_size].to(self.device)
                logits = model(x)
                nll += float(F.cross_entropy(full_precision(logits), y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
        n = len(images)
        return {"accuracy": correct / n, "nll": nll / n, "error": 1.0 - correct / n}


class PermutedMNISTTask(SequentialMNISTTask):
    name = "pmnist"

    def pixel_order(self) -> torch.Tensor | None:
        return pixel_permutation(int(self.cfg["permutation_seed"]))
