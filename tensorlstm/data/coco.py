"""MSCOCO captions: the official 2014 json layout, Karpathy's split, tokenisation, vocabulary, feature cache.

Layout under ``data_dir`` (the official release plus Karpathy's split file)::

    annotations/captions_train2014.json    from annotations_trainval2014.zip
    annotations/captions_val2014.json
    train2014/COCO_train2014_*.jpg         from train2014.zip
    val2014/COCO_val2014_*.jpg             from val2014.zip
    dataset_coco.json                      Karpathy's split (caption_datasets.zip)

Captions come from the official annotation files; the split from ``dataset_coco.json``: its ``restval``
images join ``train`` (113,287 training, 5,000 validation, 5,000 test images). Image features are extracted
once into a memory-mapped cache (``features/<encoder key>.npy`` beside the data, see :class:`FeatureCache`),
so training never decodes a JPEG.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorlstm.errors import UserError

COCO_DOWNLOAD = "https://cocodataset.org/#download"
WHERE = {
    "annotations": f"annotations_trainval2014.zip from {COCO_DOWNLOAD} "
                   "(http://images.cocodataset.org/annotations/annotations_trainval2014.zip), unzipped into",
    "train2014": "train2014.zip from http://images.cocodataset.org/zips/train2014.zip, unzipped into",
    "val2014": "val2014.zip from http://images.cocodataset.org/zips/val2014.zip, unzipped into",
    "split": "dataset_coco.json from Karpathy's caption_datasets.zip "
             "(https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip), put into",
}
SUBSETS = ("train2014", "val2014")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "valid", "test": "test"}

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
_WORD = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words with punctuation stripped: "A man's hat, red." -> ['a', 'man', 's', 'hat', 'red']."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Words of the training captions seen at least ``min_count`` times, after the four specials
    (<pad>=0, <start>=1, <end>=2, <unk>=3); ordered by count (then alphabetically), so it is deterministic."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = [*SPECIALS, *words]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad, self.start, self.end, self.unk = (self.index[s] for s in SPECIALS)

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int) -> Vocabulary:
        counts = Counter(w for c in captions for w in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls([w for w in kept if w not in SPECIALS])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, caption: str, max_words: int | None = None) -> list[int]:
        """<start> w1 .. wn <end> (unknown words -> <unk>; at most max_words words)."""
        ids = [self.index.get(w, self.unk) for w in tokenize(caption)]
        if max_words is not None:
            ids = ids[:max_words]
        return [self.start, *ids, self.end]

    def decode(self, ids: Sequence[int]) -> str:
        """Words up to the first <end>, specials other than <unk> dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.end:
                break
            if i not in (self.pad, self.start):
                out.append(self.words[i])
        return " ".join(out)


@dataclass
class CaptionItem:
    image_id: int
    path: Path
    captions: list[str]


# ------------------------------------------------------------------------------------------------ layout
def _missing(path: Path, what: str, data_dir: Path) -> UserError:
    return UserError(f"COCO layout: {path} is missing; get {WHERE[what]} {data_dir}")


def check_layout(data_dir: str | Path, split_file: str) -> None:
    """One line naming the first missing file or folder of the layout and where to get it."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"COCO data directory {data_dir} does not exist; it needs annotations/captions_train2014"
                        f".json, captions_val2014.json, train2014/, val2014/ and {split_file} "
                        f"(images and annotations from {COCO_DOWNLOAD}, the split from Karpathy's "
                        "caption_datasets.zip); or use task.dataset=shapes")
    for subset in SUBSETS:
        path = data_dir / "annotations" / f"captions_{subset}.json"
        if not path.is_file():
            raise _missing(path, "annotations", data_dir)
    for subset in SUBSETS:
        if not (data_dir / subset).is_dir():
            raise _missing(data_dir / subset, subset, data_dir)
    if not (data_dir / split_file).is_file():
        raise _missing(data_dir / split_file, "split", data_dir)


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable json file ({e}); re-extract it from its archive") from e


def read_annotations(data_dir: Path) -> dict[int, CaptionItem]:
    """image id -> item (file path, captions) from both official caption files."""
    items: dict[int, CaptionItem] = {}
    for subset in SUBSETS:
        path = data_dir / "annotations" / f"captions_{subset}.json"
        data = _read_json(path)
        try:
            for im in data["images"]:
                items[int(im["id"])] = CaptionItem(int(im["id"]), data_dir / subset / im["file_name"], [])
            for ann in data["annotations"]:
                caption = str(ann["caption"])
                if not tokenize(caption):
                    raise UserError(f"{path}: annotation {ann.get('id')} of image {ann['image_id']} has an empty "
                                    f"caption ({caption!r}); fix or remove it")
                items[int(ann["image_id"])].captions.append(caption.strip())
        except KeyError as e:
            raise UserError(f"{path}: not a COCO captions file (missing key or image id {e}); use the "
                            f"official captions_{subset}.json") from e
    return items


def read_split(path: Path) -> dict[str, list[int]]:
    """Karpathy's split file -> {'train': [...], 'valid': [...], 'test': [...]} of COCO image ids
    (``restval`` joins ``train``), in the file's order."""
    data = _read_json(path)
    out: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    try:
        for im in data["images"]:
            split = im["split"]
            if split not in KARPATHY_SPLITS:
                raise UserError(f"{path}: image {im['cocoid']} has unknown split {split!r}; expected one of "
                                f"{', '.join(KARPATHY_SPLITS)}")
            out[KARPATHY_SPLITS[split]].append(int(im["cocoid"]))
    except KeyError as e:
        raise UserError(f"{path}: not Karpathy's dataset_coco.json (missing key {e})") from e
    return out


def load_coco(data_dir: str | Path, split_file: str = "dataset_coco.json") -> dict[str, list[CaptionItem]]:
    """The three splits of the layout as lists of items; every image of the split must have captions."""
    data_dir = Path(data_dir)
    check_layout(data_dir, split_file)
    items = read_annotations(data_dir)
    split = read_split(data_dir / split_file)
    out = {}
    for name, ids in split.items():
        chosen = []
        for i in ids:
            if i not in items:
                raise UserError(f"{data_dir / split_file}: image {i} is not in annotations/captions_*2014.json; "
                                "use the split file that matches the 2014 annotations")
            if not items[i].captions:
                raise UserError(f"image {i} ({items[i].path.name}) has no caption in the annotation files")
            chosen.append(items[i])
        if not chosen:
            raise UserError(f"{data_dir / split_file}: the {name} split is empty")
        out[name] = chosen
    return out


# --------------------------------------------------------------------------------------------- features
class FeatureCache:
    """Features of a fixed list of images, extracted once into ``<dir>/<key>.npy`` (a memory-mapped float32
    array, one row per image) and reused by every run.

    Beside it: ``<key>.ids.json`` (the image ids and files, in row order: a cache for another image list is
    rebuilt), ``<key>.done.npy`` (rows finished, updated after every batch: an interrupted extraction resumes
    where it stopped) and ``<key>.unreadable.txt`` (images that could not be decoded: skipped, their rows
    stay zero and the task drops them).
    """

    def __init__(self, folder: str | Path, key: str, items: Sequence[CaptionItem], feature_size: int) -> None:
        self.folder, self.key, self.items, self.feature_size = Path(folder), key, list(items), int(feature_size)
        self.path = self.folder / f"{key}.npy"
        self.ids_path = self.folder / f"{key}.ids.json"
        self.done_path = self.folder / f"{key}.done.npy"
        self.unreadable_path = self.folder / f"{key}.unreadable.txt"
        self.row = {it.image_id: k for k, it in enumerate(self.items)}

    def _ids(self) -> list:
        return [[it.image_id, it.path.name] for it in self.items]

    def _valid(self) -> bool:
        try:
            return (json.loads(self.ids_path.read_text()) == self._ids()
                    and np.load(self.path, mmap_mode="r").shape == (len(self.items), self.feature_size)
                    and np.load(self.done_path).shape == (len(self.items),))
        except (OSError, ValueError):
            return False

    def unreadable(self) -> list[int]:
        if not self.unreadable_path.is_file():
            return []
        ids = [int(line.split("\t")[0]) for line in self.unreadable_path.read_text().splitlines() if line]
        return list(dict.fromkeys(ids))  # an interrupted batch may have listed one twice

    def build(self, encode: Callable[[list], np.ndarray], batch_size: int, progress: bool = True) -> np.ndarray:
        """Extract what is missing with ``encode(list of PIL RGB images) -> (n, feature_size)``; return the
        features as a read-only memory map."""
        from PIL import Image
        from tqdm import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._valid():
            features = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                                 shape=(len(self.items), self.feature_size))
            del features
            _save_atomic(self.done_path, np.zeros(len(self.items), dtype=bool))
            self.unreadable_path.write_text("")
            self.ids_path.write_text(json.dumps(self._ids()))
        done = np.load(self.done_path)
        todo = np.flatnonzero(~done)
        if len(todo) == 0:
            return np.load(self.path, mmap_mode="r")
        for k in todo:
            if not self.items[k].path.is_file():
                raise UserError(f"image {self.items[k].image_id} is listed in the annotations but "
                                f"{self.items[k].path} is missing; re-extract the image archive")
        features = np.load(self.path, mmap_mode="r+")
        bar = tqdm(total=len(self.items), initial=len(self.items) - len(todo), unit="img",
                   desc=f"features {self.key}", disable=not progress or not sys.stderr.isatty())
        try:
            for start in range(0, len(todo), batch_size):
                rows = todo[start : start + batch_size]
                images, good = [], []
                for k in rows:
                    try:
                        with Image.open(self.items[k].path) as im:
                            images.append(im.convert("RGB"))
                        good.append(k)
                    except (OSError, ValueError) as e:
                        with open(self.unreadable_path, "a") as f:
                            f.write(f"{self.items[k].image_id}\t{self.items[k].path}\t{e}\n")
                if images:
                    out = np.asarray(encode(images), dtype=np.float32)
                    features[np.asarray(good)] = out
                    features.flush()
                done[rows] = True
                _save_atomic(self.done_path, done)
                bar.update(len(rows))
        finally:
            bar.close()
            del features
        bad = self.unreadable()
        if bad:
            print(f"tensorlstm: {len(bad)} unreadable image(s) skipped, listed in {self.unreadable_path}",
                  file=sys.stderr)
        return np.load(self.path, mmap_mode="r")


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)
