"""Captioning: COCO layout and Karpathy split, feature cache, vocabulary, decoding, metrics, the task end to end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_RUN
from PIL import Image

from tensorlstm.data.coco import FeatureCache, Vocabulary, check_layout, load_coco, tokenize
from tensorlstm.errors import UserError
from tensorlstm.models.decoding import beam_search, greedy, sequence_log_prob
from tensorlstm.models.image_encoder import ImageEncoder
from tensorlstm.tasks.caption_metrics import CaptionScorer, _meteor

_spec = importlib.util.spec_from_file_location("tiny_captioning", ROOT / "tests" / "tiny" / "captioning.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


# ------------------------------------------------------------------------------------ data and vocabulary
def test_tokenize_and_vocabulary():
    assert tokenize("A man's HAT, red!  Two-tone.") == ["a", "man", "s", "hat", "red", "two", "tone"]
    vocab = Vocabulary.build(["a red box.", "A red ball", "a blue box", "a red hat"], min_count=2)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.words[4:] == ["a", "red", "box"]  # by count, then alphabetically; blue/ball/hat too rare
    ids = vocab.encode("A blue box!")
    assert ids == [vocab.start, vocab.index["a"], vocab.unk, vocab.index["box"], vocab.end]
    assert vocab.encode("a red box a red box", max_words=2) == [1, 4, 5, 2]
    assert vocab.decode([vocab.start, 4, 3, 6, vocab.end, 5]) == "a <unk> box"


def test_tiny_layout_and_karpathy_split(tmp_path):
    folder = tiny.write_coco(tmp_path / "coco")
    splits = load_coco(folder)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6 + 2, "valid": 3, "test": 3}  # restval joins
    first = splits["train"][0]
    assert first.path == folder / "train2014" / f"COCO_train2014_{first.image_id:012d}.jpg"
    assert len(first.captions) == 3 and first.captions[0].endswith("square.")
    assert splits["train"][-1].path.parent.name == "val2014"  # restval comes from val2014


def _bad_layout(tmp_path, what):
    folder = tiny.write_coco(tmp_path / "bad")
    if what == "annotation":
        (folder / "annotations" / "captions_val2014.json").unlink()
    elif what == "image":
        next((folder / "val2014").glob("*.jpg")).unlink()
    elif what == "caption":
        path = folder / "annotations" / "captions_train2014.json"
        data = json.loads(path.read_text())
        data["annotations"][2]["caption"] = " ... "
        path.write_text(json.dumps(data))
    elif what == "split":
        path = folder / "dataset_coco.json"
        data = json.loads(path.read_text())
        data["images"][1]["split"] = "holdout"
        path.write_text(json.dumps(data))
    return folder


def test_missing_coco_layout_exits_2_with_one_line(tlstm, tmp_path):
    folder = _bad_layout(tmp_path, "annotation")
    r = tlstm("train", "task=captioning", "task.dataset=coco", f"task.data_dir={folder}", *TINY_RUN)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "captions_val2014.json" in lines[0] and "annotations_trainval2014.zip" in lines[0]
    check_layout(tiny.write_coco(tmp_path / "ok"), "dataset_coco.json")  # a complete layout passes


@pytest.mark.parametrize("what,needle", [("image", "is missing; re-extract"), ("caption", "empty caption"),
                                         ("split", "unknown split 'holdout'")])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, capsys, what, needle):
    from tensorlstm.cli import main

    folder = _bad_layout(tmp_path, what)
    with pytest.raises(SystemExit) as e:
        main(["train", *TINY_RUN, "task=captioning", *tiny.make(tmp_path), f"task.data_dir={folder}",
              "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_shapes_set_is_seeded_coco_layout_and_regenerated_on_new_settings(tmp_path):
    from tensorlstm.data.shapes import COLOURS, ensure_shapes, settings

    wanted = settings(train=6, valid=2, test=2, image_size=32, captions=5, max_objects=2, seed=3)
    a, b = ensure_shapes(tmp_path / "a", wanted), ensure_shapes(tmp_path / "b", wanted)
    for name in ("annotations/captions_train2014.json", "annotations/captions_val2014.json", "dataset_coco.json"):
        assert (a / name).read_text() == (b / name).read_text()  # a pure function of the settings
    splits = load_coco(a)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "valid": 2, "test": 2}
    for it in splits["train"]:
        assert len(it.captions) == 5 and len(set(it.captions)) >= 3  # varied templates and synonyms
        assert all(any(c in cap.lower() for c in COLOURS) for cap in it.captions)
        with Image.open(it.path) as im:
            assert im.size == (32, 32) and im.format == "JPEG"
    (a / "features").mkdir()
    stamp = (a / "dataset_coco.json").stat().st_mtime_ns
    ensure_shapes(a, wanted)
    assert (a / "dataset_coco.json").stat().st_mtime_ns == stamp  # current: left alone
    ensure_shapes(a, {**wanted, "seed": 4})
    assert not (a / "features").exists() and len(load_coco(a)["train"]) == 6  # regenerated, old features dropped
    assert (a / "dataset_coco.json").read_text() != (b / "dataset_coco.json").read_text()


# ---------------------------------------------------------------------------------------- feature cache
def test_feature_cache_builds_resumes_and_lists_unreadable_images(tmp_path):
    folder = tiny.write_coco(tmp_path / "coco", n_train=5, n_restval=0, n_val=1, n_test=1)
    items = [it for v in load_coco(folder).values() for it in v]
    items[3].path.write_bytes(b"not a jpeg")  # present but unreadable
    torch.manual_seed(0)
    encoder = ImageEncoder("resnet50", weights="none", image_size=32)
    assert encoder.feature_size == 2048 and encoder.key == "resnet50_random_32"
    calls = []

    def interrupted(images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped during the second batch
        return encoder(images)

    cache = FeatureCache(tmp_path / "feat", encoder.key, items, encoder.feature_size)
    with pytest.raises(KeyboardInterrupt):
        cache.build(interrupted, batch_size=2)
    assert np.load(cache.done_path).sum() == 2  # the first batch is kept
    calls.clear()

    def counted(images):
        calls.append(len(images))
        return encoder(images)

    feats = FeatureCache(tmp_path / "feat", encoder.key, items, encoder.feature_size).build(counted, 2)
    assert sum(calls) == len(items) - 2 - 1  # resumed after the first batch; the unreadable image skipped
    assert cache.unreadable() == [items[3].image_id]
    assert not feats[3].any() and np.isfinite(feats).all()
    with Image.open(items[5].path) as im:
        alone = encoder([im.convert("RGB")])[0]  # batched with another image in the cache: float32 rounding
        np.testing.assert_allclose(feats[5], alone, rtol=1e-4, atol=1e-4)
    calls.clear()
    FeatureCache(tmp_path / "feat", encoder.key, items, encoder.feature_size).build(counted, 2)
    assert calls == []  # complete: nothing extracted again
    other = FeatureCache(tmp_path / "feat", encoder.key, items[:4], encoder.feature_size)
    assert other.build(counted, 2).shape == (4, 2048) and sum(calls) == 3  # another image list: rebuilt


def test_weights_file_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"resnet101-63fe2227\.pth.*download https://download\.pytorch\.org/"):
        ImageEncoder("resnet101", weights="imagenet")
    with pytest.raises(UserError, match="unknown task.encoder"):
        ImageEncoder("vgg16")


# -------------------------------------------------------------------------------------------- decoding
class Markov:
    """A decoder with known probabilities: p(next | last token) from one table per row of the context."""

    def __init__(self, tables: torch.Tensor, first: torch.Tensor) -> None:
        self.tables, self.first = tables.log(), first.log()  # (B, V, V), (B, V)

    def begin(self, context):
        return self.first.clone(), (context.clone(),)

    def advance(self, tokens, state):
        (rows,) = state
        return self.tables[rows, tokens], (rows,)


def _brute_force(m: Markov, b: int, end: int, max_len: int, alpha: float) -> tuple[float, list[int]]:
    V = m.first.shape[1]
    best = (-math.inf, [])
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=n):
            if end in seq[:-1] or (seq[-1] != end and n < max_len):
                continue
            lp = m.first[b, seq[0]] + sum(m.tables[b, a, c] for a, c in zip(seq, seq[1:]))
            value = float(lp) / n**alpha
            if value > best[0]:
                best = (value, [t for t in seq if t != end])
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beam_search_returns_the_highest_scoring_sequence(alpha):
    torch.manual_seed(1)
    B, V, end, max_len = 3, 4, 0, 5
    tables = torch.softmax(2 * torch.randn(B, V, V, dtype=torch.float64), -1)
    first = torch.softmax(2 * torch.randn(B, V, dtype=torch.float64), -1)
    m = Markov(tables, first)
    seqs, scores = beam_search(m, torch.arange(B), end, max_len, beam_size=40, length_penalty=alpha)
    for b in range(B):
        value, seq = _brute_force(m, b, end, max_len, alpha)
        assert seqs[b] == seq and scores[b] == pytest.approx(value)


def test_beam_beats_greedy_where_greedy_is_short_sighted():
    # first token: 1 (p .6) leads to an even split; 2 (p .4) leads to <end> with p .95
    first = torch.tensor([[0.0, 0.6, 0.4]], dtype=torch.float64)
    tables = torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.25, 0.25], [0.95, 0.05, 0.0]]], dtype=torch.float64)
    tables = tables.clamp_min(1e-12)
    m = Markov(tables, first.clamp_min(1e-12))
    assert greedy(m, torch.zeros(1, dtype=torch.long), end=0, max_len=2) == [[1]]
    seqs, scores = beam_search(m, torch.zeros(1, dtype=torch.long), end=0, max_len=2, beam_size=2)
    assert seqs == [[2]] and scores[0] == pytest.approx(math.log(0.4 * 0.95))


def _captioner(cell: str, *extra: str, vocab: int = 12):
    """A ShowAndTell with a registry cell built from the real YAML configs (float64)."""
    from tensorlstm.cli import compose, to_dict
    from tensorlstm.engine.build import build

    cfg = to_dict(compose(["task=captioning", f"cell={cell}", "task.embed_size=8", "task.hidden_size=8",
                           f"task.info_vocab_size={vocab}", "task.pixels_grid=2", *extra]))
    _, model, _ = build(cfg)
    return model.double().eval()


def test_beam_size_one_is_greedy():
    torch.manual_seed(0)
    model = _captioner("lstm")
    with torch.no_grad():
        model.out.bias[2] += 1.5  # <end> likelier, so most captions end within max_len
    feats = torch.randn(16, 12, dtype=torch.float64)
    g = greedy(model, feats, end=2, max_len=8)
    b, _ = beam_search(model, feats, end=2, max_len=8, beam_size=1)
    ended = [k for k, s in enumerate(g) if len(s) < 8]
    assert len(ended) >= 10 and all(g[k] == b[k] for k in ended)
    wide, _ = beam_search(model, feats, end=2, max_len=8, beam_size=4)
    lp = sequence_log_prob(model, feats, [wide[k] for k in ended], 2)
    lg = sequence_log_prob(model, feats, [g[k] for k in ended], 2)
    assert (lp >= lg - 1e-9).all()  # a wider beam never finds a less probable caption


@pytest.mark.parametrize("cell,extra", [("lstm", []), ("gru", []), ("tt", ["rank=2"]), ("bt", ["rank=2"]),
                                        ("cp", ["rank=2"]), ("tucker", ["rank=2"]), ("tlstm", ["cell.P=3"]),
                                        ("tlstm", ["cell.P=[2,2]"]), ("tlstm", ["cell.norm=ccn"]),
                                        ("tlstm", ["cell.norm=ln", "cell.feedback=false"]),
                                        ("slstm", ["cell.layers=2"])])
def test_step_decoding_scores_what_teacher_forcing_trained(cell, extra):
    """log p(caption) step by step (begin/advance, as greedy and beam search use it) equals the teacher-forced
    forward of training, for every cell; tLSTM included (its output comes delay steps late)."""
    torch.manual_seed(0)
    model = _captioner(cell, *extra)
    feats = torch.randn(3, 12, dtype=torch.float64)
    caps = [[4, 5, 6, 7], [8, 9], [10, 4, 11]]
    tokens = torch.full((3, 6), 0, dtype=torch.long)
    for k, c in enumerate(caps):
        tokens[k, : len(c) + 2] = torch.tensor([1, *c, 2])
    logp = torch.log_softmax(model(feats, tokens), -1)
    target = tokens[:, 1:]
    forced = torch.where(target > 0, logp.gather(2, target[..., None]).squeeze(-1), 0.0).sum(1)
    torch.testing.assert_close(sequence_log_prob(model, feats, caps, end=2), forced)


def test_tlstm_channel_norm_is_refused():
    with pytest.raises(UserError, match="cell.norm=cn lets the tLSTM's output .* task captioning scores"):
        _captioner("tlstm", "cell.norm=cn")


# --------------------------------------------------------------------------------------------- metrics
def test_metric_wrapper_gives_pycocoevalcap_values(tmp_path, monkeypatch, capsys):
    """The wrapper against pycocoevalcap's own COCOEvalCap driven through pycocotools' COCO files."""
    import pycocoevalcap.eval as coco_eval
    from pycocotools.coco import COCO

    refs = {1: ["A man riding a horse on a beach.", "a person rides a brown horse near the sea"],
            2: ["Two dogs play with a red ball.", "two puppies chase a ball in the grass", "dogs playing"],
            3: ["A plate of food with broccoli.", "a dinner plate with meat and vegetables"]}
    hyps = {1: "a man riding a horse on the beach", 2: "two dogs playing with a ball", 3: "a cat on a sofa"}
    ann = {"images": [{"id": k} for k in refs], "type": "captions", "info": {}, "licenses": [],
           "annotations": [{"id": 10 * k + j, "image_id": k, "caption": c}
                           for k, v in refs.items() for j, c in enumerate(v)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": k, "caption": v} for k, v in hyps.items()]))

    class NoSpice:  # SPICE downloads CoreNLP models: not run here (the wrapper has it off by default)
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)
    monkeypatch.setattr(coco_eval, "Meteor", _meteor)  # pycocoevalcap's Meteor, the process already started
    coco = COCO(str(tmp_path / "ann.json"))
    evaluator = coco_eval.COCOEvalCap(coco, coco.loadRes(str(tmp_path / "res.json")))
    evaluator.evaluate()
    ref = evaluator.eval
    ours = CaptionScorer()(refs, hyps)
    names = {"bleu1": "Bleu_1", "bleu2": "Bleu_2", "bleu3": "Bleu_3", "bleu4": "Bleu_4", "meteor": "METEOR",
             "rouge_l": "ROUGE_L", "cider": "CIDEr"}
    for k, v in names.items():
        assert ours[k] == pytest.approx(ref[v], abs=1e-12), k
    assert 0.3 < ours["bleu1"] < 1 and ours["cider"] > 0.5
    same = CaptionScorer()({1: ["a red box on the left side"]}, {1: "a red box on the left side"})
    assert same["bleu4"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0)


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="run on Java, and no `java` is on PATH"):
        CaptionScorer()({1: ["a box"]}, {1: "a box"})


# ------------------------------------------------------------------------------------------ end to end
def test_info_needs_no_data(tmp_path):
    import io
    from contextlib import redirect_stdout

    from tensorlstm.cli import main

    for cell in ("bt", "tlstm"):
        out = io.StringIO()
        with redirect_stdout(out):
            main(["info", "task=captioning", f"cell={cell}", "task.dataset=coco", f"task.data_dir={tmp_path / 'no'}"])
        info = json.loads(out.getvalue())
        assert info["params_total"] > info["params_recurrent_layer"] > 0
    assert not (tmp_path / "no").exists()


def test_tiny_coco_run_writes_metrics_grids_and_results(train_run, tmp_path):
    summary = train_run(tmp_path / "run", "task=captioning", "cell=bt", "rank=2", *tiny.make(tmp_path),
                              "trainer.max_steps=4", "trainer.eval_every=2", base=TINY_RUN)
    for key in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"):
        assert math.isfinite(summary[key])
    run = tmp_path / "run"
    for name in ("captions_2.png", "captions_4.png", "captions_test.png", "captions_valid.json",
                 "captions_test.json"):
        assert (run / name).is_file(), name
    results = json.loads((run / "captions_test.json").read_text())
    assert sorted(r["image_id"] for r in results) == [111, 112, 113] and all(set(r) == {"image_id", "caption"}
                                                                          for r in results)
    assert (tmp_path / "coco" / "features" / "pixels4.npy").is_file()
    # `tlstm eval` goes through the same test evaluation: the same metrics and the same test files again
    from tensorlstm.cli import main

    for name in ("captions_test.json", "captions_test.png"):
        (run / name).unlink()
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "captions_test.json").read_text()) == results and (run / "captions_test.png").is_file()
    evaluated = json.loads((run / "eval.json").read_text())
    assert {k: evaluated[k] for k in summary["test"]} == summary["test"]


def test_short_shapes_run_learns_from_the_image(train_run, tmp_path):
    """A few hundred steps on a small shapes set: CIDEr-D far above the untrained model and above the same
    decoder trained with the image features zeroed."""
    common = ["task=captioning", f"task.data_dir={tmp_path / 'shapes'}", "task.shapes.train=300",
              "task.shapes.valid=40", "task.shapes.test=40", "task.embed_size=64", "task.hidden_size=64",
              "task.batch_size=32", "optim.lr=0.005", "trainer.max_steps=250", "trainer.eval_every=250",
              "task.beam_size=2"]
    from tensorlstm.cli import compose, to_dict
    from tensorlstm.engine.build import build

    real = train_run(tmp_path / "real", *common, base=TINY_RUN)
    blind = train_run(tmp_path / "blind", *common, "task.zero_image_features=true", base=TINY_RUN)
    torch.manual_seed(0)
    task, model, _ = build(to_dict(compose([*TINY_RUN, *common])), prepare=True)
    untrained = task.evaluate(model, "test")["cider"]
    assert real["cider"] > 1.0 and real["cider"] > 10 * untrained, (real["cider"], untrained)
    assert real["cider"] > blind["cider"] + 0.4, (real["cider"], blind["cider"])
    assert real["bleu4"] > blind["bleu4"] and real["nll"] < blind["nll"]
