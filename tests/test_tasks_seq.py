"""Sequential/permuted MNIST, character LM and polyphonic music: readers of the real formats (on tiny files
written here), batching, metrics on hand-made cases, learning on tiny learnable data, missing-data errors,
and the Tjandra 2018 parameter counts of the experiment configs."""

from __future__ import annotations

import math
import pathlib
import pickle

import numpy as np
import pytest
import torch
from tiny import char_lm as tiny_char_lm
from tiny import polyphonic as tiny_polyphonic
from tiny import smnist as tiny_smnist
from torch import nn

from tensorlstm.cells import build_cell
from tensorlstm.cells.base import map_state
from tensorlstm.data.idx import load_mnist
from tensorlstm.data.piano_roll import load_piano_rolls, pack_rolls, roll_from_sequence
from tensorlstm.data.text import load_char_corpus, ptb_char_symbols, split_by_fractions
from tensorlstm.defaults import cell_config, group_config
from tensorlstm.errors import UserError
from tensorlstm.tasks.char_lm import CharLMTask, bits_per_char
from tensorlstm.tasks.mnist_seq import PermutedMNISTTask, SequentialMNISTTask, pixel_permutation
from tensorlstm.tasks.polyphonic import PolyphonicTask, frame_accuracy, frame_counts, masked_nll


def gru_factory(hidden: int | None = None):
    def make(input_size, hidden_size, in_modes=None, hidden_modes=None):
        return build_cell(cell_config("gru"), input_size, hidden or hidden_size)

    return make


def train_steps(task, model, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, state = [], None
    for step in range(steps):
        loss, _, state = task.loss(model, task.train_batch(step), state)
        if state is not None:
            state = tuple(tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in state)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------------------------------- MNIST
@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return tiny_smnist.write_mnist(tmp_path_factory.mktemp("mnist"), n_train=300, n_test=60)


def mnist_cfg(data_dir, name="smnist", **kw):
    tiny = dict(data_dir=str(data_dir), chunk=16, valid_size=50, batch_size=16, eval_batch_size=64, hidden_size=16)
    return group_config("task", name, **(tiny | kw))


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_what_was_written(tmp_path, gz):
    folder = tiny_smnist.write_mnist(tmp_path, n_train=20, n_test=10, seed=4, gz=gz)
    images, labels = load_mnist(folder, "train")
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8 and labels.shape == (20,)
    rng = np.random.default_rng(4)
    expected_labels = np.arange(20) % 10
    rng.shuffle(expected_labels)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(images, tiny_smnist.make_images(expected_labels, rng))


def test_mnist_validation_is_carved_from_train_by_seed(mnist_dir):
    task = SequentialMNISTTask(mnist_cfg(mnist_dir, valid_size=50), seed=3)
    task.prepare()
    train_x, _ = task.data["train"]
    valid_x, _ = task.data["valid"]
    assert len(valid_x) == 50 and len(train_x) == 250 and len(task.data["test"][0]) == 60
    all_train, _ = load_mnist(mnist_dir, "train")
    rows = {bytes(r) for r in all_train.reshape(300, 784)}
    got = [bytes(r) for r in torch.cat([train_x, valid_x]).numpy()]
    assert set(got) == rows and len(got) == 300  # a partition of the 300 training images
    other = SequentialMNISTTask(mnist_cfg(mnist_dir, valid_size=50), seed=4)
    other.prepare()
    assert not torch.equal(other.data["valid"][0], valid_x)  # the split follows the seed
    fixed = SequentialMNISTTask(mnist_cfg(mnist_dir, valid_size=50, split_seed=3), seed=99)
    fixed.prepare()
    assert torch.equal(fixed.data["valid"][0], valid_x)  # ... or task.split_seed


def test_mnist_train_batch_is_a_pure_function_of_seed_and_step(mnist_dir):
    a = SequentialMNISTTask(mnist_cfg(mnist_dir), seed=5)
    b = SequentialMNISTTask(mnist_cfg(mnist_dir), seed=5)
    a.prepare()
    b.prepare()
    spe = a.steps_per_epoch
    assert spe == 250 // 16
    for step in (spe + 2, 0, 3 * spe + 1, 1):  # any order, across epochs
        x, y = a.train_batch(step), b.train_batch(step)
        assert torch.equal(x["pixels"], y["pixels"]) and torch.equal(x["labels"], y["labels"])
    epoch = torch.cat([a.train_batch(s)["pixels"] for s in range(spe)])
    assert len({bytes(r) for r in epoch.numpy()}) == spe * 16  # an epoch draws without replacement
    assert not torch.equal(a.train_batch(0)["pixels"], a.train_batch(spe)["pixels"])  # reshuffled per epoch
    c = SequentialMNISTTask(mnist_cfg(mnist_dir), seed=6)
    c.prepare()
    assert not torch.equal(c.train_batch(0)["pixels"], a.train_batch(0)["pixels"])


def test_pmnist_permutation_is_a_fixed_bijection_applied_to_the_pixels(mnist_dir):
    p = pixel_permutation(7)
    assert torch.equal(p, pixel_permutation(7)) and not torch.equal(p, pixel_permutation(8))
    assert torch.equal(p.sort().values, torch.arange(784))
    seen = {}

    class Recorder(nn.Module):
        output_size = 3

        def forward(self, x, state=None, lengths=None):
            seen["x"] = x
            return torch.zeros(x.shape[0], x.shape[1], 3), None

    task = PermutedMNISTTask(mnist_cfg(mnist_dir, name="pmnist", chunk=28, permutation_seed=7), seed=0)
    model = task.build_model(lambda *a, **k: Recorder())
    pixels = torch.randint(0, 256, (2, 784), dtype=torch.uint8)
    model(pixels)
    expected = (pixels.double() / 255.0)[:, p].view(2, 28, 28)
    assert torch.allclose(seen["x"].double(), expected, rtol=0, atol=1e-7)
    assert float(seen["x"].max()) <= 1.0 and float(seen["x"].min()) >= 0.0
    smnist = SequentialMNISTTask(mnist_cfg(mnist_dir, chunk=28), seed=0).build_model(
        lambda *a, **k: Recorder()
    )
    smnist(pixels)
    assert torch.allclose(seen["x"].double(), (pixels.double() / 255.0).view(2, 28, 28), rtol=0, atol=1e-7)


def test_smnist_chunk_must_divide_784(mnist_dir):
    with pytest.raises(UserError, match="must divide 784"):
        SequentialMNISTTask(mnist_cfg(mnist_dir, chunk=5), seed=0)


def test_smnist_learns_on_tiny_data(mnist_dir):
    torch.manual_seed(0)
    task = SequentialMNISTTask(mnist_cfg(mnist_dir, hidden_size=24, chunk=28), seed=0)  # row by row
    task.prepare()
    model = task.build_model(gru_factory())
    before = task.evaluate(model, "valid")
    losses = train_steps(task, model, 40, lr=1e-2)
    after = task.evaluate(model, "valid")
    assert np.mean(losses[-8:]) < 0.75 * np.mean(losses[:8])
    assert after["accuracy"] > max(0.5, before["accuracy"] + 0.3)
    assert set(after) >= {"accuracy", "nll"}


# ----------------------------------------------------------------------------------------- char LM
def test_ptb_char_mapping():
    assert ptb_char_symbols(" a b _ c d \n e _ f\n") == "ab cd\ne f\n"


def test_text_readers_split_and_decode(tmp_path):
    (tmp_path / "enwik8").write_bytes(bytes(range(50, 250)))  # 200 distinct bytes
    corpus = load_char_corpus(tmp_path, "enwik8")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (180, 10, 10)  # 90/5/5
    assert corpus.vocab_size == 200 and corpus.byte_level
    assert corpus.decode(corpus.train[:3]) == bytes([50, 51, 52]).decode()
    assert split_by_fractions(100_000_000) == (90_000_000, 95_000_000)  # the standard enwik8/text8 split
    text = "héllo wörld " * 50
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    chars = load_char_corpus(tmp_path, "t.txt")
    assert chars.vocab_size == len(set(text))
    assert chars.decode(torch.cat([chars.train, chars.valid, chars.test])) == text
    as_bytes = load_char_corpus(tmp_path, "t.txt", level="byte")
    assert len(as_bytes.train) + len(as_bytes.valid) + len(as_bytes.test) == len(text.encode())
    ptb = load_char_corpus(tiny_char_lm.write_ptb_char(tmp_path / "ptb"), "ptb_char")
    lines = (tmp_path / "ptb" / "ptb.char.valid.txt").read_text().splitlines()
    assert ptb.decode(ptb.valid) == "".join(line.replace(" ", "").replace("_", " ") + "\n" for line in lines)
    assert "_" not in ptb.vocab and " " in ptb.vocab and "\n" in ptb.vocab


def lm_cfg(data_dir, **kw):
    tiny = dict(data_dir=str(data_dir), dataset="tiny.txt", batch_size=4, bptt=8, eval_batch_size=3, embed_size=8,
                hidden_size=16, sample_length=30)
    return group_config("task", "char_lm", **(tiny | kw))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return tiny_char_lm.write_text(tmp_path_factory.mktemp("text"))


def test_char_lm_batches_are_contiguous_windows_that_wrap(text_dir):
    task = CharLMTask(lm_cfg(text_dir), seed=0)
    task.prepare()
    ids = task.corpus.train
    n = (len(ids) - 1) // 4
    spe = task.steps_per_epoch
    assert spe == n // 8
    for k in (0, 1, spe - 1):
        batch = task.train_batch(k)
        for b in range(4):
            start = b * n + k * 8
            assert torch.equal(batch["inputs"][b], ids[start : start + 8])
            assert torch.equal(batch["targets"][b], ids[start + 1 : start + 9])
        assert bool(batch["reset"]) == (k == 0)
    again = task.train_batch(spe + 1)  # next epoch: same windows
    assert torch.equal(again["inputs"], task.train_batch(1)["inputs"])
    assert bool(task.train_batch(spe)["reset"])


def test_char_lm_model_outputs_do_not_depend_on_the_data(text_dir):
    task = CharLMTask(lm_cfg(text_dir), seed=0)
    built_before = task.build_model(gru_factory()).head.out_features
    task.prepare()
    assert task.build_model(gru_factory()).head.out_features == built_before == 256
    assert CharLMTask(lm_cfg(text_dir, dataset="ptb_char"), seed=0).vocab_size() == 50
    with pytest.raises(UserError, match="set task.vocab_size="):
        CharLMTask(lm_cfg(text_dir, vocab_size=3), seed=0).prepare()


def test_char_lm_state_is_carried_and_reset_at_epoch_start(text_dir):
    torch.manual_seed(0)
    task = CharLMTask(lm_cfg(text_dir), seed=0)
    task.prepare()
    model = task.build_model(gru_factory())
    l0, _, state = task.loss(model, task.train_batch(0), None)
    assert state is not None
    l1_carried, _, _ = task.loss(model, task.train_batch(1), state)
    l1_fresh, _, _ = task.loss(model, task.train_batch(1), None)
    assert float(l1_carried.detach()) != pytest.approx(
        float(l1_fresh.detach()), abs=1e-7
    )  # the state matters
    junk = map_state(torch.randn_like, state)  # any state layout (nn.GRU or our time loop)
    l0_junk, _, _ = task.loss(model, task.train_batch(task.steps_per_epoch), junk)
    assert float(l0_junk.detach()) == pytest.approx(
        float(l0.detach()), abs=1e-6
    )  # epoch start ignores the old state


class FixedDistribution(nn.Module):
    """A 'language model' that predicts the same distribution q at every step, whatever the input."""

    def __init__(self, q: torch.Tensor) -> None:
        super().__init__()
        self.log_q = nn.Parameter(q.log())

    def forward(self, ids, state=None):
        count = 0 if state is None else state
        return self.log_q.expand(*ids.shape, -1), count + ids.numel()


def test_bpc_of_a_known_distribution(text_dir):
    task = CharLMTask(lm_cfg(text_dir, eval_batch_size=3, bptt=7), seed=0)
    task.prepare()
    V = task.corpus.vocab_size
    q = torch.softmax(torch.linspace(-2, 2, V, dtype=torch.float64), 0)
    for split in ("valid", "test"):
        ids = task.corpus.split(split)
        n = (len(ids) - 1) // 3
        targets = ids[1 : 3 * n + 1].long()  # the symbols scored: all but < eval_batch_size of them
        expected = float(-(q.log()[targets]).sum() / len(targets) / math.log(2))
        got = task.evaluate(FixedDistribution(q), split)
        assert got["bpc"] == pytest.approx(expected, rel=1e-9)
    uniform = task.evaluate(FixedDistribution(torch.full((V,), 1.0 / V, dtype=torch.float64)), "valid")
    assert uniform["bpc"] == pytest.approx(math.log2(V), rel=1e-12)
    assert bits_per_char(math.log(2) * 10, 5) == pytest.approx(2.0)


def test_char_lm_learns_and_writes_samples(text_dir, tmp_path):
    torch.manual_seed(0)
    task = CharLMTask(lm_cfg(text_dir, batch_size=8, bptt=20, hidden_size=32, embed_size=16), seed=0)
    task.prepare()
    model = task.build_model(gru_factory())
    before = task.evaluate(model, "valid")["bpc"]
    losses = train_steps(task, model, 40, lr=1e-2)
    after = task.evaluate(model, "valid")["bpc"]
    assert np.mean(losses[-8:]) < 0.75 * np.mean(losses[:8])
    assert after < before - 1.0
    paths = task.artifacts(model, tmp_path, 40)
    assert [p.name for p in paths] == ["sample_40.txt"]
    text = paths[0].read_text()
    body = text.split("\n", 1)[1]  # after the header line: prime |>>| sample
    prime, sample = body.split("|>>|")
    assert prime == task.corpus.decode(task.corpus.valid[:50]) and len(sample) == 30 + 1
    assert set(sample) <= set(task.corpus.vocab)


# ---------------------------------------------------------------------------------------- polyphonic
def test_piano_roll_reader(tmp_path):
    folder = tiny_polyphonic.write_pickle(tmp_path, "Nottingham")
    data = load_piano_rolls(folder, "Nottingham")
    with open(folder / "Nottingham.pickle", "rb") as f:
        raw = pickle.load(f)
    assert [len(data[s]) for s in ("train", "valid", "test")] == [24, 8, 8]
    seq = raw["train"][5]
    rolls, lengths = data["train"].batch(torch.tensor([5, 0]))
    assert int(lengths[0]) == len(seq) and rolls.shape == (2, max(len(seq), len(raw["train"][0])), 88)
    for t, notes in enumerate(seq):
        assert set(torch.nonzero(rolls[0, t]).flatten().tolist()) == {p - 21 for p in notes}
    assert int(rolls[0, len(seq) :].sum()) == 0  # padding is silent
    roll = roll_from_sequence([(21, 108), ()])
    assert roll[0, 0] == 1 and roll[0, 87] == 1 and roll.sum() == 2
    with pytest.raises(UserError, match="outside the piano range"):
        roll_from_sequence([(20,)])
    packed = pack_rolls([roll, roll_from_sequence([(60,)])])
    assert packed.offsets.tolist() == [0, 2] and packed.num_frames == 3


def test_nll_and_frame_accuracy_on_hand_made_cases():
    logits = torch.zeros(1, 3, 88, dtype=torch.float64)
    targets = torch.zeros(1, 3, 88, dtype=torch.uint8)
    logits[0, 0, :3] = torch.tensor([2.0, 1.0, -1.0])  # predicted on: keys 0, 1
    targets[0, 0, [0, 2]] = 1  # true: keys 0, 2 -> TP 1 (key 0), FP 1 (key 1), FN 1 (key 2)
    logits[0, 1, 5] = 3.0  # frame 1: TP 1
    targets[0, 1, 5] = 1
    logits[0, 2, 7] = 4.0  # frame 2 is padding: must not count
    targets[0, 2, 9] = 1
    mask = torch.tensor([[True, True, False]])
    assert frame_counts(logits, targets, mask).tolist() == [2, 1, 1]
    assert frame_accuracy(2, 1, 1) == 0.5 and frame_accuracy(0, 0, 0) == 1.0

    def softplus(x):
        return math.log1p(math.exp(x))

    # BCE(z, y) = softplus(z) - y z; off notes with z = 0 cost log 2 each
    frame0 = softplus(2.0) - 2.0 + softplus(1.0) + softplus(-1.0) + 1.0 + 85 * math.log(2)
    frame1 = softplus(3.0) - 3.0 + 87 * math.log(2)
    total, count = masked_nll(logits, targets, mask)
    assert int(count) == 2
    assert float(total) / int(count) == pytest.approx((frame0 + frame1) / 2, rel=1e-12)


def poly_cfg(data_dir, **kw):
    tiny = dict(data_dir=str(data_dir), dataset="JSB_Chorales", batch_size=4, eval_batch_size=5, embed_size=16,
                hidden_size=24, in_modes=None, hidden_modes=None, predict_first=True)
    return group_config("task", "polyphonic", **(tiny | kw))


@pytest.fixture(scope="module")
def poly_dir(tmp_path_factory):
    return tiny_polyphonic.write_pickle(tmp_path_factory.mktemp("poly"))


class ConstantLogit(nn.Module):
    """Predicts the same logits (a float, or one per note) at every frame."""

    def __init__(self, z) -> None:
        super().__init__()
        self.z = torch.as_tensor(z, dtype=torch.float64)

    def forward(self, frames, lengths=None):
        return self.z.expand(frames.shape).clone()


@pytest.mark.parametrize("predict_first", [False, True])
def test_polyphonic_evaluate_equals_closed_form(poly_dir, predict_first):
    task = PolyphonicTask(poly_cfg(poly_dir, predict_first=predict_first), seed=0)
    task.prepare()
    with open(poly_dir / "JSB_Chorales.pickle", "rb") as f:
        raw = pickle.load(f)["valid"]
    z = 0.7
    on = off = frames = 0
    for seq in raw:
        scored = seq if predict_first else seq[1:]
        frames += len(scored)
        notes = sum(len(s) for s in scored)
        on, off = on + notes, off + 88 * len(scored) - notes
    expected = (on * math.log1p(math.exp(-z)) + off * math.log1p(math.exp(z))) / frames
    got = task.evaluate(ConstantLogit(z), "valid")
    assert got["nll"] == pytest.approx(expected, rel=1e-12)
    assert got["frame_accuracy"] == pytest.approx(on / (88 * frames))  # all on: TP = on, FP = off, FN = 0
    assert task.evaluate(ConstantLogit(-z), "valid")["frame_accuracy"] == 0.0


def test_polyphonic_batches_deterministic_and_cover_an_epoch(poly_dir):
    a, b = (
        PolyphonicTask(poly_cfg(poly_dir, batch_size=5), seed=2),
        PolyphonicTask(poly_cfg(poly_dir, batch_size=5), seed=2),
    )
    a.prepare()
    b.prepare()
    assert a.steps_per_epoch == 5  # ceil(24 / 5): the last batch is smaller
    for step in (7, 0, 4, 12):
        x, y = a.train_batch(step), b.train_batch(step)
        assert torch.equal(x["rolls"], y["rolls"]) and torch.equal(x["lengths"], y["lengths"])
    lengths = torch.cat([a.train_batch(s)["lengths"] for s in range(5)])
    assert len(lengths) == 24 and int(lengths.sum()) == a.data["train"].num_frames


def test_polyphonic_learns_on_tiny_data(poly_dir):
    torch.manual_seed(0)
    # frames 2..T only: the first frame, predicted from silence, has no past to use (a floor on the loss)
    task = PolyphonicTask(poly_cfg(poly_dir, embed_size=32, hidden_size=32, predict_first=False), seed=0)
    task.prepare()
    # the best model that ignores the past: each note on with its training frequency
    freq = task.data["train"].frames.double().mean(0).clamp(1e-3, 1 - 1e-3)
    unigram = task.evaluate(ConstantLogit(torch.log(freq / (1 - freq))), "valid")
    model = task.build_model(gru_factory())
    before = task.evaluate(model, "valid")
    losses = train_steps(task, model, 200, lr=3e-2)
    after = task.evaluate(model, "valid")
    assert np.mean(losses[-8:]) < 0.1 * np.mean(losses[:8])
    assert after["nll"] < 0.6 * unigram["nll"] < 0.1 * before["nll"]  # it uses the previous frames
    assert after["frame_accuracy"] > 0.4


# --------------------------------------------------------------------------------------- missing data
@pytest.mark.parametrize(
    "task_cls,cfg,expected",
    [
        (SequentialMNISTTask, {"data_dir": "{d}/nope"}, "yann.lecun.com"),
        (PermutedMNISTTask, {"data_dir": "{d}"}, "train-images-idx3-ubyte"),
        (CharLMTask, {"data_dir": "{d}", "dataset": "enwik8"}, "mattmahoney.net/dc/enwik8.zip"),
        (CharLMTask, {"data_dir": "{d}", "dataset": "text8"}, "text8.zip"),
        (CharLMTask, {"data_dir": "{d}", "dataset": "ptb_char"}, "ptb.char.train.txt"),
        (CharLMTask, {"data_dir": "{d}/nope", "dataset": "x.txt"}, "does not exist"),
        (PolyphonicTask, {"data_dir": "{d}", "dataset": "MuseData", "predict_first": True}, "MuseData.pickle"),
        (PolyphonicTask, {"data_dir": "{d}", "dataset": "Piano-midi.de", "predict_first": True}, "boulanni"),
    ],
)
def test_missing_data_is_a_one_line_user_error(tmp_path, task_cls, cfg, expected):
    cfg = group_config("task", task_cls.name, **{k: v.format(d=tmp_path) if isinstance(v, str) else v
                                                 for k, v in cfg.items()})
    with pytest.raises(UserError) as err:
        task_cls(cfg, seed=0).prepare()
    message = str(err.value)
    assert expected in message and "\n" not in message and str(tmp_path) in message


def test_bad_pickle_layout_is_a_user_error(tmp_path):
    with open(tmp_path / "JSB_Chorales.pickle", "wb") as f:
        pickle.dump({"train": []}, f)
    with pytest.raises(UserError, match="layout"):
        load_piano_rolls(tmp_path, "JSB_Chorales")
    (tmp_path / "Nottingham.pickle").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read"):
        load_piano_rolls(tmp_path, "Nottingham")


# ------------------------------------------------------------------------------ Tjandra 2018 configs
def test_tjandra2018_table_runs_every_row_on_each_of_the_four_sets():
    """Every cell on each of the four sets (tests/test_experiments.py checks each row's parameter count)."""
    from omegaconf import OmegaConf

    root = pathlib.Path(__file__).parents[1] / "configs"
    table = OmegaConf.to_container(OmegaConf.load(root / "table" / "tjandra2018_polyphonic.yaml"))
    rows = {p.stem.removeprefix("tjandra2018_polyphonic_") for p in (root / "experiment").glob("tjandra2018_*.yaml")}
    seen = set()
    for row in table["rows"]:
        dataset = next(o.split("=", 1)[1] for o in row["overrides"] if o.startswith("task.dataset="))
        seen.add((dataset, row["experiment"].removeprefix("tjandra2018_polyphonic_")))
    assert len(rows) == 7
    assert seen == {(d, k) for d in ("JSB_Chorales", "Nottingham", "MuseData", "Piano-midi.de") for k in rows}
