"""Video classification from raw frames: UCF11 (Yang et al. 2017, Ye et al. 2018), Hollywood2 and YouTube
Celebrities (Yang et al. 2017). One task class per dataset over one pipeline (``VideoTask``): the frame cache
of ``tensorlstm.data.clip_cache``, written once by ``scripts/prepare_video.py``.

Model: each frame, flattened to a vector (e.g. 160 x 120 x 3 = 57,600 values, centred), is one step of the
recurrent net (any ``cell=``); the output after the clip's last frame goes through dropout and a linear
classifier. Single-label sets (UCF11, YouTube Celebrities): softmax cross-entropy, metric accuracy.
Multi-label Hollywood2: one sigmoid per action with binary cross-entropy, metric the mean average precision
over the actions (``tensorlstm.tasks.average_precision``). The loss adds ``l2_classifier`` *
||W_classifier||^2 (the papers' Keras ``l2(0.01)`` on the output layer's kernel).

Protocols (``task.protocol``; splits in ``tensorlstm.data.clip_cache.make_splits``):

* ``ye2018`` (UCF11): 6 frames per clip (random positions kept in temporal order while training; evenly
  spaced for evaluation), one random 80/20 clip split.
* ``yang2017`` (UCF11, YouTube Celebrities): every frame (UCF11: resampled to 24 fps), up to ``max_frames``
  steps, padded and masked with ``lengths``; 5-fold clip-level cross-validation (``task.fold``).
* ``group`` (UCF11, YouTube Celebrities): 5-fold cross-validation over *groups*: UCF11's 25 groups per class
  share actor, background and viewpoint, a celebrity's clips cut from one video share scene and lighting,
  so a clip-level split puts near-duplicates on both sides and overstates accuracy. The group split
  measures generalisation to unseen scenes; it is the default.
* ``official`` (Hollywood2): the release's train/test split (823 / 884 clips of the clean set).

Every protocol carves a validation split from its training side for model selection; the test split
is only evaluated at the end.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.clip_cache import FrameCache, get_layout, make_splits
from tensorlstm.data.video import resample_indices, resize_frames
from tensorlstm.errors import UserError
from tensorlstm.tasks.average_precision import mean_average_precision
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import EpochOrder, evaluating, seeded_numpy

NORMALIZATIONS = ("center", "channel_mean")


def copy_runs(dst: np.ndarray, src: np.ndarray, rows: np.ndarray) -> None:
    """dst[:len(rows)] = src[rows] for sorted rows, one slice copy per run of consecutive rows (no temporary
    array; a memmap reads each run sequentially)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        dst[start:end] = src[rows[start] : rows[start] + (end - start)]


class FrameClassifier(nn.Module):
    """uint8 frames (B, T, H, W, 3) -> centred frame vectors -> recurrent net -> dropout -> logits (B, C)."""

    def __init__(self, rnn: RecurrentNet, num_classes: int, dropout: float,
                 pixel_mean: torch.Tensor, pixel_scale: torch.Tensor) -> None:
        super().__init__()
        self.rnn = rnn
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(rnn.output_size, num_classes)
        # normalisation constants travel with the checkpoint (channel_mean computes them from the data)
        self.register_buffer("pixel_mean", pixel_mean.clone().float())
        self.register_buffer("pixel_scale", pixel_scale.clone().float())

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps = frames.shape[:2]
        x = (frames.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_scale
        y, _ = self.rnn(x.reshape(batch, steps, -1), lengths=lengths)
        if lengths is None:
            last = y[:, -1]
        else:
            last = y[torch.arange(batch, device=y.device), lengths.to(y.device) - 1]
        return self.classifier(self.dropout(last))


class VideoTask(Task):
    """The pipeline of every video set; a subclass names its dataset (``name``: its layout and task name),
    metric and protocols."""

    metric = "accuracy"
    higher_is_better = True
    protocols: tuple[str, ...] = ()
    multilabel = False

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.protocol = cfg["protocol"]
        if self.protocol not in self.protocols:
            raise UserError(f"unknown task.protocol {self.protocol!r}; choose one of: {', '.join(self.protocols)}")
        width, height = (int(v) for v in cfg["frame_size"])
        self.frame_size = (width, height)
        self.input_size = int(cfg["input_size"])
        if self.input_size != width * height * 3:
            raise UserError(
                f"task.input_size={self.input_size} does not match task.frame_size={width}x{height} "
                f"({width}*{height}*3 = {width * height * 3}): set task.input_size={width * height * 3} "
                "and task.in_modes to modes with that product"
            )
        self.frames = self._frames_per_clip(cfg["frames"])
        fps = cfg["fps"]
        if fps == "auto":
            fps = self._auto_fps()
        try:
            self.fps: float | None = None if fps is None else float(fps)
        except ValueError:
            raise UserError(f"task.fps={fps!r} must be a frame rate, null or 'auto'") from None
        self.max_frames = int(cfg["max_frames"])
        self.batch_size = int(cfg["batch_size"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.eval_frame_budget = int(cfg["eval_frame_budget"])
        self.l2 = float(cfg["l2_classifier"])
        self.normalize = cfg["normalize"]
        if self.normalize not in NORMALIZATIONS:
            raise UserError(f"unknown task.normalize {self.normalize!r}; "
                            f"choose one of: {', '.join(NORMALIZATIONS)}")
        self.pixel_mean = torch.full((3,), 127.5)
        self.pixel_scale = torch.full((3,), 127.5)
        self.prefetch = int(cfg["prefetch"])
        self._epoch_order = EpochOrder(seed, numpy=True)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self.cache: FrameCache | None = None
        self.splits: dict[str, np.ndarray] = {}

    def _auto_fps(self) -> float | None:
        """``task.fps=auto``: keep the stored rate (UCF11 overrides this)."""
        return None

    def _frames_per_clip(self, value) -> int | None:
        """Frames sampled per clip, or None for every frame (masked)."""
        if value == "auto":
            return None if self.protocol in ("yang2017", "official") else 6
        if value is None or value == "all":
            return None
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            raise UserError(f"task.frames={value!r} must be a positive count, 'all' or 'auto'")
        return int(value)

    # ------------------------------------------------------------------------------------------ model
    def build_model(self, make_cell: CellFactory) -> nn.Module:
        cfg = self.cfg
        rnn = make_cell(self.input_size, int(cfg["hidden_size"]),
                        in_modes=cfg["in_modes"], hidden_modes=cfg["hidden_modes"])
        return FrameClassifier(rnn, int(cfg["num_classes"]), float(cfg["dropout"]),
                               self.pixel_mean, self.pixel_scale)

    # ------------------------------------------------------------------------------------------- data
    def prepare(self) -> None:
        cfg = self.cfg
        self.cache = cache = FrameCache(cfg["data_dir"], get_layout(self.name))
        num_classes = int(cfg["num_classes"])
        if len(cache.classes) != num_classes:
            raise UserError(f"the cache in {cache.dir} has {len(cache.classes)} classes "
                            f"({', '.join(cache.classes)}) but task.num_classes={num_classes}; "
                            f"set task.num_classes={len(cache.classes)}")
        self.splits = make_splits(
            cache.labels, cache.groups, self.protocol, seed=int(cfg["split_seed"]),
            valid_fraction=float(cfg["valid_fraction"]), official=self._official_split(), **self._split_keys(),
        )
        self._timelines: dict[int, np.ndarray] = {}
        if self.normalize == "channel_mean":
            self.pixel_mean, self.pixel_scale = self._channel_stats()

    def _official_split(self) -> list[str] | None:
        """The release's split per clip, as ``make_splits`` takes it (Hollywood2 adds its autotrain choice)."""
        return self.cache.official_split

    def _split_keys(self) -> dict:
        """The config keys of the protocol's split: folds for cross-validation, the test share for ye2018."""
        if self.protocol in ("yang2017", "group"):
            return {"fold": int(self.cfg["fold"]), "num_folds": int(self.cfg["num_folds"])}
        if self.protocol == "ye2018":
            return {"test_fraction": float(self.cfg["test_fraction"])}
        return {}

    def _timeline(self, i: int) -> np.ndarray:
        """Stored-frame indices of clip i after resampling to ``fps`` and truncation to ``max_frames``."""
        if i not in self._timelines:
            n = int(self.cache.lengths[i])
            self._timelines[i] = resample_indices(n, self.cache.clip_fps(i), self.fps)[: self.max_frames]
        return self._timelines[i]

    def _frame_indices(self, i: int, rng: np.random.Generator | None) -> np.ndarray:
        """Frames of clip i for one example: ``frames`` of them (random sorted positions with ``rng``,
        evenly spaced without), or the whole timeline."""
        timeline = self._timeline(i)
        n, k = len(timeline), self.frames
        if k is None:
            return timeline
        if rng is None:
            pos = np.round(np.linspace(0, n - 1, k)).astype(np.int64)
        else:
            pos = np.sort(rng.choice(n, size=k, replace=n < k))
        return timeline[pos]

    def _read(self, i: int, idx: np.ndarray) -> np.ndarray:
        frames = self.cache.read(i, idx)
        if self.cache.frame_size != self.frame_size:
            frames = resize_frames(frames, self.frame_size)
        return frames

    def _make_batch(self, clips: np.ndarray, step: int | None) -> Batch:
        """Batch of clips; ``step`` None means evaluation (fixed frames), else training sampling."""
        idx = [self._frame_indices(int(i), None if step is None else
                                   seeded_numpy(self.seed, step, int(i))) for i in clips]
        steps = max(len(f) for f in idx)
        width, height = self.frame_size
        frames = np.empty((len(clips), steps, height, width, 3), dtype=np.uint8)
        for b, (i, f) in enumerate(zip(clips, idx)):
            if self.cache.frame_size == self.frame_size:  # straight from the memmap into the batch
                copy_runs(frames[b], self.cache.frames, self.cache.offsets[int(i)] + f)
            else:
                frames[b, : len(f)] = self._read(int(i), f)
            frames[b, len(f) :] = 0
        batch = {"frames": torch.from_numpy(frames),
                 "labels": torch.from_numpy(self.cache.labels[np.asarray(clips)])}
        if self.frames is None:  # variable length: the net masks steps past each clip's end
            batch["lengths"] = torch.tensor([len(f) for f in idx], dtype=torch.int64)
        return batch

    def _require_data(self) -> None:
        if self.cache is None:
            raise RuntimeError(f"{type(self).__name__}.prepare() must run before batches are drawn")

    def steps_per_epoch(self) -> int:
        self._require_data()
        return max(1, len(self.splits["train"]) // self.batch_size)

    def train_batch(self, step: int) -> Batch:
        """Batch ``step``: epoch = step // steps_per_epoch, clip order a permutation of (seed, epoch),
        frame positions drawn from (seed, step, clip). A pure function of (seed, step).

        With ``task.prefetch`` = k > 0, k background threads assemble batches step+1 .. step+k while the
        caller trains on this one (numpy copies release the GIL). Batches being a pure function of the step,
        prefetching changes nothing but the waiting time.
        """
        self._require_data()
        if self.prefetch <= 0:
            return self._train_batch(step)
        future = self._pending.pop(step, None)
        for stale in [s for s in self._pending if not step < s <= step + self.prefetch]:
            self._pending.pop(stale).cancel()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.prefetch, thread_name_prefix=f"{self.name}-prefetch")
        for ahead in range(step + 1, step + self.prefetch + 1):
            if ahead not in self._pending:
                self._pending[ahead] = self._executor.submit(self._train_batch, ahead)
        return future.result() if future is not None else self._train_batch(step)

    def _train_batch(self, step: int) -> Batch:
        train = self.splits["train"]
        epoch, k = divmod(step, self.steps_per_epoch())
        perm = train[self._epoch_order(epoch, len(train))]
        if len(perm) < self.batch_size:
            perm = np.resize(perm, self.batch_size)
        return self._make_batch(perm[k * self.batch_size : (k + 1) * self.batch_size], step)

    def eval_batches(self, split: str):
        """Deterministic batches over a split; with every frame, clips of similar length are grouped and
        a batch holds at most ``eval_frame_budget`` padded frames (bounded memory on long clips)."""
        self._require_data()
        clips = self.splits[split]
        if self.frames is not None:
            for s in range(0, len(clips), self.eval_batch_size):
                yield self._make_batch(clips[s : s + self.eval_batch_size], None)
            return
        lengths = np.array([len(self._timeline(int(i))) for i in clips])
        order = clips[np.argsort(lengths, kind="stable")]
        sizes = lengths[np.argsort(lengths, kind="stable")]
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and end - start < self.eval_batch_size
                   and (end - start + 1) * sizes[end] <= self.eval_frame_budget):
                end += 1
            yield self._make_batch(order[start:end], None)
            start = end

    def _channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over evenly spaced frames of up to 64 training clips."""
        train = self.splits["train"]
        chosen = train[np.round(np.linspace(0, len(train) - 1, min(64, len(train)))).astype(np.int64)]
        pixels = []
        for i in chosen:
            timeline = self._timeline(int(i))
            pos = np.round(np.linspace(0, len(timeline) - 1, min(8, len(timeline)))).astype(np.int64)
            pixels.append(self._read(int(i), timeline[pos]).reshape(-1, 3))
        pixels = np.concatenate(pixels)
        mean = torch.tensor(pixels.mean(0, dtype=np.float64), dtype=torch.float32)
        std = torch.tensor(pixels.std(0, dtype=np.float64), dtype=torch.float32)
        return mean, std.clamp_min(1.0)

    # ------------------------------------------------------------------------------------ loss / eval
    def loss(self, model: nn.Module, batch: Batch, state=None):
        logits = model(batch["frames"], batch.get("lengths"))
        labels = batch["labels"]
        if self.multilabel:  # one sigmoid per class, BCE averaged over clips and classes (Keras binary_crossentropy)
            bce = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            l2 = model.classifier.weight.pow(2).sum()
            return bce + self.l2 * l2, {"bce": float(bce.detach()), "l2_classifier": float(l2.detach())}, None
        ce = F.cross_entropy(logits, labels)
        l2 = model.classifier.weight.pow(2).sum()
        loss = ce + self.l2 * l2
        accuracy = (logits.argmax(-1) == labels).float().mean()
        stats = {"ce": float(ce.detach()), "accuracy": float(accuracy), "l2_classifier": float(l2.detach())}
        return loss, stats, None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        if self.multilabel:
            return self._evaluate_multilabel(model, split)
        correct, ce_sum, count = 0, 0.0, 0
        with evaluating(model):
            for batch in self.eval_batches(split):
                lengths = batch.get("lengths")
                logits = model(batch["frames"].to(self.device),
                               None if lengths is None else lengths.to(self.device))
                labels = batch["labels"].to(self.device)
                ce_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
                count += len(labels)
        return {"accuracy": correct / count, "loss": ce_sum / count}

    def _evaluate_multilabel(self, model: nn.Module, split: str) -> dict[str, float]:
        """``map``: the mean over classes of the average precision of the sigmoid scores over the split (classes
        without a positive clip in the split are left out); ``loss``: the mean binary cross-entropy."""
        scores, targets, bce_sum = [], [], 0.0
        with evaluating(model):
            for batch in self.eval_batches(split):
                lengths = batch.get("lengths")
                logits = model(batch["frames"].to(self.device),
                               None if lengths is None else lengths.to(self.device)).float()
                labels = batch["labels"].to(logits.device, logits.dtype)
                bce_sum += float(F.binary_cross_entropy_with_logits(logits, labels, reduction="sum"))
                scores.append(logits.cpu().double().numpy())
                targets.append(batch["labels"].numpy())
        scores, targets = np.concatenate(scores), np.concatenate(targets)
        mean_ap, _ = mean_average_precision(scores, targets)
        return {"map": mean_ap, "loss": bce_sum / targets.size}

    def summarize(self, history: list[dict]) -> dict:
        if self.cache is None:
            return {}
        return {
            "protocol": self.protocol,
            "fold": int(self.cfg["fold"]) if self.protocol in ("yang2017", "group") else None,
            "frames_per_clip": self.frames if self.frames is not None else "all",
            "clips": {name: int(len(idx)) for name, idx in self.splits.items()},
        }


class UCF11Task(VideoTask):
    name = "ucf11"
    protocols = ("ye2018", "yang2017", "group")

    def _auto_fps(self) -> float | None:
        return 24.0 if self.protocol == "yang2017" else None  # Yang 2017 resampled UCF11 to 24 fps


class Hollywood2Task(VideoTask):
    name = "hollywood2"
    metric = "map"
    protocols = ("official",)
    multilabel = True

    def _official_split(self) -> list[str] | None:
        """The clean train/test split; the autotrain clips of a cache prepared with --autotrain join the training
        split with ``task.autotrain=true`` and are left out otherwise."""
        marks = self.cache.official_split
        if not self.cfg["autotrain"]:
            return [m if m != "autotrain" else "unused" for m in marks]
        if "autotrain" not in marks:
            raise UserError(f"task.autotrain=true but the cache in {self.cache.dir} holds no autotrain clip; "
                            "re-run `python scripts/prepare_video.py --dataset hollywood2 --autotrain` on it")
        return marks


class YouTubeCelebritiesTask(VideoTask):
    name = "youtube_celebrities"
    protocols = ("group", "yang2017")
