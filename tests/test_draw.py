"""DRAW: filterbank attention, KL, binarized MNIST, the draw_mnist task end to end on tiny IDX files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tensorlstm.cells.base import RecurrentNet
from tensorlstm.data.binarized_mnist import load_binarized_mnist, read_amat
from tensorlstm.data.idx import write_idx
from tensorlstm.defaults import cell_config, group_config
from tensorlstm.errors import UserError
from tensorlstm.models.draw import (
    DRAW,
    DrawShape,
    attention_window,
    filterbank,
    filterbanks,
    gaussian_kl,
    read_patch,
    write_patch,
)
from tensorlstm.tasks.draw_mnist import GRID_SCALE, LABEL_HEIGHT, DrawMNISTTask, decoder_cell_config

D = torch.float64



class LSTMCellNet(RecurrentNet):
    """A stand-in recurrent net on nn.LSTMCell that records the input sizes it was stepped with."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size)
        self.output_size = hidden_size
        self.seen: list[int] = []

    def init_state(self, batch_size, device=None, dtype=None):
        z = torch.zeros(batch_size, self.output_size, device=device, dtype=dtype)
        return (z, z.clone())

    def step(self, x_t, state):
        self.seen.append(x_t.shape[-1])
        h, c = self.cell(x_t, state)
        return h, (h, c)

    def input_map_params(self) -> int:
        return self.cell.weight_ih.numel()


def stand_in_factory(built: list):
    def make(input_size, hidden_size, in_modes=None, hidden_modes=None):
        net = LSTMCellNet(input_size, hidden_size)
        built.append(net)
        return net

    return make


def raw_params(gx=0.0, gy=0.0, log_sigma2=0.0, log_delta=0.0, log_gamma=0.0, batch=1):
    return torch.tensor([[gx, gy, log_sigma2, log_delta, log_gamma]], dtype=D).repeat(batch, 1)


# ------------------------------------------------------------------------------------------ filterbank
@pytest.mark.parametrize("n,h,w", [(2, 28, 28), (5, 28, 28), (3, 17, 11), (1, 9, 9)])
def test_filterbank_shapes_and_rows_normalised(n, h, w):
    torch.manual_seed(0)
    params = torch.randn(6, 5, dtype=D)
    params[:, 2] -= 3.0  # include narrow windows
    fx, fy, gamma = filterbanks(params, h, w, n)
    assert fx.shape == (6, n, w) and fy.shape == (6, n, h) and gamma.shape == (6,)
    assert (fx >= 0).all() and (fy >= 0).all()
    torch.testing.assert_close(fx.sum(-1), torch.ones(6, n, dtype=D))
    torch.testing.assert_close(fy.sum(-1), torch.ones(6, n, dtype=D))
    # a window far off the image still gives normalised rows (its nearest border pixel), never NaN
    one = torch.ones(1, dtype=D)
    far = filterbank(1e3 * one, one, 1e-4 * one, n, w)
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far[0, :, -1], torch.ones(n, dtype=D))


def test_attention_window_follows_the_paper():
    """g~ = 0 is the image centre (A+1)/2; delta~ = 1 spreads N points over the whole image."""
    p = raw_params(0.5, -0.25, log_sigma2=math.log(2.0), log_delta=math.log(0.5), log_gamma=math.log(3.0))
    gx, gy, sigma2, delta, gamma = attention_window(p, height=20, width=30, n=4)
    assert float(gx) == pytest.approx(31 / 2 * 1.5)
    assert float(gy) == pytest.approx(21 / 2 * 0.75)
    assert float(sigma2) == pytest.approx(2.0)
    assert float(delta) == pytest.approx((30 - 1) / 3 * 0.5)
    assert float(gamma) == pytest.approx(3.0)


def test_glimpse_reads_the_pixel_it_is_centred_on():
    h, w, row, col = 28, 28, 9, 20  # 0-based pixel; the paper's coordinates are 1-based
    img = torch.zeros(1, h, w, dtype=D)
    img[0, row, col] = 1.0
    gx_t = 2 * (col + 1) / (w + 1) - 1
    gy_t = 2 * (row + 1) / (h + 1) - 1
    fx, fy, gamma = filterbanks(raw_params(gx_t, gy_t, math.log(1e-3), 0.0, math.log(2.0)), h, w, n=1)
    torch.testing.assert_close(read_patch(img, fx, fy, gamma), torch.full((1, 1, 1), 2.0, dtype=D))
    off = filterbanks(raw_params(gx_t + 0.2, gy_t, math.log(1e-3)), h, w, n=1)
    assert float(read_patch(img, *off)) < 1e-6


def test_write_of_a_read_is_the_projection_and_the_identity_at_full_resolution():
    torch.manual_seed(1)
    x = torch.rand(3, 28, 28, dtype=D)
    # any window: write(read(x)) = Fy^T Fy x Fx^T Fx (the gammas cancel)
    fx, fy, gamma = filterbanks(torch.randn(3, 5, dtype=D), 28, 28, n=5)
    expected = fy.transpose(1, 2) @ fy @ x @ fx.transpose(1, 2) @ fx
    torch.testing.assert_close(write_patch(read_patch(x, fx, fy, gamma), fx, fy, gamma), expected)
    # N = image size, centred, delta = 1, narrow sigma: Fx = Fy = I, read = gamma x, write(read(x)) = x
    identity = raw_params(log_sigma2=math.log(0.02), log_gamma=math.log(0.5), batch=3)
    fx, fy, gamma = filterbanks(identity, 28, 28, 28)
    torch.testing.assert_close(fx, torch.eye(28, dtype=D).expand(3, 28, 28), atol=1e-9, rtol=0)
    torch.testing.assert_close(read_patch(x, fx, fy, gamma), 0.5 * x, atol=1e-9, rtol=0)
    torch.testing.assert_close(write_patch(read_patch(x, fx, fy, gamma), fx, fy, gamma), x, atol=1e-9, rtol=0)


def test_read_and_write_gradients():
    torch.manual_seed(2)
    x = torch.rand(2, 7, 6, dtype=D)
    params = torch.randn(2, 5, dtype=D, requires_grad=True)
    patch = torch.randn(2, 3, 3, dtype=D, requires_grad=True)

    def f(p, w):
        fx, fy, g = filterbanks(p, 7, 6, 3)
        return read_patch(x, fx, fy, g).sum() + write_patch(w, fx, fy, g).pow(2).sum()

    assert torch.autograd.gradcheck(f, (params, patch))


# ------------------------------------------------------------------------------------------------- KL
def test_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(4, 5, generator=g, dtype=D)
    log_sigma = 0.5 * torch.randn(4, 5, generator=g, dtype=D)
    analytic = gaussian_kl(mu, log_sigma)
    n = 200_000
    sigma = log_sigma.exp()
    z = mu + sigma * torch.randn(n, 4, 5, generator=g, dtype=D)
    log_q = (-0.5 * ((z - mu) / sigma) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    diff = log_q - log_p
    stderr = diff.std(0) / math.sqrt(n)
    assert ((diff.mean(0) - analytic).abs() < 4 * stderr).all()
    assert float(gaussian_kl(torch.zeros(1, 3, dtype=D), torch.zeros(1, 3, dtype=D))) == 0.0


# ------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("attention", [True, False])
def test_draw_wires_glimpses_and_returns_bound_terms(attention):
    torch.manual_seed(4)
    shape = DrawShape(latent_size=6, glimpses=5, attention=attention, read_n=2, write_n=3)
    dec = LSTMCellNet(6, 16)
    enc = LSTMCellNet(shape.encoder_input_size(16), 12)
    model = DRAW(shape, enc, dec).double()
    x = (torch.rand(3, 784, dtype=D) < 0.4).to(D)
    logits, kl, canvases = model(x, keep_canvases=True)
    assert logits.shape == (3, 784) and kl.shape == (3,) and len(canvases) == 5
    assert enc.seen == [(2 * 4 if attention else 2 * 784) + 16] * 5 and dec.seen == [6] * 5
    assert (kl > 0).all()
    torch.testing.assert_close(canvases[-1], logits)
    # the same generator draws the same posterior noise
    a = model(x, generator=torch.Generator().manual_seed(7))
    b = model(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0])
    gen = model.generate(4, generator=torch.Generator().manual_seed(0))
    assert gen.shape == (5, 4, 784)


def test_draw_kl_is_the_sum_over_glimpses():
    torch.manual_seed(5)
    shape = DrawShape(latent_size=4, glimpses=3, read_n=2, write_n=2)
    dec = LSTMCellNet(4, 8)
    model = DRAW(shape, LSTMCellNet(shape.encoder_input_size(8), 8), dec).double()
    recorded = []
    model.to_latent.register_forward_hook(lambda m, i, out: recorded.append(out))
    _, kl = model(torch.rand(2, 784, dtype=D))
    expected = sum(gaussian_kl(*o.chunk(2, dim=-1)) for o in recorded)
    assert len(recorded) == 3
    torch.testing.assert_close(kl, expected)


# ------------------------------------------------------------------------------------ binarized MNIST
def write_tiny_mnist(folder, n_train=120, n_test=40, seed=0, gz=True):
    """Blobs of varying intensity in the four IDX files (the real format)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        img = np.zeros((n, 28, 28), dtype=np.uint8)
        for k in range(n):
            r, c = rng.integers(4, 16, size=2)
            img[k, r : r + 8, c : c + 6] = rng.integers(60, 256, size=(8, 6))
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", img)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, size=n).astype(np.uint8))
    return folder


def test_fixed_binarization_is_fixed_by_its_seed_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = write_tiny_mnist(tmp_path / "mnist")
    a = load_binarized_mnist(data, "fixed", seed=3, valid_size=20)
    cache = tmp_path / "xdg" / "tensorlstm" / "binarized_mnist_seed3.npz"
    assert cache.exists()
    assert sorted(p.name for p in data.iterdir()) == sorted(  # the data folder is left alone
        f"{s}-{k}-idx{n}-ubyte.gz" for s in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))
    )
    stamp = cache.stat().st_mtime_ns
    b = load_binarized_mnist(data, "fixed", seed=3, valid_size=20)
    assert cache.stat().st_mtime_ns == stamp  # read back, not redrawn
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(a[split], b[split])
    assert a["train"].shape == (100, 784) and a["valid"].shape == (20, 784) and a["test"].shape == (40, 784)
    assert set(np.unique(a["train"])) <= {0, 1}
    c = load_binarized_mnist(data, "fixed", seed=4, valid_size=20, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "binarized_mnist_seed4.npz").exists()
    assert (a["train"] != c["train"]).any()
    # on pixels: bits are 1 with probability intensity/255, off pixels are always 0
    from tensorlstm.data.idx import load_mnist

    grey = load_mnist(data, "train")[0].reshape(120, -1)[:100].astype(float) / 255
    assert not a["train"][grey == 0].any()
    assert abs(a["train"][grey > 0].mean() - grey[grey > 0].mean()) < 0.03
    # new source images invalidate the cache
    write_tiny_mnist(data, seed=9)
    d = load_binarized_mnist(data, "fixed", seed=3, valid_size=20)
    assert (d["train"] != a["train"]).any()


def test_larochelle_amat_and_missing_data_errors(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, size=(5, 784))
    for split in ("train", "valid", "test"):
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", rows, fmt="%d")
    out = load_binarized_mnist(tmp_path, "larochelle")
    np.testing.assert_array_equal(out["valid"], rows)
    (tmp_path / "bad.amat").write_text("0 1 1\n")
    with pytest.raises(UserError):
        read_amat(tmp_path / "bad.amat")
    with pytest.raises(UserError, match="binarized_mnist_train.amat"):
        load_binarized_mnist(tmp_path / "empty", "larochelle")
    with pytest.raises(UserError, match="does not exist"):
        load_binarized_mnist(tmp_path / "nowhere", "fixed")


# ---------------------------------------------------------------------------------------- the task
def tiny_task_cfg(data_dir, **kw):
    """configs/task/draw_mnist.yaml at tiny sizes; the cache next to the data, never the user's ~/.cache."""
    tiny = dict(data_dir=str(data_dir), valid_size=20, batch_size=20, hidden_size=24, latent_size=4, glimpses=4,
                read_n=2, write_n=3, eval_batch_size=16, num_samples=6, decoder_cell=None,
                hidden_modes=None, encoder_in_modes=None, decoder_in_modes=None,
                cache_dir=str(Path(data_dir).parent / "cache"))
    return group_config("task", "draw_mnist", **{**tiny, **kw})


def test_decoder_cell_config_shorthands():
    assert decoder_cell_config("lstm", None) == cell_config("lstm")  # what cell=lstm composes to
    assert decoder_cell_config("bt", 3) == cell_config("bt", rank=3)
    assert decoder_cell_config({"name": "gru", "layers": 2}, 2) == cell_config("gru", layers=2)
    with pytest.raises(UserError, match="no key"):
        decoder_cell_config({"name": "gru", "layerz": 2}, None)
    with pytest.raises(UserError):
        decoder_cell_config({"base": "gru"}, None)


def test_encoder_is_the_users_cell_and_decoder_its_own(tmp_path):
    built: list = []
    task = DrawMNISTTask(tiny_task_cfg(tmp_path, decoder_cell="gru", decoder_hidden_size=10), seed=0)
    model = task.build_model(stand_in_factory(built))
    assert built == [model.encoder] and model.primary_net() is model.encoder
    assert model.decoder.output_size == 10 and not isinstance(model.decoder, LSTMCellNet)
    assert built[0].cell.input_size == 2 * 2 * 2 + 10
    built.clear()
    model = DrawMNISTTask(tiny_task_cfg(tmp_path), seed=0).build_model(stand_in_factory(built))
    assert len(built) == 2 and model.decoder is built[0] and model.encoder is built[1]


def test_training_steps_lower_the_loss_and_artifacts_are_written(tmp_path):
    data = write_tiny_mnist(tmp_path / "mnist", gz=False)
    cfg = tiny_task_cfg(data, decoder_cell="lstm", binarization="dynamic")
    task = DrawMNISTTask(cfg, seed=0)
    torch.manual_seed(0)
    model = task.build_model(stand_in_factory([]))
    task.prepare()
    b0, b1 = task.train_batch(3), DrawMNISTTask(cfg, seed=0).train_batch(3)
    torch.testing.assert_close(b0["x"], b1["x"])  # a pure function of (seed, step)
    assert b0["x"].shape == (20, 784) and set(b0["x"].unique().tolist()) <= {0.0, 1.0}
    before = task.evaluate(model, "valid")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(40):
        loss, stats, _ = task.loss(model, task.train_batch(step))
        assert stats["nll_bound"] == pytest.approx(stats["bce"] + stats["kl"], rel=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    after = task.evaluate(model, "valid")
    assert after["nll_bound"] < before["nll_bound"]
    assert task.evaluate(model, "valid") == after  # evaluation noise is fixed by the seed
    test = task.evaluate(model, "test")
    assert set(test) >= {"nll_bound", "bce", "kl"} and math.isfinite(test["nll_bound"])

    paths = task.artifacts(model, tmp_path / "run", step=40)
    assert [p.name for p in paths] == ["samples_40.png", "canvas_40.png"]
    w, h = Image.open(paths[0]).size
    s, label = GRID_SCALE, LABEL_HEIGHT  # each pixel drawn s x s, a caption strip on top
    assert (w, h) == (s * (3 * 30 + 2), s * (2 * 30 + 2) + label)  # 6 samples, 3 wide, 28 px + 2 px separators
    assert Image.open(paths[1]).size == (s * (4 * 30 + 2), s * (6 * 30 + 2) + label)  # 4 glimpses x 6 samples
    out = task.sample(model, tmp_path / "s" / "new.png", n=4, seed=1)
    assert out.exists() and Image.open(out).size == (s * (2 * 30 + 2), s * (2 * 30 + 2) + label)
    assert (tmp_path / "s" / "new_canvas.png").exists()


def test_task_with_registry_cells_builds_and_steps(tmp_path):
    """The real cells through tensorlstm.cells.build_cell, one step at a time, encoder BT."""
    from tensorlstm.cells import build_cell

    def make(input_size, hidden_size, in_modes=None, hidden_modes=None):
        cfg = cell_config("bt", rank=2, blocks=2)
        return build_cell(cfg, input_size, hidden_size, in_modes=in_modes, hidden_modes=hidden_modes)

    cfg = tiny_task_cfg(tmp_path, decoder_cell="lstm", hidden_size=16, hidden_modes=[2, 2, 2, 2])
    task = DrawMNISTTask(cfg, seed=0)
    model = task.build_model(make)
    x = (torch.rand(5, 784) < 0.3).float()
    loss, _, _ = task.loss(model, {"x": x})
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_missing_data_is_a_user_error(tmp_path):
    task = DrawMNISTTask(tiny_task_cfg(tmp_path / "absent"), seed=0)
    with pytest.raises(UserError, match="MNIST"):
        task.prepare()
    with pytest.raises(UserError, match="binarization"):
        DrawMNISTTask(tiny_task_cfg(tmp_path, binarization="soft"), seed=0)


@pytest.mark.parametrize(
    "cell,input_map",
    [
        (cell_config("lstm"), 264 * 4 * 256),
        # BT: N * (sum_k I_k J_k R + R^d), 264 = 11x4x3x2 -> 16x4x4x4 (gates on the first mode)
        (cell_config("bt", rank=4, blocks=2),
         2 * (4 * (11 * 16 + 4 * 4 + 3 * 4 + 2 * 4) + 4**4)),
        # TT: sum_k r_{k-1} I_k J_k r_k with ranks 1-4-4-4-1
        (cell_config("tt", rank=4),
         11 * 16 * 4 + 4 * 4 * 4 * 4 + 4 * 3 * 4 * 4 + 4 * 2 * 4),
    ],
)
def test_paper_sized_encoders_have_the_formula_counts(cell, input_map):
    """Gregor's MNIST sizes (256 hidden, z 100, read 2x2): the encoder input is 2*2*2 + 256 = 264."""
    from tensorlstm.cells import build_cell

    built = []

    def make(input_size, hidden_size, in_modes=None, hidden_modes=None):
        built.append(build_cell(cell, input_size, hidden_size, in_modes=in_modes, hidden_modes=hidden_modes))
        return built[-1]

    cfg = group_config("task", "draw_mnist", decoder_cell="lstm")  # the task's defaults: Gregor's sizes
    model = DrawMNISTTask(cfg, seed=0).build_model(make)
    assert built == [model.encoder]
    assert model.encoder.input_map_params() == input_map
    dense_decoder = 100 * 1024 + 256 * 1024 + 2 * 1024  # nn.LSTM: W_ih, W_hh, two biases
    assert sum(p.numel() for p in model.decoder.parameters()) == dense_decoder
    heads = 256 * 200 + 200 + 256 * 5 + 5 + 256 * 5 + 5 + 256 * 25 + 25  # latent, read/write attention, patch
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in model.encoder.parameters()) + dense_decoder + heads
