"""UCF11: decoding, the resumable frame cache, the three protocols' splits, the task end to end on tiny
MPEG-1 clips written in the official layout, and the papers' parameter counts of every table row."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import ucf11 as tiny

from tensorlstm.cells import build_cell
from tensorlstm.data.ucf11 import (
    FRAMES_FILE,
    INDEX_FILE,
    SKIPPED_FILE,
    download_release,
    make_splits,
    prepare_cache,
    scan_layout,
)
from tensorlstm.data.video import read_video, resample_indices
from tensorlstm.defaults import cell_config, group_config
from tensorlstm.errors import UserError
from tensorlstm.tasks.ucf11 import UCF11Task

ROOT = Path(__file__).resolve().parents[1]
# a real encoded clip, where the project's shared data folder sits beside the checkout (../shared/data)
REAL_VIDEO = ROOT.parent / "shared" / "data" / "video" / "carphone_pristine.mp4"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_cli = _load("prepare_ucf11_cli", ROOT / "scripts" / "prepare_ucf11.py")

N_GOOD = len(tiny.CLASSES) * tiny.GROUPS * tiny.CLIPS_PER_GROUP
QUIET = {"log": lambda _msg: None}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny.write_source(tmp_path_factory.mktemp("ucf11") / "src")


@pytest.fixture(scope="module")
def cache(source, tmp_path_factory) -> Path:
    """The default 160x120 cache of the tiny source."""
    out = tmp_path_factory.mktemp("ucf11") / "cache"
    prepare_cache(source, out, workers=1, **QUIET)
    return out


@pytest.fixture(scope="module")
def small_cache(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ucf11") / "cache16"
    prepare_cache(source, out, size=(16, 12), workers=1, **QUIET)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def task_cfg(data_dir: Path, **kw) -> dict:
    tiny = dict(data_dir=str(data_dir), frame_size=[16, 12], input_size=576, in_modes=[4, 6, 6, 4], hidden_size=16,
                hidden_modes=[2, 2, 2, 2], num_classes=3, protocol="group", num_folds=3, batch_size=4,
                eval_batch_size=8, dropout=0.0, l2_classifier=1e-2)
    return group_config("task", "ucf11", **{**tiny, **kw})


def cell_cfg(name: str = "lstm", **kw) -> dict:
    return cell_config(name, **{"rank": 2, "blocks": 1, **kw})


def factory(cfg: dict):
    return lambda input_size, hidden_size, **kw: build_cell(cfg, input_size, hidden_size, **kw)


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.skipif(not REAL_VIDEO.exists(), reason="no real clip in ../shared/data/video beside the checkout")
def test_real_h264_clip_decodes_resized_and_resamples():
    frames, fps = read_video(REAL_VIDEO)
    assert frames.dtype == np.uint8 and frames.shape[1:] == (120, 160, 3)
    assert len(frames) > 50 and abs(fps - 29.97) < 0.01
    assert 20 < frames.mean() < 235 and frames.std() > 10  # real content, not a blank decode
    keep = resample_indices(len(frames), fps, 24.0)
    assert abs(len(keep) - len(frames) * 24.0 / fps) <= 1
    assert np.all(np.diff(keep) >= 1) and keep[-1] < len(frames)


def test_resample_indices_never_duplicates():
    assert resample_indices(10, 25.0, None).tolist() == list(range(10))
    assert resample_indices(10, 25.0, 30.0).tolist() == list(range(10))  # no upsampling
    assert resample_indices(10, 30.0, 15.0).tolist() == [0, 2, 4, 6, 8]
    assert resample_indices(0, 30.0, 15.0).tolist() == []


# ------------------------------------------------------------------------------------------------ prepare
def test_scan_finds_official_layout(source):
    clips, classes = scan_layout(source.parent)  # the parent of UCF11_updated_mpg works too
    assert classes == list(tiny.CLASSES)
    assert len(clips) == N_GOOD + 1
    clip = next(c for c in clips if c.clip == "v_biking_02_01")
    assert (clip.label, clip.group) == ("biking", "v_biking_02")
    assert clip.path == "biking/v_biking_02/v_biking_02_01.mpg"


def test_prepare_writes_cache_and_lists_the_corrupt_clip(cache):
    index = json.loads((cache / INDEX_FILE).read_text())
    assert index["complete"] and index["frame_size"] == [160, 120]
    assert [f["path"] for f in index["failed"]] == [tiny.CORRUPT]
    assert (cache / SKIPPED_FILE).read_text().startswith(tiny.CORRUPT + "\t")
    clips = index["clips"]
    assert len(clips) == N_GOOD
    frames = np.load(cache / FRAMES_FILE, mmap_mode="r")
    assert frames.dtype == np.uint8 and frames.shape == (index["total_frames"], 120, 160, 3)
    ends = sorted((c["offset"], c["offset"] + c["n_frames"]) for c in clips)
    assert ends[0][0] == 0 and ends[-1][1] == len(frames)
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))  # contiguous, no gap, no overlap
    for c in clips:
        k = int(c["clip"].rsplit("_", 1)[1])
        assert c["n_frames"] == tiny.clip_length(k) and c["src_fps"] == pytest.approx(tiny.FPS)
        assert c["group"] == c["clip"].rsplit("_", 1)[0]
        # RGB order and frame order survive MPEG-1 coding: R encodes the class, G the frame index
        label = tiny.CLASSES.index(c["class"])
        for t in (0, c["n_frames"] - 1):
            pixel = frames[c["offset"] + t, 60, 80].astype(int)
            assert np.abs(pixel - np.array(tiny.frame_colour(label, t))).max() <= 8, (c["path"], t, pixel)


def test_prepare_resumes_after_a_crash_and_decodes_only_new_clips(source, tmp_path):
    out = tmp_path / "cache"
    first = prepare_cache(source, out, size=(16, 12), **QUIET)
    assert (first.n_clips, first.n_new, len(first.failed)) == (N_GOOD, N_GOOD, 1)
    digest = _sha(out / FRAMES_FILE)
    again = prepare_cache(source, out, size=(16, 12), **QUIET)
    assert (again.n_clips, again.n_new) == (N_GOOD, 0) and _sha(out / FRAMES_FILE) == digest
    # a crash after appending frames but before committing the index: the frames file has extra bytes and
    # the index lacks the last clip; the next run drops the bytes and decodes that clip again
    index = json.loads((out / INDEX_FILE).read_text())
    last = max(index["clips"], key=lambda c: c["offset"])
    index["clips"].remove(last)
    (out / INDEX_FILE).write_text(json.dumps(index))
    with open(out / FRAMES_FILE, "ab") as f:
        f.write(b"\xff" * 1000)
    repaired = prepare_cache(source, out, size=(16, 12), **QUIET)
    assert repaired.n_new == 1 and _sha(out / FRAMES_FILE) == digest
    # a lost frames file: every clip is decoded again, to the same bytes
    (out / FRAMES_FILE).unlink()
    rebuilt = prepare_cache(source, out, size=(16, 12), **QUIET)
    assert (rebuilt.n_clips, rebuilt.n_new) == (N_GOOD, N_GOOD) and _sha(out / FRAMES_FILE) == digest
    with pytest.raises(UserError, match="another --out"):
        prepare_cache(source, out, size=(32, 24), **QUIET)


def test_prepare_cli_exit_codes(source, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["--source", str(source), "--out", str(out), "--size", "16x12", "--workers", "1"]
    assert prepare_cli.main(args) == 0
    printed = capsys.readouterr().out
    assert tiny.CORRUPT in printed and "1 clip(s) failed" in printed
    broken = tmp_path / "broken" / "walking" / "v_walk_dog_01"
    broken.mkdir(parents=True)
    (broken / "v_walk_dog_01_01.mpg").write_bytes(b"garbage" * 50)
    assert prepare_cli.main(["--source", str(tmp_path / "broken"), "--out", str(tmp_path / "c2")]) == 1
    (tmp_path / "empty").mkdir()
    assert prepare_cli.main(["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "c3")]) == 2
    assert "UCF11_updated_mpg.rar" in capsys.readouterr().err


def test_download_fails_fast_offline(tmp_path):
    start = time.monotonic()
    with pytest.raises(UserError, match="unrar x"):
        download_release(tmp_path, url="https://ucf11.invalid/UCF11_updated_mpg.rar", timeout=3.0,
                         log=lambda _m: None)
    assert time.monotonic() - start < 10
    assert not list(tmp_path.glob("*.part"))
    # an already extracted release is used as is, without touching the network
    (tmp_path / "UCF11_updated_mpg" / "biking").mkdir(parents=True)
    root = download_release(tmp_path, url="https://ucf11.invalid/x.rar", log=lambda _m: None)
    assert root == tmp_path / "UCF11_updated_mpg"


# ------------------------------------------------------------------------------------------------- splits
def _fake_dataset(classes=11, groups=25, seed=0):
    rng = np.random.default_rng(seed)
    labels, names = [], []
    for c in range(classes):
        for g in range(groups):
            for _ in range(rng.integers(4, 9)):
                labels.append(c)
                names.append(f"c{c}/g{g}")
    return np.array(labels), names


@pytest.mark.parametrize("protocol", ["group", "yang2017"])
def test_cross_validation_folds_partition_the_clips(protocol):
    labels, groups = _fake_dataset()
    tests = [make_splits(labels, groups, protocol, seed=3, fold=k)["test"] for k in range(5)]
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(len(labels)))
    for k in range(5):
        s = make_splits(labels, groups, protocol, seed=3, fold=k)
        assert sum(len(v) for v in s.values()) == len(labels)
        train, valid, test = (set(s[k].tolist()) for k in ("train", "valid", "test"))
        assert not (train & valid or train & test or valid & test)
        assert set(labels[s["valid"]]) == set(range(11)) and set(labels[s["test"]]) == set(range(11))
        if protocol == "group":  # no group on two sides
            sides = [{groups[i] for i in s[name]} for name in ("train", "valid", "test")]
            assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
            per_class_test = np.bincount(labels[s["test"]], minlength=11)
            assert per_class_test.min() > 0
        else:
            assert abs(len(s["test"]) - len(labels) / 5) <= 11  # stratified: each class within one clip


def test_ye2018_split_is_one_random_80_20_split():
    labels, groups = _fake_dataset()
    a = make_splits(labels, groups, "ye2018", seed=11111986)
    b = make_splits(labels, groups, "ye2018", seed=11111986, fold=4)  # fold is ignored
    c = make_splits(labels, groups, "ye2018", seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert len(a["test"]) == round(0.2 * len(labels))
    assert abs(len(a["valid"]) - 0.1 * (len(labels) - len(a["test"]))) <= 11
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(len(labels)))
    # clip-level: some groups have clips in both train and test (why `group` is the honest protocol)
    assert {groups[i] for i in a["train"]} & {groups[i] for i in a["test"]}


def test_split_errors_are_user_errors():
    labels, groups = _fake_dataset(classes=2, groups=2)
    with pytest.raises(UserError, match="valid split empty"):
        make_splits(labels, groups, "group", seed=0, num_folds=2)
    with pytest.raises(UserError, match="task.fold=5"):
        make_splits(labels, groups, "yang2017", seed=0, fold=5)
    with pytest.raises(UserError, match="task.protocol"):
        make_splits(labels, groups, "kfold", seed=0)


# ---------------------------------------------------------------------------------------------------- task
def test_task_errors(tmp_path, small_cache):
    with pytest.raises(UserError, match="prepare_ucf11.py"):
        UCF11Task(task_cfg(tmp_path / "nowhere"), seed=0).prepare()
    with pytest.raises(UserError, match="task.num_classes=3"):
        UCF11Task(task_cfg(small_cache, num_classes=11), seed=0).prepare()
    with pytest.raises(UserError, match="task.input_size=576"):
        UCF11Task(task_cfg(small_cache, input_size=57600), seed=0)
    with pytest.raises(UserError, match="task.frames='six'"):
        UCF11Task(task_cfg(small_cache, frames="six"), seed=0)
    with pytest.raises(UserError, match="task.protocol"):
        UCF11Task(task_cfg(small_cache, protocol="loo"), seed=0)


def test_train_batches_are_pure_and_sample_frames_in_order(cache):
    cfg = task_cfg(cache, protocol="ye2018")  # cache is 160x120: frames are resized to 16x12 on load
    a, b = UCF11Task(cfg, seed=5), UCF11Task(dict(cfg, prefetch=0), seed=5)
    a.prepare()
    b.prepare()
    batch = a.train_batch(7)
    assert batch["frames"].shape == (4, 6, 12, 16, 3) and batch["frames"].dtype == torch.uint8
    assert "lengths" not in batch
    # same (seed, step), same batch: with or without prefetching, in any order
    for step in (7, 8, 9, 3, 8, 8):
        x, y = a.train_batch(step), b.train_batch(step)
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(batch["frames"], a.train_batch(8)["frames"])
    # G encodes the frame index: sampled positions are increasing, labels match the R channel
    index = ((batch["frames"][..., 6, 8, 1].double() - 20) / 18).round()
    assert torch.all(index[:, 1:] >= index[:, :-1]) and index.min() >= 0
    red_class = ((batch["frames"][:, 0, 6, 8, 0].double() - 40) / 60).round().long()
    assert torch.equal(red_class, batch["labels"])
    # evaluation frames are fixed: evenly spaced over the clip
    i = int(a.splits["test"][0])
    assert np.array_equal(a._frame_indices(i, None), np.round(np.linspace(0, a.cache.lengths[i] - 1, 6)))
    # an epoch draws training clips without replacement
    epoch = np.concatenate([a.train_batch(s)["labels"].numpy() for s in range(a.steps_per_epoch())])
    assert len(epoch) == a.steps_per_epoch() * 4 <= len(a.splits["train"])
    available = np.bincount(a.cache.labels[a.splits["train"]], minlength=3)
    assert np.all(np.bincount(epoch, minlength=3) <= available)


def test_yang2017_masks_padding(small_cache):
    task = UCF11Task(task_cfg(small_cache, protocol="yang2017", fps=None), seed=0)
    task.prepare()
    batch = task.train_batch(0)
    assert batch["lengths"].shape == (4,) and batch["frames"].shape[1] == int(batch["lengths"].max())
    assert {c["n_frames"] for c in task.cache.clips} == {8, 10}
    torch.manual_seed(0)
    model = task.build_model(factory(cell_cfg("tt", gate_activation="hard_sigmoid"))).double().eval()
    clips = np.array([i for i in range(len(task.cache)) if task.cache.lengths[i] == 8][:1]
                     + [i for i in range(len(task.cache)) if task.cache.lengths[i] == 10][:1])
    padded = task._make_batch(clips, None)
    assert padded["lengths"].tolist() == [8, 10] and padded["frames"].shape[1] == 10
    with torch.no_grad():
        together = model(padded["frames"], padded["lengths"])
        alone = model(padded["frames"][:1, :8], padded["lengths"][:1])
    torch.testing.assert_close(together[:1], alone, rtol=1e-12, atol=1e-12)
    # evaluation batches respect the padded-frame budget and cover the split once
    task.eval_frame_budget = 20
    batches = list(task.eval_batches("test"))
    assert all(len(b["labels"]) == 1 or b["frames"].shape[0] * b["frames"].shape[1] <= 20 for b in batches)
    assert sum(len(b["labels"]) for b in batches) == len(task.splits["test"]) and len(batches) > 1


@pytest.mark.parametrize("cell", ["lstm", "tt"])
def test_training_steps_lower_the_loss(small_cache, cell):
    torch.manual_seed(0)
    task = UCF11Task(task_cfg(small_cache, protocol="group", normalize="channel_mean"), seed=1)
    task.prepare()
    assert task.pixel_mean[0] > 40 and task.pixel_scale.min() >= 1.0
    model = task.build_model(factory(cell_cfg(cell)))
    assert torch.allclose(model.pixel_mean, task.pixel_mean)
    before = task.evaluate(model, "train")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for step in range(40):
        loss, stats, _ = task.loss(model, task.train_batch(step))
        assert torch.isfinite(loss) and loss.item() == pytest.approx(
            stats["ce"] + 1e-2 * stats["l2_classifier"], rel=1e-5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = task.evaluate(model, "train")
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    test = task.evaluate(model, "test")
    assert 0.0 <= test["accuracy"] <= 1.0 and test["accuracy"] > 1 / 3
    summary = task.summarize([])
    assert summary["clips"] == {k: len(v) for k, v in task.splits.items()} and summary["protocol"] == "group"
