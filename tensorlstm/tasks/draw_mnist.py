"""DRAW on binarized MNIST (Gregor et al. 2015), with swappable encoder and decoder cells (Ye 2018).

The encoder is the user's ``cell=``; the decoder is ``task.decoder_cell``: null (the same cell config as
the encoder), a cell name (``lstm``, ``gru``, ``tt``, ``bt``, ``cp``, ``tucker``, ``tlstm``, ``slstm``; the
factorized ones take ``task.decoder_rank``) or a full cell config dict (``{name: lstm, base: lstm, format:
dense}``, ...). Metric: ``nll_bound``, the negative variational bound on -log p(x) in nats per image:
BCE-with-logits summed over the 784 pixels + the analytic KL of every glimpse, one posterior sample per
image (``task.eval_samples`` averages more; the bound's expectation is the same).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tensorlstm.cells import CELLS, build_cell
from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.binarized_mnist import load_binarized_mnist
from tensorlstm.defaults import cell_config
from tensorlstm.errors import UserError
from tensorlstm.models.draw import DRAW, DrawShape, bernoulli_nll
from tensorlstm.tasks.base import Batch, CellFactory, Task
from tensorlstm.tasks.common import EpochOrder, evaluating, seeded_generator, seeded_numpy
from tensorlstm.tensor import factorized_formats

FACTORIZED = factorized_formats()


def decoder_cell_config(spec: str | dict, rank: int | None) -> dict:
    """The cell config of the decoder from ``task.decoder_cell``: a cell name (that cell's configs/cell/<name>.yaml,
    with ``rank`` for a factorized one) or a config dict (its keys over the named cell's YAML defaults)."""
    if isinstance(spec, dict):
        if "name" not in spec:
            raise UserError("task.decoder_cell needs a 'name' (e.g. {name: lstm, base: lstm, format: dense})")
        name, overrides = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    elif isinstance(spec, str):
        name, overrides = spec, {"rank": rank} if spec in FACTORIZED and rank is not None else {}
    else:
        raise UserError(f"task.decoder_cell must be null, a cell name or a cell config, got {spec!r}")
    if name not in CELLS:
        raise UserError(f"unknown task.decoder_cell {name!r}; choose one of: {', '.join(sorted(CELLS))}")
    try:
        return cell_config(name, **overrides)
    except KeyError as e:
        raise UserError(f"task.decoder_cell: {e.args[0]}; see configs/cell/{name}.yaml for its keys") from None


GRID_SCALE = 3      # pixels per image pixel in the saved grids (28 px digits are too small to judge)
LABEL_HEIGHT = 16   # pixels of the caption strip above a grid (before scaling: never)


def save_grid(images: np.ndarray, path: Path, ncol: int, pad: int = 2, label: str | None = None,
              scale: int = GRID_SCALE) -> Path:
    """Write images (n, H, W) with values in [0, 1] as one grey PNG, ncol per row, light separators, each
    pixel drawn as scale x scale, with `label` (what and when) in a strip above the grid."""
    from PIL import Image, ImageDraw

    n, h, w = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad), 0.5, dtype=np.float32)
    for k in range(n):
        r, c = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[k]
    grid = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    image = Image.fromarray((np.clip(grid, 0, 1) * 255).round().astype(np.uint8), mode="L")
    if label:
        framed = Image.new("L", (image.width, image.height + LABEL_HEIGHT), 255)
        framed.paste(image, (0, LABEL_HEIGHT))
        ImageDraw.Draw(framed).text((4, 2), label, fill=0)
        image = framed
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


class DrawMNISTTask(Task):
    name = "draw_mnist"
    metric = "nll_bound"
    higher_is_better = False

    def __init__(self, cfg: dict, seed: int) -> None:
        super().__init__(cfg, seed)
        self.shape = DrawShape(
            height=28,
            width=28,
            latent_size=int(cfg["latent_size"]),
            glimpses=int(cfg["glimpses"]),
            attention=bool(cfg["attention"]),
            read_n=int(cfg["read_n"]),
            write_n=int(cfg["write_n"]),
            learned_canvas=bool(cfg["learned_canvas"]),
        )
        s = self.shape
        if s.glimpses < 1 or s.latent_size < 1 or s.read_n < 1 or s.write_n < 1:
            raise UserError(
                f"task.glimpses, latent_size, read_n and write_n must be >= 1 "
                f"(got {s.glimpses}, {s.latent_size}, {s.read_n}, {s.write_n})"
            )
        self.binarization = str(cfg["binarization"])
        if self.binarization not in ("fixed", "dynamic", "larochelle"):
            raise UserError(
                f"unknown task.binarization {self.binarization!r}; choose fixed, dynamic or larochelle"
            )
        self.batch_size = int(cfg["batch_size"])
        self.eval_batch_size = int(cfg["eval_batch_size"])
        self.data: dict[str, np.ndarray] | None = None
        self._epoch_order = EpochOrder(seed, numpy=True)

    # ------------------------------------------------------------------------------------------ model
    def build_model(self, make_cell: CellFactory) -> nn.Module:
        cfg = self.cfg
        hidden = int(cfg["hidden_size"])
        dec_hidden = int(cfg["decoder_hidden_size"] or hidden)
        hidden_modes = cfg["hidden_modes"]
        dec_hidden_modes = hidden_modes if dec_hidden == hidden else None
        spec = cfg["decoder_cell"]
        latent, dec_modes = self.shape.latent_size, cfg["decoder_in_modes"]
        if spec is None:  # the user's cell config for both
            decoder = make_cell(latent, dec_hidden, in_modes=dec_modes, hidden_modes=dec_hidden_modes)
        else:
            dcfg = decoder_cell_config(spec, cfg["decoder_rank"])
            decoder = build_cell(dcfg, latent, dec_hidden, in_modes=dec_modes, hidden_modes=dec_hidden_modes)
        enc_in = self.shape.encoder_input_size(decoder.output_size)
        encoder = make_cell(enc_in, hidden, in_modes=cfg["encoder_in_modes"], hidden_modes=hidden_modes)
        for net, what in ((encoder, "encoder"), (decoder, "decoder")):
            if not isinstance(net, RecurrentNet):
                raise UserError(f"the DRAW {what} must be a recurrent net (a cell), got {type(net).__name__}")
        return DRAW(self.shape, encoder, decoder)

    # ------------------------------------------------------------------------------------------- data
    def prepare(self) -> None:
        if self.data is not None:
            return
        cfg = self.cfg
        self.data = load_binarized_mnist(
            cfg["data_dir"],
            binarization=self.binarization,
            seed=int(cfg["binarize_seed"]),
            valid_size=int(cfg["valid_size"]),
            cache_dir=cfg["cache_dir"],
        )
        if len(self.data["train"]) < self.batch_size:
            n = len(self.data["train"])
            raise UserError(f"task.batch_size={self.batch_size} exceeds the {n} training images; lower it")

    def train_batch(self, step: int) -> Batch:
        """A pure function of (seed, step): epoch-wise permutations; dynamic bits drawn from (seed, step)."""
        self.prepare()
        n = len(self.data["train"])
        per_epoch = n // self.batch_size
        epoch, i = divmod(step, per_epoch)
        idx = self._epoch_order(epoch, n)[i * self.batch_size : (i + 1) * self.batch_size]
        if self.binarization == "dynamic":
            grey = self.data["train_grey"][idx].astype(np.float32) / 255.0
            rng = seeded_numpy(self.seed, 1, step)
            bits = rng.random(grey.shape, dtype=np.float32) < grey
        else:
            bits = self.data["train"][idx]
        return {"x": torch.from_numpy(bits.astype(np.float32))}

    # ------------------------------------------------------------------------------------------- loss
    def loss(self, model: nn.Module, batch: Batch, state=None) -> tuple[torch.Tensor, dict, None]:
        x = batch["x"].to(dtype=_dtype(model))
        logits, kl = model(x)
        nll = bernoulli_nll(logits, x)
        bound = nll + kl
        loss = bound.mean()
        with torch.no_grad():
            stats = {"bce": float(nll.mean()), "kl": float(kl.mean()), "nll_bound": float(loss)}
        return loss, stats, None

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        self.prepare()
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}")
        images = self.data[split]
        limit = self.cfg["valid_max_images"]
        if limit and split == "valid":
            images = images[: int(limit)]
        samples = max(1, int(self.cfg["eval_samples"]))
        with evaluating(model):
            gen = seeded_generator(self.seed + (1 if split == "valid" else 2), device=self.device)
            dtype = _dtype(model)
            total_bce = total_kl = 0.0
            for start in range(0, len(images), self.eval_batch_size):
                x = torch.from_numpy(images[start : start + self.eval_batch_size].astype(np.float32))
                x = x.to(device=self.device, dtype=dtype)
                for _ in range(samples):
                    logits, kl = model(x, generator=gen)
                    total_bce += float(bernoulli_nll(logits, x).sum())
                    total_kl += float(kl.sum())
        count = len(images) * samples
        bce, kl = total_bce / count, total_kl / count
        return {"nll_bound": bce + kl, "bce": bce, "kl": kl}

    # -------------------------------------------------------------------------------------- artifacts
    def _generate(self, model: nn.Module, n: int, seed: int | None) -> np.ndarray:
        """n samples from the prior: Bernoulli means after every glimpse, (T, n, H, W) in [0, 1]."""
        gen = None
        if seed is not None:
            gen = seeded_generator(seed, device=self.device)
        with evaluating(model):
            logits = model.generate(n, device=self.device, generator=gen)
        s = self.shape
        return torch.sigmoid(logits).float().cpu().numpy().reshape(s.glimpses, n, s.height, s.width)

    def artifacts(self, model: nn.Module, run_dir: Path, step: int) -> list[Path]:
        """``samples_<step>.png`` (final canvases) and ``canvas_<step>.png`` (rows: samples, columns:
        the canvas after successive glimpses, at most 32 columns evenly spaced, the last one included)."""
        run_dir = Path(run_dir)
        n = int(self.cfg["num_samples"])
        seq = self._generate(model, n, seed=self.seed + 3)  # the same noise at every step shows progress
        samples = save_grid(seq[-1], run_dir / f"samples_{step}.png", ncol=int(np.ceil(np.sqrt(n))),
                            label=f"DRAW samples from the prior, step {step:,}")
        return [samples, self.save_canvas_sequence(seq, run_dir / f"canvas_{step}.png", step=step)]

    def save_canvas_sequence(self, seq: np.ndarray, path: Path, rows: int = 8, max_cols: int = 32,
                             step: int | None = None) -> Path:
        T = seq.shape[0]
        cols = np.unique(np.linspace(0, T - 1, min(T, max_cols)).round().astype(int))
        rows = min(rows, seq.shape[1])
        tiles = seq[cols][:, :rows].transpose(1, 0, 2, 3).reshape(rows * len(cols), *seq.shape[2:])
        when = f", step {step:,}" if step is not None else ""
        label = f"canvas after glimpse {cols[0] + 1}..{cols[-1] + 1} of {T} (left to right){when}"
        return save_grid(tiles, path, ncol=len(cols), label=label)

    def sample(self, model: nn.Module, out_path: str | Path, n: int = 64, seed: int | None = None) -> Path:
        """Draw n new digits from the prior into a PNG grid at out_path (and the glimpse sequence of the
        first rows next to it, ``<stem>_canvas.png``). ``seed`` fixes the noise; None draws fresh noise."""
        out_path = Path(out_path)
        seq = self._generate(model, n, seed)
        self.save_canvas_sequence(seq, out_path.with_name(out_path.stem + "_canvas.png"))
        return save_grid(seq[-1], out_path, ncol=int(np.ceil(np.sqrt(n))), label=f"DRAW: {n} samples from the prior")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.float32
