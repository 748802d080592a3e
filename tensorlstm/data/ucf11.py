"""UCF11 (UCF YouTube Action, "UCF11_updated_mpg" release): layout scan, frame cache, splits.

Official layout (after ``unrar x UCF11_updated_mpg.rar``)::

    UCF11_updated_mpg/
      basketball/                    one folder per class (11 classes)
        v_shooting_01/               one sub-folder per group (25 per class: clips of one group share
          v_shooting_01_01.mpg       actor, background and viewpoint)
          ...
          Annotation/                (optional, ignored: no videos inside)
      biking/ ...

``prepare_cache`` decodes every clip once with OpenCV, resizes it to 160x120 RGB and appends the frames
to one uint8 array stored as ``frames.npy`` (memory-mapped by training: training never decodes video
again). ``index.json`` lists per clip its class, group, clip name, first frame (``offset``) and frame
count. Prepare is resumable (a second run only decodes clips that are not in the index yet) and skips
clips that fail to decode, listing them in ``index.json`` and ``skipped.txt``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorlstm.data.video import VideoDecodeError, read_video
from tensorlstm.errors import UserError

UCF11_CLASSES = (
    "basketball",
    "biking",
    "diving",
    "golf_swing",
    "horse_riding",
    "soccer_juggling",
    "swing",
    "tennis_swing",
    "trampoline_jumping",
    "volleyball_spiking",
    "walking",
)
UCF11_URL = "https://www.crcv.ucf.edu/data/UCF11_updated_mpg.rar"
RELEASE_DIR = "UCF11_updated_mpg"
VIDEO_EXTENSIONS = (".mpg", ".mpeg", ".avi", ".mp4")
INDEX_FILE = "index.json"
FRAMES_FILE = "frames.npy"
SKIPPED_FILE = "skipped.txt"
CACHE_FORMAT = "tensorlstm-ucf11-cache"
DEFAULT_SIZE = (160, 120)  # (width, height): 160 x 120 x 3 = 57,600 inputs per frame

SOURCE_HELP = (
    f"download {UCF11_URL}, extract it with `unrar x UCF11_updated_mpg.rar` or "
    "`7z x UCF11_updated_mpg.rar`, and pass the extracted UCF11_updated_mpg folder (one folder per class, "
    "one sub-folder per group, .mpg clips) as --source"
)
CACHE_HELP = (
    "build the cache with `python scripts/prepare_ucf11.py --source <extracted UCF11_updated_mpg> "
    "--out <cache dir>` (or `make data-ucf11`) and set task.data_dir=<cache dir>"
)


# ----------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ClipSource:
    """One clip of the official layout; ``path`` is relative to the source root (POSIX separators)."""

    label: str  # class folder name
    group: str
    clip: str
    path: str


_GROUP_FROM_NAME = re.compile(r"^(v_.+_\d+)_\d+$")


def find_release_root(source: str | Path) -> Path:
    """The folder holding the class folders: ``source`` itself or its ``UCF11_updated_mpg`` child."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"UCF11 source {source} is not a directory; {SOURCE_HELP}")
    child = source / RELEASE_DIR
    if child.is_dir() and not any((source / c).is_dir() for c in UCF11_CLASSES):
        return child
    return source


def scan_layout(source: str | Path) -> tuple[list[ClipSource], list[str]]:
    """All clips of the official layout (sorted by path) and the class names, official ones first.

    A class is a top-level folder with videos below it; the group is the folder directly under the class
    (or, for clips lying directly in the class folder, the ``v_<name>_<gg>`` prefix of the file name).
    """
    root = find_release_root(source)
    clips: list[ClipSource] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for video in sorted(class_dir.rglob("*")):
            if video.suffix.lower() not in VIDEO_EXTENSIONS or not video.is_file():
                continue
            rel = video.relative_to(class_dir)
            if len(rel.parts) >= 2:
                group = rel.parts[0]
            else:
                match = _GROUP_FROM_NAME.match(video.stem)
                group = match.group(1) if match else video.stem
            clips.append(ClipSource(class_dir.name, group, video.stem, video.relative_to(root).as_posix()))
    if not clips:
        raise UserError(f"no video clips ({'/'.join(VIDEO_EXTENSIONS)}) found under {root}; {SOURCE_HELP}")
    present = {c.label for c in clips}
    classes = [c for c in UCF11_CLASSES if c in present] + sorted(present - set(UCF11_CLASSES))
    return clips, classes


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


def read_index(cache_dir: str | Path) -> dict:
    path = Path(cache_dir) / INDEX_FILE
    try:
        with open(path) as f:
            index = json.load(f)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-run the prepare step") from exc
    if index.get("format") != CACHE_FORMAT:
        raise UserError(f"{path} is not a UCF11 frame cache index; {CACHE_HELP}")
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
    source: str | Path,
    out: str | Path,
    size: tuple[int, int] = DEFAULT_SIZE,
    fps: float | None = None,
    workers: int = 1,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> PrepareReport:
    """Decode every clip under ``source`` into the cache at ``out`` (resumable; see the module doc).

    ``size`` = (width, height) of the stored frames; ``fps`` resamples clips to that rate when stored
    (None keeps every frame; tasks can still resample at load time). Clips already in the index are not
    decoded again; clips that failed before are retried only with ``retry_failed``.
    """
    root = find_release_root(source)
    clips, classes = scan_layout(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"frame_size": [int(size[0]), int(size[1])], "fps": fps}
    if (out / INDEX_FILE).exists():
        index = read_index(out)
        old = {"frame_size": index["frame_size"], "fps": index["fps"]}
        if old != settings:
            raise UserError(
                f"the cache in {out} was made with {old}, this run asks for {settings}; "
                "use another --out (or delete that cache)"
            )
    else:
        index = {"format": CACHE_FORMAT, "version": 1, **settings, "frames_file": FRAMES_FILE, "clips": [],
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
    log(f"UCF11: {len(clips)} clips in {root}; {len(done)} already cached, {len(todo)} to decode")
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
                    "class": clip.label, "group": clip.group, "clip": clip.clip, "path": clip.path,
                    "offset": total, "n_frames": int(len(frames)), "src_fps": src_fps,
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


# ----------------------------------------------------------------------------------- download/extract
def download_release(dest: str | Path, url: str = UCF11_URL, timeout: float = 15.0,
                     log: Callable[[str], None] = print) -> Path:
    """Download the release archive into ``dest`` (skipped when complete) and extract it; returns the root.

    Fails fast with a UserError when the host cannot be reached (``timeout`` seconds per socket operation).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / url.rsplit("/", 1)[-1]
    extracted = (dest / RELEASE_DIR).is_dir() or any((dest / c).is_dir() for c in UCF11_CLASSES)
    if extracted:
        log(f"UCF11 already extracted in {dest}; not downloading")
    else:
        if not archive.exists():
            part = archive.with_name(archive.name + ".part")
            log(f"downloading {url} -> {archive}")
            try:
                _resolve(url, timeout)
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
                    shutil.copyfileobj(resp, f, length=1 << 20)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                part.unlink(missing_ok=True)
                raise UserError(
                    f"cannot download the UCF11 archive ({getattr(exc, 'reason', exc)}); on a machine with "
                    f"internet, {SOURCE_HELP}"
                ) from exc
            os.replace(part, archive)
        extract_rar(archive, dest, log)
    return find_release_root(dest)


def _resolve(url: str, timeout: float) -> None:
    """Resolve the host in a helper thread: DNS lookups ignore socket timeouts and can hang offline."""
    host = urllib.parse.urlsplit(url).hostname or ""
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, 443))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError(f"DNS lookup of {host} timed out after {timeout:g} s")
    if isinstance(result[0], OSError):
        raise result[0]


def extract_rar(archive: Path, dest: Path, log: Callable[[str], None] = print) -> None:
    """Extract a .rar with the first tool found: unrar, 7z, bsdtar (UCF11 ships as RAR)."""
    commands = {
        "unrar": ["unrar", "x", "-o+", str(archive), str(dest) + os.sep],
        "7z": ["7z", "x", "-y", f"-o{dest}", str(archive)],
        "bsdtar": ["bsdtar", "-xf", str(archive), "-C", str(dest)],
    }
    for tool, cmd in commands.items():
        if shutil.which(tool):
            log(f"extracting {archive} with {tool}")
            if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
                raise UserError(f"`{' '.join(cmd)}` failed; extract {archive} by hand and pass --source")
            return
    raise UserError(
        f"no RAR extractor found (unrar, 7z or bsdtar): install one (e.g. `apt-get install unrar` or "
        f"`p7zip-full`), run `unrar x {archive}` and pass the extracted folder as --source"
    )


# --------------------------------------------------------------------------------------------- reading
class FrameCache:
    """A prepared cache, read-only: ``frames`` is a memory-mapped (N, H, W, 3) uint8 array."""

    def __init__(self, cache_dir: str | Path) -> None:
        cache_dir = Path(cache_dir)
        if not (cache_dir / INDEX_FILE).is_file() or not (cache_dir / FRAMES_FILE).is_file():
            raise UserError(f"no UCF11 frame cache in {cache_dir} (expects {INDEX_FILE} and {FRAMES_FILE}); "
                            f"{CACHE_HELP}")
        self.dir = cache_dir
        self.index = read_index(cache_dir)
        try:
            self.frames = np.load(cache_dir / FRAMES_FILE, mmap_mode="r")
        except (ValueError, OSError) as exc:  # a header promising more frames than the file holds, or no header
            raise UserError(f"{cache_dir / FRAMES_FILE} cannot be mapped ({exc}); it is truncated or not a frame "
                            "cache: re-run the prepare step on the same --out to repair it") from exc
        self.clips: list[dict] = self.index["clips"]
        if not self.clips:
            raise UserError(f"the UCF11 cache in {cache_dir} holds no clip (all failed to decode?); "
                            f"{CACHE_HELP}")
        end = max(c["offset"] + c["n_frames"] for c in self.clips)
        if len(self.frames) < end:
            raise UserError(f"{cache_dir / FRAMES_FILE} is truncated ({len(self.frames)} of {end} frames); "
                            "re-run the prepare step on the same --out to repair it")
        self.classes: list[str] = list(self.index["classes"])
        label_of = {c: i for i, c in enumerate(self.classes)}
        self.labels = np.array([label_of[c["class"]] for c in self.clips], dtype=np.int64)
        self.groups = [f"{c['class']}/{c['group']}" for c in self.clips]
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
PROTOCOLS = ("ye2018", "yang2017", "group")


def make_splits(
    labels: np.ndarray,
    groups: Sequence[str],
    protocol: str,
    seed: int,
    fold: int = 0,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
    """Clip indices of 'train', 'valid' and 'test' (disjoint, covering every clip, each sorted).

    * ``ye2018``: one random clip-level split, ``test_fraction`` of the clips to test (Ye 2018).
    * ``yang2017``: clip-level ``num_folds``-fold cross-validation stratified by class; test = fold
      ``fold`` (Yang 2017).
    * ``group``: the same folds over groups instead of clips, stratified by class, so clips of one group
      (same actor, scene, viewpoint) are never on two sides; validation also takes whole groups.

    Validation is carved from the training side (``valid_fraction`` of it, per class; whole groups for
    ``group``), so the test split is never used for model selection. Everything depends on ``seed`` only.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown task.protocol {protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
    if protocol != "ye2018" and not 0 <= fold < num_folds:
        raise UserError(f"task.fold={fold} is out of range for task.num_folds={num_folds}; "
                        f"use 0..{num_folds - 1}")
    rng = np.random.default_rng(seed)
    if protocol == "ye2018":
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
