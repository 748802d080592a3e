"""A tiny MSCOCO 2014 layout in the real formats for `task=captioning task.dataset=coco`: the two official
caption json files, JPEGs under train2014/ and val2014/, and Karpathy's dataset_coco.json (train, restval,
val and test images). Images are coloured squares on grey; captions name the colour, so a model can learn."""

from __future__ import annotations

import json
import pathlib

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 50), "blue": (40, 60, 220)}


def write_coco(folder: pathlib.Path, n_train: int = 6, n_restval: int = 2, n_val: int = 3, n_test: int = 3,
               size: int = 32, seed: int = 0) -> pathlib.Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    coco = {s: {"info": {}, "licenses": [], "images": [], "annotations": []} for s in ("train2014", "val2014")}
    karpathy = {"dataset": "coco", "images": []}
    image_id, ann_id = 100, 1
    plan = [("train", n_train, "train2014"), ("restval", n_restval, "val2014"), ("val", n_val, "val2014"),
            ("test", n_test, "val2014")]
    for split, count, subset in plan:
        (folder / subset).mkdir(exist_ok=True)
        for _ in range(count):
            name = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            file_name = f"COCO_{subset}_{image_id:012d}.jpg"
            img = np.full((size, size, 3), 128, dtype=np.uint8)
            r, c = rng.integers(0, size // 2, size=2)
            img[r : r + size // 2, c : c + size // 2] = COLOURS[name]
            Image.fromarray(img).save(folder / subset / file_name, quality=95)
            coco[subset]["images"].append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            sents = []
            for text in (f"A {name} square.", f"a {name} block on grey", f"The square is {name}!"):
                coco[subset]["annotations"].append({"id": ann_id, "image_id": image_id, "caption": text})
                sents.append({"raw": text, "tokens": text.lower().strip(".!").split(), "sentid": ann_id})
                ann_id += 1
            karpathy["images"].append({"filepath": subset, "filename": file_name, "cocoid": image_id,
                                       "split": split, "sentences": sents})
            image_id += 1
    for subset, data in coco.items():
        (folder / "annotations" / f"captions_{subset}.json").write_text(json.dumps(data))
    (folder / "dataset_coco.json").write_text(json.dumps(karpathy))
    return folder


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny COCO layout; overrides that make `task=captioning` run in seconds with any cell."""
    folder = write_coco(tmp_path / "coco")
    return [
        "task.dataset=coco",
        f"task.data_dir={folder}",
        "task.encoder=pixels",
        "task.pixels_grid=4",
        "task.min_count=1",
        "task.batch_size=4",
        "task.eval_batch_size=4",
        "task.embed_size=16",
        "task.hidden_size=16",
        "task.in_modes=null",
        "task.hidden_modes=null",
        "task.max_words=6",
        "task.grid_images=4",
    ]
