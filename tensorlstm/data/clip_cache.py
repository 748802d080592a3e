"""The frame cache of every video-classification set (UCF11, Hollywood2, YouTube Celebrities): layouts, the
resumable decode-once cache, reading it back, and the splits.

A dataset is a :class:`Layout`: how to find the release root under ``--source``, how to list its clips
(:class:`ClipSource`: label(s), group, official split) and where to point the user when something is missing.
The per-dataset scanners live in ``tensorlstm.data.ucf11``, ``.hollywood2`` and ``.youtube_celebrities``.

``prepare_cache`` decodes every clip once with OpenCV, resizes it and appends the frames to one uint8 array
stored as ``frames.npy`` (memory-mapped by training: training never decodes video again). ``index.json``
lists per clip its label(s), group, clip name, first frame (``offset``) and frame count. Prepare is
resumable (a second run only decodes clips that are not in the index yet) and skips clips that fail to
decode, listing them in ``index.json`` and ``skipped.txt``. The index's ``format`` names the dataset, so a
task never reads another dataset's cache.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorlstm.data.video import VideoDecodeError, read_video
from tensorlstm.errors import UserError

VIDEO_EXTENSIONS = (".mpg", ".mpeg", ".avi", ".mp4")
INDEX_FILE = "index.json"
FRAMES_FILE = "frames.npy"
SKIPPED_FILE = "skipped.txt"


# ----------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ClipSource:
    """One clip of an official layout; ``path`` is relative to the source root (POSIX separators).

    Single-label sets fill ``label``; multi-label sets (Hollywood2) fill ``labels`` (every class the clip
    shows, possibly none) and leave ``label`` empty. ``split`` is the official split ('train'/'test') where
    the release fixes one, else None (folds are drawn)."""

    label: str  # class (UCF11 class folder, YouTube Celebrities person)
    group: str  # clips of one group share a scene (UCF11 group, the celebrity's source video)
    clip: str
    path: str
    labels: tuple[str, ...] = ()
    split: str | None = None

    def entry(self) -> dict:
        """The clip's descriptive keys in index.json (UCF11's entries keep their original four keys)."""
        if self.split is None and not self.labels:
            return {"class": self.label, "group": self.group, "clip": self.clip, "path": self.path}
        return {"labels": list(self.labels), "split": self.split, "group": self.group, "clip": self.clip,
                "path": self.path}


class Layout:
    """A dataset's official layout. Subclasses set the attributes and implement ``find_root`` / ``scan``."""

    name: str  # the task name (task=<name>)
    title: str  # for messages
    cache_format: str  # index.json's "format": identifies the dataset of a cache
    multilabel: bool = False
    default_size: tuple[int, int]  # (width, height) of the stored frames unless --size says otherwise
    source_help: str  # how to get and pass the release (ends the one-line errors of a bad --source)
    cache_help: str  # how to build the cache (ends the errors of a missing/bad task.data_dir)

    def find_root(self, source: str | Path) -> Path:  # pragma: no cover - per dataset
        raise NotImplementedError

    def scan(self, source: str | Path) -> tuple[list[ClipSource], list[str]]:  # pragma: no cover
        """All clips (sorted by path) and the class names in label order."""
        raise NotImplementedError


def source_dir(source: str | Path, layout: Layout) -> Path:
    """``source`` as a directory, or the one-line error that says what to pass."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"{layout.title} source {source} is not a directory; {layout.source_help}")
    return source


# ----------------------------------------------------------------------------------------- frame file
_HEADER_LEN = 128  # fixed .npy header size, so the shape can be rewritten in place as frames are appended


def _npy_header(shape: Sequence[int]) -> bytes:
    dims = tuple(int(s) for s in shape)
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': " + repr(dims) + ", }"
    body = text.ljust(_HEADER_LEN - 11) + "\n"
    header = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")
    assert len(header) == _HEADER_LEN, "shape too long for the fixed header"
    return header


class FrameFile:
    """An append-only uint8 ``.npy`` of frames (N, H, W, 3) whose header is rewritten after each append.

    ``np.load(path, mmap_mode='r')`` reads it at any time. Appends are flushed to disk before the caller
    records them in the index, so after a crash the index never points past the data.
    """

    def __init__(self, path: Path, frame_shape: tuple[int, int, int]) -> None:
        self.path, self.frame_shape = path, tuple(frame_shape)
        self.frame_bytes = int(np.prod(frame_shape))
        if not path.exists():
            with open(path, "wb") as f:
                f.write(_npy_header((0, *self.frame_shape)))
        self._check_header()
        self.file = open(path, "r+b")  # closed in close()

    def _check_header(self) -> None:
        with open(self.path, "rb") as f:
            try:
                if np.lib.format.read_magic(f) != (1, 0):
                    raise ValueError("not a version 1.0 .npy header")
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            except ValueError as exc:
                raise UserError(f"{self.path} is not a frame cache (.npy): {exc}; delete it, re-run") from exc
            stored = tuple(shape[1:])
            if f.tell() != _HEADER_LEN or dtype != np.uint8 or fortran or stored != self.frame_shape:
                raise UserError(
                    f"{self.path} holds {dtype} frames of shape {stored}, not uint8 {self.frame_shape}; "
                    "use another --out or delete the cache"
                )

    def stored_frames(self) -> int:
        """Whole frames present on disk (the header may lag behind the data after a crash)."""
        return max(0, (os.path.getsize(self.path) - _HEADER_LEN) // self.frame_bytes)

    def truncate(self, n_frames: int) -> None:
        """Keep the first ``n_frames`` frames (drop what a crashed run appended after its last commit)."""
        self.file.truncate(_HEADER_LEN + n_frames * self.frame_bytes)
        self._write_header(n_frames)

    def append(self, frames: np.ndarray, at: int) -> None:
        """Write frames starting at frame ``at`` (the current committed end) and make them durable."""
        assert frames.dtype == np.uint8 and frames.shape[1:] == self.frame_shape
        self.file.seek(_HEADER_LEN + at * self.frame_bytes)
        self.file.write(np.ascontiguousarray(frames).tobytes())
        self._write_header(at + len(frames))

    def _write_header(self, n_frames: int) -> None:
        self.file.seek(0)
        self.file.write(_npy_header((n_frames, *self.frame_shape)))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# -------------------------------------------------------------------------------------------- prepare
@dataclass
class PrepareReport:
    """What a prepare run did: clips in the cache, clips decoded now, clips that failed (path, reason)."""

    out: Path
    n_clips: int
    n_new: int
    n_frames: int
    failed: list[dict] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.n_clips > 0


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


FORMATS = {"tensorlstm-ucf11-cache": "UCF11", "tensorlstm-hollywood2-cache": "Hollywood2",
           "tensorlstm-youtube_celebrities-cache": "YouTube Celebrities"}


def read_index(cache_dir: str | Path, layout: Layout) -> dict:
    path = Path(cache_dir) / INDEX_FILE
    try:
        with open(path) as f:
            index = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run the prepare step") from exc
    found = index.get("format") if isinstance(index, dict) else None
    if found != layout.cache_format:
        if found in FORMATS:
            raise UserError(f"{path} is a {FORMATS[found]} frame cache, not a {layout.title} one: point "
                            f"task.data_dir at a {layout.title} cache; {layout.cache_help}")
        raise UserError(f"{path} is not a {layout.title} frame cache index; {layout.cache_help}")
    return index


def _decode_job(job: tuple[ClipSource, str, tuple[int, int], float | None]):
    """Decode one clip (runs in a worker process). Returns (clip, frames | None, fps, error)."""
    from tensorlstm.data.video import quiet_opencv, resample_indices

    clip, root, size, fps = job
    quiet_opencv()
    try:
        frames, src_fps = read_video(Path(root) / clip.path, size=size)
    except VideoDecodeError as exc:
        return clip, None, None, str(exc)
    except Exception as exc:  # any decoder failure skips the clip, it never aborts prepare
        return clip, None, None, f"{type(exc).__name__}: {exc}"
    if fps:
        frames = frames[resample_indices(len(frames), src_fps, fps)]
    return clip, frames, src_fps, None


def prepare_cache(
    layout: Layout,
    source: str | Path,
    out: str | Path,
    size: tuple[int, int],
    fps: float | None = None,
    workers: int = 1,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> PrepareReport:
    """Decode every clip of ``layout`` under ``source`` into the cache at ``out`` (resumable; module doc).

    ``size`` = (width, height) of the stored frames; ``fps`` resamples clips to that rate when stored
    (None keeps every frame; tasks can still resample at load time). Clips already in the index are not
    decoded again; clips that failed before are retried only with ``retry_failed``.
    """
    root = layout.find_root(source)
    clips, classes = layout.scan(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"frame_size": [int(size[0]), int(size[1])], "fps": fps}
    if (out / INDEX_FILE).exists():
        index = read_index(out, layout)
        old = {"frame_size": index["frame_size"], "fps": index["fps"]}
        if old != settings:
            raise UserError(
                f"the cache in {out} was made with {old}, this run asks for {settings}; "
                "use another --out (or delete that cache)"
            )
    else:
        index = {"format": layout.cache_format, "version": 1, **settings, "frames_file": FRAMES_FILE, "clips": [],
                 "failed": []}
    index.update(source=str(root.resolve()), classes=classes, complete=False)
    frames_file = FrameFile(out / FRAMES_FILE, (int(size[1]), int(size[0]), 3))
    # keep the clips whose frames are on disk (all of them unless frames.npy was lost or cut short), and
    # drop frames a crashed run appended after its last index commit
    stored = frames_file.stored_frames()
    index["clips"] = [c for c in index["clips"] if c["offset"] + c["n_frames"] <= stored]
    total = max((c["offset"] + c["n_frames"] for c in index["clips"]), default=0)
    frames_file.truncate(total)
    done = {c["path"] for c in index["clips"]}
    failed_before = {f["path"] for f in index["failed"]}
    if retry_failed:
        index["failed"] = []
    todo = [c for c in clips if c.path not in done and (retry_failed or c.path not in failed_before)]
    log(f"{layout.title}: {len(clips)} clips in {root}; {len(done)} already cached, {len(todo)} to decode")
    n_new = 0
    try:
        for i, (clip, frames, src_fps, error) in enumerate(_run_jobs(todo, str(root), size, fps, workers), 1):
            if error is not None:
                index["failed"] = [f for f in index["failed"] if f["path"] != clip.path]
                index["failed"].append({"path": clip.path, "error": error})
                log(f"  skipped {clip.path}: {error}")
            else:
                frames_file.append(frames, total)
                index["clips"].append({
                    **clip.entry(), "offset": total, "n_frames": int(len(frames)), "src_fps": src_fps,
                })
                total += len(frames)
                n_new += 1
            index["total_frames"] = total
            _write_json_atomic(out / INDEX_FILE, index)
            if i % 50 == 0 or i == len(todo):
                log(f"  {i}/{len(todo)} decoded, {total} frames cached")
    finally:
        frames_file.close()
    index["clips"].sort(key=lambda c: c["path"])
    index.update(total_frames=total, complete=True)
    _write_json_atomic(out / INDEX_FILE, index)
    (out / SKIPPED_FILE).write_text("".join(f"{f['path']}\t{f['error']}\n" for f in index["failed"]))
    return PrepareReport(out, len(index["clips"]), n_new, total, list(index["failed"]))


def _run_jobs(todo: Sequence[ClipSource], root: str, size, fps, workers: int) -> Iterable:
    jobs = [(c, root, tuple(size), fps) for c in todo]
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_decode_job, jobs)
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_decode_job, jobs, chunksize=1)  # in order: the cache layout is deterministic


# --------------------------------------------------------------------------------------------- reading
class FrameCache:
    """A prepared cache, read-only: ``frames`` is a memory-mapped (N, H, W, 3) uint8 array.

    ``labels`` is the class index per clip (int64) for single-label sets, the multi-hot (N, C) float32
    targets for multi-label ones; ``official_split`` the release's split per clip where it has one."""

    def __init__(self, cache_dir: str | Path, layout: Layout) -> None:
        cache_dir = Path(cache_dir)
        if not (cache_dir / INDEX_FILE).is_file() or not (cache_dir / FRAMES_FILE).is_file():
            raise UserError(f"no {layout.title} frame cache in {cache_dir} (expects {INDEX_FILE} and "
                            f"{FRAMES_FILE}); {layout.cache_help}")
        self.dir = cache_dir
        self.layout = layout
        self.index = read_index(cache_dir, layout)
        try:
            self.frames = np.load(cache_dir / FRAMES_FILE, mmap_mode="r")
        except (ValueError, OSError) as exc:  # a header promising more frames than the file holds, or no header
            raise UserError(f"{cache_dir / FRAMES_FILE} cannot be mapped ({exc}); it is truncated or not a frame "
                            "cache: re-run the prepare step on the same --out to repair it") from exc
        self.clips: list[dict] = self.index["clips"]
        if not self.clips:
            raise UserError(f"the {layout.title} cache in {cache_dir} holds no clip (all failed to decode?); "
                            f"{layout.cache_help}")
        end = max(c["offset"] + c["n_frames"] for c in self.clips)
        if len(self.frames) < end:
            raise UserError(f"{cache_dir / FRAMES_FILE} is truncated ({len(self.frames)} of {end} frames); "
                            "re-run the prepare step on the same --out to repair it")
        self.classes: list[str] = list(self.index["classes"])
        label_of = {c: i for i, c in enumerate(self.classes)}
        self.multilabel = layout.multilabel
        if self.multilabel:
            self.labels = np.zeros((len(self.clips), len(self.classes)), dtype=np.float32)
            for i, c in enumerate(self.clips):
                self.labels[i, [label_of[name] for name in c["labels"]]] = 1.0
            self.groups = [c["group"] for c in self.clips]
        else:
            self.labels = np.array([label_of[c["class"]] for c in self.clips], dtype=np.int64)
            self.groups = [f"{c['class']}/{c['group']}" for c in self.clips]
        self.official_split: list[str] | None = ([c["split"] for c in self.clips] if "split" in self.clips[0]
                                                 else None)
        self.offsets = np.array([c["offset"] for c in self.clips], dtype=np.int64)
        self.lengths = np.array([c["n_frames"] for c in self.clips], dtype=np.int64)
        self.frame_size = tuple(self.index["frame_size"])  # (width, height)
        self.fps: float | None = self.index.get("fps")

    def __len__(self) -> int:
        return len(self.clips)

    def clip_fps(self, i: int) -> float | None:
        """Frame rate of the stored frames of clip i (the prepare rate, else the source's)."""
        return self.fps or self.clips[i].get("src_fps")

    def read(self, i: int, frame_idx: np.ndarray) -> np.ndarray:
        """Frames ``frame_idx`` (sorted indices into the stored clip) of clip i, as (T, H, W, 3) uint8."""
        return np.asarray(self.frames[self.offsets[i] + np.asarray(frame_idx, dtype=np.int64)])


# ---------------------------------------------------------------------------------------------- splits
PROTOCOLS = ("ye2018", "yang2017", "group", "official")


def make_splits(
    labels: np.ndarray,
    groups: Sequence[str],
    protocol: str,
    seed: int,
    fold: int = 0,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    official: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Clip indices of 'train', 'valid' and 'test' (disjoint, each sorted; covering every clip but the clips
    an official split leaves out).

    * ``ye2018``: one random clip-level split, ``test_fraction`` of the clips to test (Ye 2018).
    * ``yang2017``: clip-level ``num_folds``-fold cross-validation stratified by class; test = fold
      ``fold`` (Yang 2017).
    * ``group``: the same folds over groups instead of clips, stratified by class, so clips of one group
      (same actor, scene, viewpoint) are never on two sides; validation also takes whole groups.
    * ``official``: the release's own train/test split (``official``: 'train' or 'test' per clip, e.g.
      Hollywood2's clean set); validation is a random ``valid_fraction`` of the training clips. Clips marked
      'autotrain' join the training split after that carve (never validation); any other mark is left out.

    Validation is carved from the training side (``valid_fraction`` of it, per class; whole groups for
    ``group``), so the test split is never used for model selection. Everything depends on ``seed`` only.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown task.protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if protocol == "official" and official is None:
        raise UserError("task.protocol=official needs a release with an official train/test split (Hollywood2); "
                        "choose a cross-validation protocol for this data")
    if protocol in ("yang2017", "group") and not 0 <= fold < num_folds:
        raise UserError(f"task.fold={fold} is out of range for task.num_folds={num_folds}; "
                        f"use 0..{num_folds - 1}")
    rng = np.random.default_rng(seed)
    if protocol == "official":
        official = np.asarray(official)
        test = np.flatnonzero(official == "test")
        train, valid = _carve(np.flatnonzero(official == "train"), np.zeros(n, dtype=np.int64), valid_fraction, rng)
        train = np.concatenate([train, np.flatnonzero(official == "autotrain")])
    elif protocol == "ye2018":
        perm = rng.permutation(n)
        n_test = int(round(test_fraction * n))
        test, rest = perm[:n_test], perm[n_test:]
        train, valid = _carve(rest, labels, valid_fraction, rng)
    else:
        units = np.arange(n) if protocol == "yang2017" else _group_ids(groups)
        unit_label = np.zeros(units.max() + 1, dtype=np.int64)
        unit_label[units] = labels
        unit_fold = _stratified_folds(unit_label, num_folds, rng)
        test_units = np.flatnonzero(unit_fold == fold)
        train_units, valid_units = _carve(np.flatnonzero(unit_fold != fold), unit_label, valid_fraction, rng)
        test, train, valid = (np.flatnonzero(np.isin(units, u))
                              for u in (test_units, train_units, valid_units))
    splits = {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}
    for name, idx in splits.items():
        if len(idx) == 0:
            raise UserError(
                f"the {protocol} protocol leaves the {name} split empty on {n} clips; use more data "
                "or change task.num_folds / task.test_fraction / task.valid_fraction"
            )
    return splits


def _group_ids(groups: Sequence[str]) -> np.ndarray:
    names = sorted(set(groups))
    pos = {g: i for i, g in enumerate(names)}
    return np.array([pos[g] for g in groups], dtype=np.int64)


def _stratified_folds(unit_label: np.ndarray, num_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each unit: per class, a random order dealt round-robin (fold sizes differ by at most 1)."""
    fold = np.zeros(len(unit_label), dtype=np.int64)
    start = 0
    for c in np.unique(unit_label):
        members = rng.permutation(np.flatnonzero(unit_label == c))
        fold[members] = (start + np.arange(len(members))) % num_folds
        start = (start + len(members)) % num_folds  # the next class continues the deal: balanced totals
    return fold


def _carve(units: np.ndarray, unit_label: np.ndarray, fraction: float, rng: np.random.Generator):
    """Split ``units`` into (train, valid): per class, round(fraction * count) units to valid (at least
    one when the class has two or more units and fraction > 0)."""
    train, valid = [], []
    for c in np.unique(unit_label[units]):
        members = rng.permutation(units[unit_label[units] == c])
        k = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        valid.append(members[:k])
        train.append(members[k:])
    return np.concatenate(train), np.concatenate(valid)


# ---------------------------------------------------------------------------------------------- registry
LAYOUTS = {
    "ucf11": "tensorlstm.data.ucf11",
    "hollywood2": "tensorlstm.data.hollywood2",
    "youtube_celebrities": "tensorlstm.data.youtube_celebrities",
}


def get_layout(name: str) -> Layout:
    """The layout of dataset ``name`` (each module defines ``LAYOUT``; imported on first use)."""
    import importlib

    if name not in LAYOUTS:
        raise UserError(f"unknown video dataset {name!r}; choose one of: {', '.join(LAYOUTS)}")
    return importlib.import_module(LAYOUTS[name]).LAYOUT
