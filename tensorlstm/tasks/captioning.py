"""Image captioning: Show and Tell (Vinyals et al. 2015) on MSCOCO (Karpathy split) or the generated `shapes`,
with any cell of the registry as the decoder (Ye et al. 2018 replaced its LSTM by TT- and BT-LSTMs).

Data: :mod:`tensorlstm.data.coco` (official 2014 json layout + ``dataset_coco.json``; ``task.dataset=shapes``
writes a generated set in that layout first, :mod:`tensorlstm.data.shapes`). Image features are extracted once
by ``task.encoder`` into a memory-mapped cache. Model: :class:`~tensorlstm.models.captioner.ShowAndTell`,
trained with teacher forcing on every (image, caption) pair, cross-entropy per word. Evaluation: beam search
(``task.beam_size``; 1 = greedy) on the split's images, scored by pycocoevalcap against all references:
``bleu1``..``bleu4``, ``meteor``, ``rouge_l``, ``cider`` (CIDEr-D), plus ``nll`` (teacher-forced nats per
word). Model selection on validation ``task.select_metric`` (CIDEr-D), test at the best checkpoint.
Each evaluation writes ``captions_<step>.png`` and ``captions_valid.json``; the final test
``captions_test.png`` and ``captions_test.json`` (COCO results format: ``[{"image_id", "caption"}]``).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tensorlstm.data import shapes as shapes_data
from tensorlstm.data.coco import CaptionItem, FeatureCache, Vocabulary, load_coco
from tensorlstm.errors import UserError
from tensorlstm.models.captioner import ShowAndTell
from tensorlstm.models.decoding import beam_search, greedy
from tensorlstm.models.image_encoder import CNNS, ENCODERS, ImageEncoder
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.caption_metrics import METRICS, CaptionScorer
from tensorlstm.tasks.common import EpochOrder, evaluating

DATASETS = ("shapes", "coco")
DEFAULT_ENCODER = {"shapes": "pixels", "coco": "inception_v3"}  # task.encoder=null


class CaptioningTask(Task):
    name = "captioning"
    higher_is_better = True
    scores_next_step = True  # the decoder predicts word t+1 at step t: tLSTM norm=cn (lookahead) is refused

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.dataset = str(cfg["dataset"])
        if self.dataset not in DATASETS:
            raise UserError(f"unknown task.dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}")
        self.encoder_name = str(cfg["encoder"] or DEFAULT_ENCODER[self.dataset])
        if self.encoder_name not in ENCODERS:
            raise UserError(f"unknown task.encoder {self.encoder_name!r}; choose one of: {', '.join(ENCODERS)}")
        self.metric = str(cfg["select_metric"])
        allowed = (*METRICS, "spice") if cfg["spice"] else METRICS
        if self.metric not in allowed:
            raise UserError(f"task.select_metric={self.metric!r}; choose one of: {', '.join(allowed)}")
        for key in ("beam_size", "batch_size", "eval_batch_size", "max_words", "min_count", "embed_size",
                    "hidden_size"):
            if int(cfg[key]) < 1:
                raise UserError(f"task.{key}={cfg[key]} must be >= 1")
        self.beam_size, self.batch_size = int(cfg["beam_size"]), int(cfg["batch_size"])
        self.max_words = int(cfg["max_words"])
        self.order = EpochOrder(seed)
        self.scorer = CaptionScorer(spice=bool(cfg["spice"]))
        self.splits: dict[str, list[CaptionItem]] | None = None
        self.vocab: Vocabulary | None = None
        self.generated: dict[str, dict[int, str]] = {}

    # ------------------------------------------------------------------------------------------ model
    def feature_size(self) -> int:
        return 3 * int(self.cfg["pixels_grid"]) ** 2 if self.encoder_name == "pixels" else 2048

    def build_model(self, make_cell: CellFactory) -> nn.Module:
        cfg = self.cfg
        decoder = make_cell(int(cfg["embed_size"]), int(cfg["hidden_size"]), in_modes=cfg["in_modes"],
                            hidden_modes=cfg["hidden_modes"])
        vocab = len(self.vocab) if self.vocab is not None else int(cfg["info_vocab_size"])
        start = self.vocab.start if self.vocab is not None else 1
        return ShowAndTell(self.feature_size(), vocab, int(cfg["embed_size"]), decoder, start=start,
                           dropout=float(cfg["dropout"]), zero_image=bool(cfg["zero_image_features"]))

    # ------------------------------------------------------------------------------------------- data
    def prepare(self) -> None:
        if self.splits is not None:
            return
        cfg = self.cfg
        data_dir = Path(cfg["data_dir"])
        if self.dataset == "shapes":
            s = cfg["shapes"]
            shapes_data.ensure_shapes(data_dir, shapes_data.settings(
                s["train"], s["valid"], s["test"], s["image_size"], s["captions"], s["max_objects"], s["seed"]))
        splits = load_coco(data_dir, str(cfg["split_file"]))
        items = sorted({it.image_id: it for v in splits.values() for it in v}.values(), key=lambda it: it.image_id)
        if self.encoder_name in CNNS:
            device = str(cfg["feature_device"])
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            encoder = ImageEncoder(self.encoder_name, str(cfg["encoder_weights"]), cfg["image_size"], device=device)
        else:
            encoder = ImageEncoder("pixels", grid=int(cfg["pixels_grid"]))
        cache = FeatureCache(cfg["feature_dir"] or data_dir / "features", encoder.key, items, encoder.feature_size)
        self.features = cache.build(encoder, int(cfg["feature_batch_size"]))
        self.row = cache.row
        bad = set(cache.unreadable())
        self.splits = {k: [it for it in v if it.image_id not in bad] for k, v in splits.items()}
        for k, v in self.splits.items():
            if not v:
                raise UserError(f"no readable image left in the {k} split (see {cache.unreadable_path})")
        train = self.splits["train"]
        self._feature_stats(np.array(sorted(self.row[it.image_id] for it in train)))
        self.vocab = Vocabulary.build([c for it in train for c in it.captions], int(cfg["min_count"]))
        self.tokens, self.caption_rows = self._encode(train)

    def _feature_stats(self, rows: np.ndarray) -> None:
        """Mean and std per feature over (at most 20,000 of) the training images (task.normalize_features)."""
        F_ = self.features.shape[1]
        self.mean, self.std = np.zeros(F_, dtype=np.float32), np.ones(F_, dtype=np.float32)
        if not self.cfg["normalize_features"]:
            return
        rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), 20000)).round().astype(int)]
        x = np.asarray(self.features[np.unique(rows)], dtype=np.float64)
        std = x.std(0)
        self.mean = x.mean(0).astype(np.float32)
        self.std = np.maximum(std, 1e-2 * std.mean() + 1e-8).astype(np.float32)

    def _features(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows, kind="stable")  # the memory map reads faster in row order
        feats = np.empty((len(rows), self.features.shape[1]), dtype=np.float32)
        feats[order] = self.features[rows[order]]
        return (feats - self.mean) / self.std

    def _encode(self, items: list[CaptionItem]) -> tuple[np.ndarray, np.ndarray]:
        """All captions of the items as (N, max_words + 2) token ids padded with <pad>, and their feature rows."""
        caps = [(self.row[it.image_id], self.vocab.encode(c, self.max_words)) for it in items for c in it.captions]
        tokens = np.full((len(caps), self.max_words + 2), self.vocab.pad, dtype=np.int64)
        for k, (_, ids) in enumerate(caps):
            tokens[k, : len(ids)] = ids
        return tokens, np.array([r for r, _ in caps], dtype=np.int64)

    def train_batch(self, step: int) -> Batch:
        """Pairs (image, caption) in an epoch order drawn from (seed, epoch): a pure function of (seed, step)."""
        self.prepare()
        n = len(self.tokens)
        if n < self.batch_size:
            raise UserError(f"task.batch_size={self.batch_size} exceeds the {n} training captions; lower it")
        epoch, i = divmod(step, n // self.batch_size)
        idx = self.order(epoch, n)[i * self.batch_size : (i + 1) * self.batch_size].numpy()
        return self._batch(self.tokens[idx], self.caption_rows[idx])

    def _batch(self, tokens: np.ndarray, rows: np.ndarray) -> Batch:
        width = int((tokens != self.vocab.pad).sum(1).max())  # trim the padding all rows share
        feats = self._features(rows)
        return {"features": torch.from_numpy(feats), "tokens": torch.from_numpy(tokens[:, :width].copy())}

    # ------------------------------------------------------------------------------------------- loss
    def _nll(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = batch["tokens"]
        logits = model(batch["features"].to(_dtype(model)), tokens)
        target = tokens[:, 1:]
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                              ignore_index=self.vocab.pad, reduction="sum")
        return nll, self._words(tokens)

    def _words(self, tokens: torch.Tensor) -> torch.Tensor:
        """How many caption words (and end tokens) the loss is a mean over: the targets that are not padding."""
        return (tokens[:, 1:] != self.vocab.pad).sum()

    def loss_terms(self, batch: Batch) -> float:
        """The loss is a mean over the caption words (and end tokens) of the batch, not over its images."""
        return float(self._words(batch["tokens"]))

    def loss(self, model: nn.Module, batch: Batch, state=None) -> tuple[torch.Tensor, dict, None]:
        total, words = self._nll(model, batch)
        loss = total / words
        return loss, {"nll": float(loss.detach())}, None

    # ------------------------------------------------------------------------------------- evaluation
    def _items(self, split: str) -> list[CaptionItem]:
        self.prepare()
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}")
        items = self.splits[split]
        limit = self.cfg["valid_max_images"]
        return items[: int(limit)] if limit and split == "valid" else items

    @torch.no_grad()
    def caption(self, model: nn.Module, items: list[CaptionItem]) -> dict[int, str]:
        """Captions of the items by beam search (task.beam_size; 1 = greedy), image id -> text."""
        out: dict[int, str] = {}
        step = int(self.cfg["eval_batch_size"])
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            rows = np.array([self.row[it.image_id] for it in chunk])
            feats = torch.from_numpy(self._features(rows))
            feats = feats.to(device=self.device, dtype=_dtype(model))
            max_len = self.max_words + 1  # words and the end token
            if self.beam_size == 1:
                seqs = greedy(model, feats, self.vocab.end, max_len)
            else:
                seqs, _ = beam_search(model, feats, self.vocab.end, max_len, self.beam_size,
                                      float(self.cfg["length_penalty"]))
            out.update({it.image_id: self.vocab.decode(s) for it, s in zip(chunk, seqs)})
        return out

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        items = self._items(split)
        with evaluating(model):
            hyps = self.caption(model, items)
            tokens, rows = self._encode(items)
            total = words = 0
            for start in range(0, len(tokens), int(self.cfg["eval_batch_size"])):
                batch = self._batch(tokens[start : start + int(self.cfg["eval_batch_size"])],
                                    rows[start : start + int(self.cfg["eval_batch_size"])])
                nll, n = self._nll(model, {k: v.to(self.device) for k, v in batch.items()})
                total, words = total + float(nll), words + int(n)
        self.generated[split] = hyps
        scores = self.scorer({it.image_id: it.captions for it in items}, hyps)
        return {**scores, "nll": total / max(words, 1)}

    # -------------------------------------------------------------------------------------- artifacts
    def artifacts(self, model: nn.Module, run_dir: Path, step: int) -> list[Path]:
        """``captions_<step>.png`` (generated and one reference caption under each image) and
        ``captions_valid.json`` of the evaluation that just ran."""
        return self._write(Path(run_dir), "valid", f"captions_{step}.png")

    def test_artifacts(self, model: nn.Module, run_dir: Path) -> list[Path]:
        return self._write(Path(run_dir), "test", "captions_test.png")

    def _write(self, run_dir: Path, split: str, png: str) -> list[Path]:
        hyps = self.generated.get(split)
        if not hyps:
            return []
        run_dir.mkdir(parents=True, exist_ok=True)
        results = run_dir / f"captions_{split}.json"
        results.write_text(json.dumps([{"image_id": int(k), "caption": v} for k, v in hyps.items()]) + "\n")
        shown = [it for it in self._items(split) if it.image_id in hyps][: int(self.cfg["grid_images"])]
        return [save_caption_grid(shown, hyps, run_dir / png), results]


def save_caption_grid(items: list[CaptionItem], hyps: dict[int, str], path: Path, tile: int = 192,
                      ncol: int = 4) -> Path:
    """A PNG of the images, each with the generated caption and its first reference below it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    chars = max(10, tile // 7)
    blocks = [(textwrap.wrap("ours: " + hyps[it.image_id], chars)[:3], textwrap.wrap("ref: " + it.captions[0],
                                                                                     chars)[:3]) for it in items]
    line = 12
    text_h = line * (max((len(a) + len(b) for a, b in blocks), default=2) + 1)
    nrow = -(-len(items) // ncol)
    grid = Image.new("RGB", (ncol * tile, max(nrow, 1) * (tile + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (it, (ours, ref)) in enumerate(zip(items, blocks)):
        r, c = divmod(k, ncol)
        x, y = c * tile, r * (tile + text_h)
        with Image.open(it.path) as im:
            im = im.convert("RGB")
            scale = (tile - 8) / max(im.size)
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR)
            grid.paste(im, (x + (tile - im.width) // 2, y + 4))
        for n, text in enumerate(ours):
            draw.text((x + 4, y + tile + n * line), text, fill=(0, 0, 160), font=font)
        for n, text in enumerate(ref):
            draw.text((x + 4, y + tile + (len(ours) + n) * line), text, fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32
