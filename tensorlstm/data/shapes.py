"""`shapes`: a generated captioning set in the COCO 2014 layout, so the whole COCO pipeline runs without a download.

Each image shows one or two coloured shapes (circle, square, triangle) in cells of a 3 x 3 grid, with small
seeded jitter of position, size and colour. Each image gets several captions drawn from templates with
synonyms ("ball"/"disc" for circle, "upper"/"top"...) and varied word order, naming colour, shape and place
(one object) or the two objects and where one lies relative to the other. The files written are those of
MSCOCO 2014 plus Karpathy's split file, so :mod:`tensorlstm.data.coco` reads them unchanged:

    <dir>/annotations/captions_train2014.json   images + captions of the training split
    <dir>/annotations/captions_val2014.json     images + captions of the validation and test splits
    <dir>/train2014/*.jpg, <dir>/val2014/*.jpg
    <dir>/dataset_coco.json                     the split (train / val / test), Karpathy's format
    <dir>/shapes.json                           the generation settings (written last: marks a complete set)

Everything is a pure function of the settings (seed included); a folder holding a set made with other
settings is regenerated (and its feature cache dropped).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 75, 220),
    "yellow": (230, 200, 35),
}
SHAPES = {"circle": ("circle", "disc", "ball"), "square": ("square", "box", "block"), "triangle": ("triangle",)}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
MANIFEST = "shapes.json"
VERSION = 1


# ---------------------------------------------------------------------------------------------- captions
def _place(row: int, col: int, rng: np.random.Generator) -> str:
    """A prepositional phrase for grid cell (row, col), e.g. 'in the upper left corner', 'on the right'."""
    r = (("top", "upper"), None, ("bottom", "lower"))[row]
    c = COLS[col]
    if r is None and col == 1:
        return str(rng.choice(["in the center", "in the middle", "at the center"]))
    if r is None:
        return str(rng.choice([f"on the {c}", f"at the {c}", f"on the {c} side"]))
    word = str(rng.choice(r))
    if col == 1:
        return str(rng.choice([f"at the {ROWS[row]}", f"near the {ROWS[row]}", f"in the {word} middle"]))
    return str(rng.choice([f"in the {word} {c} corner", f"at the {word} {c}", f"in the {word} {c}"]))


def _noun(shape: str, rng: np.random.Generator) -> str:
    return str(rng.choice(SHAPES[shape]))


def _one(obj: dict, rng: np.random.Generator) -> str:
    c, s, p = obj["colour"], _noun(obj["shape"], rng), _place(obj["row"], obj["col"], rng)
    templates = [
        f"a {c} {s} {p}",
        f"there is a {c} {s} {p}",
        f"{p} there is a {c} {s}",
        f"a {c} {s} is {p}",
        f"a picture of a {c} {s} {p}",
        f"one {c} {s} {p}",
    ]
    return str(rng.choice(templates))


def _relation(a: dict, b: dict) -> list[tuple[str, bool]]:
    """Relations 'a REL b' that hold, each with whether it reads a-first (True) or b-first."""
    out = []
    if a["col"] < b["col"]:
        out += [("to the left of", True), ("to the right of", False)]
    elif a["col"] > b["col"]:
        out += [("to the right of", True), ("to the left of", False)]
    if a["row"] < b["row"]:
        out += [("above", True), ("below", False)]
    elif a["row"] > b["row"]:
        out += [("below", True), ("above", False)]
    return out


def _two(a: dict, b: dict, rng: np.random.Generator) -> str:
    def name(o):
        return f"a {o['colour']} {_noun(o['shape'], rng)}"

    kind = rng.integers(3)
    if kind == 0:  # relation
        rel, a_first = _relation(a, b)[rng.integers(len(_relation(a, b)))]
        x, y = (a, b) if a_first else (b, a)
        return f"{name(x)} {rel} {name(y)}"
    if kind == 1:  # both places
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        return f"{name(x)} {_place(x['row'], x['col'], rng)} and {name(y)} {_place(y['row'], y['col'], rng)}"
    x, y = (a, b) if rng.random() < 0.5 else (b, a)
    return str(rng.choice([f"two shapes {name(x)} and {name(y)}", f"{name(x)} and {name(y)}",
                           f"there is {name(x)} and {name(y)}"]))


def captions_for(objects: list[dict], n: int, rng: np.random.Generator) -> list[str]:
    """n distinct captions where possible (templates and synonyms drawn from rng)."""
    out: list[str] = []
    for _ in range(20 * n):
        cap = _one(objects[0], rng) if len(objects) == 1 else _two(objects[0], objects[1], rng)
        if cap not in out:
            out.append(cap)
        if len(out) == n:
            break
    while len(out) < n:
        out.append(out[len(out) % max(len(out), 1)])
    return [c[0].upper() + c[1:] + "." for c in out]  # as people write them; the tokenizer lower-cases


# ------------------------------------------------------------------------------------------------ images
def draw_image(objects: list[dict], size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in 235 + rng.integers(-10, 11, size=3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in objects:
        cx = (o["col"] + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        cy = (o["row"] + 0.5) * cell + rng.uniform(-0.12, 0.12) * cell
        r = cell * rng.uniform(0.28, 0.38)
        colour = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[o["colour"]])
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        elif o["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    return img


def _objects(rng: np.random.Generator, max_objects: int) -> list[dict]:
    k = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=k, replace=False)
    return [{"shape": str(rng.choice(list(SHAPES))), "colour": str(rng.choice(list(COLOURS))),
             "row": int(c // 3), "col": int(c % 3)} for c in cells]


# ------------------------------------------------------------------------------------------------ writer
def settings(train: int, valid: int, test: int, image_size: int, captions: int, max_objects: int,
             seed: int) -> dict:
    return {"version": VERSION, "train": int(train), "valid": int(valid), "test": int(test),
            "image_size": int(image_size), "captions": int(captions), "max_objects": int(max_objects),
            "seed": int(seed)}


def is_current(folder: Path, wanted: dict) -> bool:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text()) == wanted
    except (OSError, ValueError):
        return False


def ensure_shapes(folder: str | Path, wanted: dict) -> Path:
    """Write the shapes set with `wanted` settings (see :func:`settings`) into folder unless it is there."""
    folder = Path(folder)
    if is_current(folder, wanted):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".shapes-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_shapes(tmp, wanted)
    for name in ("train2014", "val2014", "annotations", "features"):
        shutil.rmtree(folder / name, ignore_errors=True)  # a set of other settings, and its features
    for entry in ("train2014", "val2014", "annotations", "dataset_coco.json", MANIFEST):
        os.replace(tmp / entry, folder / entry)  # the manifest last: it marks a complete set
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_shapes(folder: Path, s: dict) -> None:
    rng = np.random.default_rng([s["seed"], 7])
    folder.mkdir(parents=True)
    (folder / "annotations").mkdir()
    splits = [("train", s["train"], "train2014"), ("val", s["valid"], "val2014"), ("test", s["test"], "val2014")]
    coco = {name: {"info": {"description": "tensorlstm shapes (generated)", "version": str(VERSION)},
                   "licenses": [], "images": [], "annotations": []} for name in ("train2014", "val2014")}
    karpathy = {"dataset": "coco", "images": []}
    image_id, ann_id = 1, 1
    for split, count, subset in splits:
        (folder / subset).mkdir(exist_ok=True)
        for _ in range(count):
            objects = _objects(rng, s["max_objects"])
            file_name = f"COCO_{subset}_{image_id:012d}.jpg"
            draw_image(objects, s["image_size"], rng).save(folder / subset / file_name, quality=95)
            caps = captions_for(objects, s["captions"], rng)
            coco[subset]["images"].append({"id": image_id, "file_name": file_name, "height": s["image_size"],
                                           "width": s["image_size"]})
            sentences = []
            for cap in caps:
                coco[subset]["annotations"].append({"id": ann_id, "image_id": image_id, "caption": cap})
                sentences.append({"raw": cap, "sentid": ann_id, "imgid": image_id})
                ann_id += 1
            karpathy["images"].append({"filepath": subset, "filename": file_name, "cocoid": image_id,
                                       "split": split, "sentences": sentences,
                                       "sentids": [x["sentid"] for x in sentences]})
            image_id += 1
    for subset, data in coco.items():
        (folder / "annotations" / f"captions_{subset}.json").write_text(json.dumps(data))
    (folder / "dataset_coco.json").write_text(json.dumps(karpathy))
    (folder / MANIFEST).write_text(json.dumps(s))
