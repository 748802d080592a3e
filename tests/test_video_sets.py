"""Hollywood2 and YouTube Celebrities (Yang 2017's other two sets) on the shared video pipeline: average precision
against hand-computed values (ties included), the official layouts' scanners on tiny real .avi clips (multi-label
targets read from ClipSets exactly, the person parsed from the file name, per-person folders), the fold splits,
prepare + `tlstm train` + `tlstm eval` end to end through the command line, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from tiny import hollywood2 as tiny_h2
from tiny import youtube_celebrities as tiny_yc

from tensorlstm.cells import build_cell
from tensorlstm.cli import main
from tensorlstm.data import hollywood2, youtube_celebrities
from tensorlstm.data.clip_cache import FrameCache, make_splits
from tensorlstm.data.prepare import main as prepare_main
from tensorlstm.defaults import cell_config, group_config
from tensorlstm.errors import UserError
from tensorlstm.tasks.average_precision import average_precision, mean_average_precision
from tensorlstm.tasks.video import Hollywood2Task, YouTubeCelebritiesTask

QUIET = {"log": lambda _msg: None}


# ------------------------------------------------------------------------------------------- average precision
def test_average_precision_hand_computed():
    # ranks 1..4 = P N P N: precision 1/1 at the first positive, 2/3 at the second -> (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6, abs=1e-15)
    assert average_precision([0.1, 0.8, 0.2, 0.9], [1, 0, 1, 0]) == pytest.approx((1 / 3 + 2 / 4) / 2, abs=1e-15)
    assert average_precision([3.0, 2.0, 1.0], [1, 1, 1]) == 1.0
    assert average_precision([-1.0, 5.0, 0.0], [1, 0, 0]) == pytest.approx(1 / 3, abs=1e-15)  # any real scores
    # ties are one threshold: {0.5 x3} gives tp 1 of 3 (recall 1/2 at precision 1/3), then 0.1 (recall 1 at 1/2)
    assert average_precision([0.5, 0.5, 0.5, 0.1], [1, 0, 0, 1]) == pytest.approx(0.5 / 3 + 0.5 / 2, abs=1e-15)
    assert average_precision([0.5, 0.5, 0.5, 0.1], [0, 0, 1, 1]) == average_precision([0.5, 0.5, 0.5, 0.1],
                                                                                     [1, 0, 0, 1])
    assert average_precision([0.7, 0.7], [1, 0]) == 0.5  # all tied: the share of positives
    assert np.isnan(average_precision([0.3, 0.2], [0, 0]))  # no positive: undefined


def test_average_precision_is_mean_precision_at_each_positive_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, targets = rng.normal(size=30), rng.integers(0, 2, 30)
        targets[0] = 1
        ranked = targets[np.argsort(-scores)]
        at_positives = np.cumsum(ranked)[ranked == 1] / (np.flatnonzero(ranked == 1) + 1)
        assert average_precision(scores, targets) == pytest.approx(at_positives.mean(), abs=1e-12)


def test_mean_average_precision_leaves_out_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.7, 0.4], [0.4, 0.8, 0.5]])  # class 1: its positive ranks 2nd
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    mean_ap, per_class = mean_average_precision(scores, targets)
    assert per_class[0] == 1.0 and per_class[1] == pytest.approx(1 / 2) and np.isnan(per_class[2])
    assert mean_ap == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------ Hollywood2
@pytest.fixture(scope="module")
def h2_source(tmp_path_factory) -> Path:
    return tiny_h2.write_source(tmp_path_factory.mktemp("h2"))


@pytest.fixture(scope="module")
def h2_cache(h2_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h2") / "cache"
    assert prepare_main(["--dataset", "hollywood2", "--source", str(h2_source.parent), "--out", str(out),
                         "--size", "12x8", "--workers", "1"]) == 0
    return out


def test_hollywood2_scan_reads_the_clipsets_exactly(h2_source):
    clips, classes = hollywood2.LAYOUT.scan(h2_source.parent)  # the parent of Hollywood2/ works too
    assert classes == list(tiny_h2.ACTIONS) == list(hollywood2.ACTIONS)
    assert len(clips) == 14 and not [c for c in clips if "auto" in c.clip]  # the autotrain set is ignored
    for split, count in tiny_h2.CLIPS.items():
        for k in range(1, count + 1):
            clip = next(c for c in clips if c.clip == tiny_h2.clip_name(split, k))
            assert clip.labels == tiny_h2.actions_of(split, k) and clip.split == split
            assert clip.path == f"AVIClips/{tiny_h2.clip_name(split, k)}.avi"
    assert any(len(c.labels) == 2 for c in clips)  # multi-label


def test_hollywood2_cache_holds_multi_hot_targets_and_the_official_split(h2_cache):
    cache = FrameCache(h2_cache, hollywood2.LAYOUT)
    assert cache.labels.shape == (14, 12) and cache.labels.dtype == np.float32
    for i, c in enumerate(cache.clips):
        split, k = c["split"], int(c["clip"][-5:])
        expected = [a in tiny_h2.actions_of(split, k) for a in tiny_h2.ACTIONS]
        assert cache.labels[i].tolist() == [float(e) for e in expected]
        assert cache.lengths[i] == tiny_h2.clip_length(k)
        # R encodes the first action, G the frame index: the decoded pixels are the written ones
        first = cache.frames[cache.offsets[i] + 1, 4, 6].astype(int)
        assert abs(first[0] - (40 + 15 * int(np.argmax(expected)))) <= 8 and abs(first[1] - 50) <= 8
    splits = make_splits(cache.labels, cache.groups, "official", seed=1, valid_fraction=0.15,
                         official=cache.official_split)
    assert [cache.clips[i]["split"] for i in splits["test"]] == ["test"] * 4
    assert len(splits["valid"]) == 2 and len(splits["train"]) == 8  # 15% of the 10 training clips, seeded
    other = make_splits(cache.labels, cache.groups, "official", seed=2, valid_fraction=0.15,
                        official=cache.official_split)
    assert np.array_equal(other["test"], splits["test"]) and not np.array_equal(other["valid"], splits["valid"])


def test_hollywood2_autotrain_clips_only_when_asked(h2_source, h2_cache, tmp_path):
    clips, _ = hollywood2.Hollywood2Layout(autotrain=True).scan(h2_source)
    auto = [c for c in clips if c.split == "autotrain"]
    assert len(clips) == 15 and [c.clip for c in auto] == ["actionclipautoautotrain00001"]
    assert auto[0].labels == tiny_h2.actions_of("autotrain", 1)
    out = tmp_path / "cache"
    assert prepare_main(["--dataset", "hollywood2", "--autotrain", "--source", str(h2_source), "--out", str(out),
                         "--size", "12x8", "--workers", "1"]) == 0
    cfg = group_config("task", "hollywood2", data_dir=str(out), frame_size=[12, 8], input_size=288)
    splits = {}
    for use in (False, True):
        task = Hollywood2Task({**cfg, "autotrain": use}, seed=0)
        task.prepare()
        splits[use] = task.splits
    auto_index = [i for i, c in enumerate(task.cache.clips) if c["split"] == "autotrain"]
    assert not set(auto_index) & set(np.concatenate(list(splits[False].values())).tolist())  # left out
    assert np.array_equal(np.setdiff1d(splits[True]["train"], splits[False]["train"]), auto_index)  # trains on it
    assert all(np.array_equal(splits[True][k], splits[False][k]) for k in ("valid", "test"))  # never selects on it
    with pytest.raises(UserError, match="holds no autotrain clip; re-run .* --autotrain"):
        Hollywood2Task({**cfg, "data_dir": str(h2_cache), "autotrain": True}, seed=0).prepare()


def test_hollywood2_layout_errors(h2_source, tmp_path):
    with pytest.raises(UserError, match=r"no AVIClips/ and no ClipSets/ folder in .*Hollywood2-actions.tar.gz"):
        hollywood2.LAYOUT.scan(tmp_path)
    broken = tmp_path / "Hollywood2"
    for sub in ("AVIClips", "ClipSets"):
        (broken / sub).mkdir(parents=True)
    with pytest.raises(UserError, match=r"AnswerPhone_train.txt is missing"):
        hollywood2.LAYOUT.scan(broken)
    for a in hollywood2.ACTIONS:
        for split in ("train", "test"):
            (broken / "ClipSets" / f"{a}_{split}.txt").write_text("actioncliptrain00001 1\n" if split == "train"
                                                                  else "actioncliptest00001 -1\n")
    with pytest.raises(UserError, match=r"none of the 2 clips .* is in"):
        hollywood2.LAYOUT.scan(broken)
    (broken / "ClipSets" / "Kiss_test.txt").write_text("actioncliptest00001 yes\n")
    with pytest.raises(UserError, match=r"Kiss_test.txt:1: .* unknown label"):
        hollywood2.LAYOUT.scan(broken)
    (broken / "ClipSets" / "Kiss_test.txt").write_text("actioncliptest00002 1\n")
    with pytest.raises(UserError, match=r"list different clips"):
        hollywood2.LAYOUT.scan(broken)


# --------------------------------------------------------------------------------------- YouTube Celebrities
@pytest.fixture(scope="module")
def yc_source(tmp_path_factory) -> Path:
    return tiny_yc.write_source(tmp_path_factory.mktemp("yc"))


@pytest.fixture(scope="module")
def yc_cache(yc_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("yc") / "cache"
    assert prepare_main(["--dataset", "youtube_celebrities", "--source", str(yc_source.parent), "--out", str(out),
                         "--size", "12x8", "--workers", "1"]) == 0
    return out


def test_celebrities_scan_takes_the_person_after_the_third_underscore(yc_source, tmp_path):
    clips, classes = youtube_celebrities.LAYOUT.scan(yc_source.parent)  # finds ytcelebrity/ below the parent
    assert classes == list(tiny_yc.PEOPLE) and len(clips) == 18
    clip = next(c for c in clips if c.clip == "0002_03_001_leonardo_di_caprio")
    assert (clip.label, clip.group, clip.path) == ("leonardo_di_caprio", "03", "0002_03_001_leonardo_di_caprio.avi")
    # per-person folders: the name still gives the person; a folder names the person of a file that does not
    folders = tmp_path / "folders"
    (folders / "adam_sandler").mkdir(parents=True)
    (folders / "salma_hayek").mkdir()
    (folders / "adam_sandler" / "0001_01_001_adam_sandler.avi").write_bytes(b"x")
    (folders / "salma_hayek" / "clip7.avi").write_bytes(b"x")
    (folders / "README.avi").write_bytes(b"x")  # loose and unnamed: not a clip of the release
    clips, classes = youtube_celebrities.LAYOUT.scan(folders)
    assert classes == ["adam_sandler", "salma_hayek"]
    assert [(c.label, c.group, c.path) for c in clips] == [
        ("adam_sandler", "01", "adam_sandler/0001_01_001_adam_sandler.avi"),
        ("salma_hayek", "clip7", "salma_hayek/clip7.avi")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no YouTube Celebrities clips found under .*: expected "
                                        r"<n>_<video id>_<clip id>_<person>.avi"):
        youtube_celebrities.LAYOUT.scan(tmp_path / "empty")


def _video(cache: FrameCache, i: int) -> str:
    return cache.groups[i]  # "<person>/<video id>"


def test_celebrities_folds_group_keeps_a_video_on_one_side(yc_cache):
    cache = FrameCache(yc_cache, youtube_celebrities.LAYOUT)
    assert cache.labels.tolist() == sorted(cache.labels.tolist()) and set(cache.labels.tolist()) == {0, 1, 2}
    for protocol in ("group", "yang2017"):
        folds = [make_splits(cache.labels, cache.groups, protocol, seed=3, fold=k, num_folds=3) for k in range(3)]
        assert np.array_equal(np.sort(np.concatenate([s["test"] for s in folds])), np.arange(18))
        crossing = 0
        for s in folds:
            sides = [{_video(cache, i) for i in s[name]} for name in ("train", "valid", "test")]
            assert sum(len(v) for v in s.values()) == 18
            crossing += len(sides[0] & sides[2]) + len(sides[1] & sides[2]) + len(sides[0] & sides[1])
        if protocol == "group":  # every video's clips on one side, each person in every test fold
            assert crossing == 0
            assert all(set(cache.labels[s["test"]].tolist()) == {0, 1, 2} for s in folds)
        else:  # clip-level folds (the paper's): some video has clips on both sides
            assert crossing > 0


# ----------------------------------------------------------------------------------------- end to end (CLI)
def _train_and_eval(tmp_path: Path, task: str, cache: Path, extra: list[str]) -> tuple[dict, dict]:
    run = tmp_path / "run"
    main(["train", *TINY_RUN, f"task={task}", "cell=tt", "rank=2", f"task.data_dir={cache}", "task.frame_size=[12,8]",
          "task.input_size=288", "task.in_modes=[2,4,6,6]", "task.hidden_size=16", "task.hidden_modes=[2,2,2,2]",
          "task.batch_size=4", "task.eval_batch_size=8", "trainer.max_steps=3", "trainer.eval_every=3", *extra,
          f"hydra.run.dir={run}"])
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run)]) == 0
    return summary, json.loads((run / "eval.json").read_text())


def test_hollywood2_trains_and_evaluates_map_through_the_cli(h2_cache, tmp_path):
    summary, evaluated = _train_and_eval(tmp_path, "hollywood2", h2_cache, [])
    assert summary["metric"] == "map" and summary["steps"] == 3 and summary["protocol"] == "official"
    assert summary["clips"] == {"train": 8, "valid": 2, "test": 4}
    for metrics in (summary["test"], evaluated):
        assert 0.0 < metrics["map"] <= 1.0 and np.isfinite(metrics["loss"])
    assert evaluated["map"] == pytest.approx(summary["test"]["map"], abs=1e-6)  # same checkpoint, same split


def test_celebrities_trains_and_evaluates_accuracy_through_the_cli(yc_cache, tmp_path):
    summary, evaluated = _train_and_eval(tmp_path, "youtube_celebrities", yc_cache,
                                         ["task.num_classes=3", "task.num_folds=3", "task.fold=2"])
    assert summary["metric"] == "accuracy" and summary["protocol"] == "group" and summary["fold"] == 2
    assert summary["frames_per_clip"] == "all"
    assert 0.0 <= evaluated["accuracy"] <= 1.0 and evaluated["accuracy"] == summary["test"]["accuracy"]


def test_hollywood2_loss_is_bce_and_map_is_the_mean_ap_of_the_outputs(h2_cache):
    cfg = group_config("task", "hollywood2", data_dir=str(h2_cache), frame_size=[12, 8], input_size=288,
                       in_modes=[2, 4, 6, 6], hidden_size=8, hidden_modes=[2, 2, 2, 2], batch_size=4, dropout=0.0)
    task = Hollywood2Task(cfg, seed=0)
    task.prepare()
    torch.manual_seed(0)
    cell = cell_config("lstm")
    model = task.build_model(lambda i, h, **kw: build_cell(cell, i, h, **kw)).double()
    batch = task.train_batch(0)
    assert batch["labels"].shape == (4, 12) and batch["lengths"].shape == (4,)
    loss, stats, _ = task.loss(model.train(), batch)
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(batch["frames"], batch["lengths"]))
        y = batch["labels"].double()
        bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        scores, targets = [], []
        for b in task.eval_batches("test"):
            scores.append(model(b["frames"], b["lengths"]).numpy())
            targets.append(b["labels"].numpy())
    assert stats["bce"] == pytest.approx(float(bce), rel=1e-9)
    assert float(loss.detach()) == pytest.approx(stats["bce"] + 1e-2 * stats["l2_classifier"], rel=1e-9)
    assert task.evaluate(model, "test")["map"] == pytest.approx(
        mean_average_precision(np.concatenate(scores), np.concatenate(targets))[0], abs=1e-12)


def _fails(args: list[str], capsys) -> str:
    """`tlstm <args>` in this process: exit 2 with one line on stderr, which is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_video_inputs_are_one_line_errors(h2_source, yc_cache, tmp_path, capsys):
    err = _fails(["train", *TINY_RUN, "task=hollywood2", f"task.data_dir={tmp_path / 'nowhere'}",
                  f"hydra.run.dir={tmp_path / 'r1'}"], capsys)
    assert "prepare_video.py --dataset hollywood2" in err
    err = _fails(["train", *TINY_RUN, "task=hollywood2", f"task.data_dir={yc_cache}", "task.frame_size=[12,8]",
                  "task.input_size=288", "task.in_modes=[2,4,6,6]", f"hydra.run.dir={tmp_path / 'r2'}"], capsys)
    assert "is a YouTube Celebrities frame cache, not a Hollywood2 one" in err
    err = _fails(["info", "task=youtube_celebrities", "task.protocol=official"], capsys)
    assert "choose one of: group, yang2017" in err
    with pytest.raises(UserError, match="task.num_classes=3"):
        YouTubeCelebritiesTask(group_config("task", "youtube_celebrities", data_dir=str(yc_cache),
                                            frame_size=[12, 8], input_size=288), seed=0).prepare()
    capsys.readouterr()
    (tmp_path / "bare").mkdir()
    assert prepare_main(["--dataset", "youtube_celebrities", "--source", str(tmp_path / "bare"),
                         "--out", str(tmp_path / "c")]) == 2
    assert prepare_main(["--dataset", "hollywood2", "--source", str(tmp_path / "bare"),
                         "--out", str(tmp_path / "c")]) == 2
    assert prepare_main(["--dataset", "hollywood2", "--download", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "expected <n>_<video id>_<clip id>_<person>.avi" in err[0]
    assert "no AVIClips/ and no ClipSets/ folder" in err[1] and "--download fetches UCF11 only" in err[2]
