"""Tiny character-LM corpora in the real formats: a plain text file, PTB-char files, an enwik8-like file.

The text is a few short sentences repeated in a seeded random order: learnable (the words repeat) but not
a trivial cycle.
"""

from __future__ import annotations

import pathlib
import random

SENTENCES = [
    "the cat sat on the mat.",
    "a dog ran to the park.",
    "we like tea and cake.",
    "it is a sunny day.",
]


def make_text(n_sentences: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(rng.choice(SENTENCES) for _ in range(n_sentences)) + "\n"


def write_text(folder: pathlib.Path, name: str = "tiny.txt", n_sentences: int = 400) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(make_text(n_sentences), encoding="utf-8")
    return folder


def ptb_char_line(sentence: str) -> str:
    """A sentence in PTB-char form: characters separated by spaces, `_` between words."""
    return " " + " _ ".join(" ".join(word) for word in sentence.split(" ")) + " "


def write_ptb_char(folder: pathlib.Path, counts=(200, 30, 30)) -> pathlib.Path:
    """ptb.char.{train,valid,test}.txt in the PTB-char layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for (split, n), seed in zip(zip(("train", "valid", "test"), counts), (1, 2, 3)):
        lines = make_text(n, seed).splitlines()
        (folder / f"ptb.char.{split}.txt").write_text("".join(ptb_char_line(s) + "\n" for s in lines))
    return folder


def make(tmp_path: pathlib.Path) -> list[str]:
    """A tiny text file; overrides that make `task=char_lm` run in seconds on it."""
    folder = write_text(tmp_path / "text")
    return [
        f"task.data_dir={folder}",
        "task.dataset=tiny.txt",
        "task.batch_size=4",
        "task.bptt=16",
        "task.eval_batch_size=2",
        "task.embed_size=16",
        "task.in_modes=[2,2,2,2]",
        "task.hidden_size=16",
        "task.hidden_modes=[2,2,2,2]",
        "task.sample_length=20",
    ]
