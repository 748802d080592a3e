"""Tiny polyphonic-music pickle in the standard layout ({'train','valid','test'} -> sequences -> steps ->
tuple of MIDI pitches), learnable: each sequence walks a cycle of chords (one of them silence) from a seeded
start, so every frame determines the next one."""

from __future__ import annotations

import pathlib
import pickle
import random

CHORDS = [(60, 64, 67), (62, 65, 69), (64, 67, 71), (), (57, 60, 64), (21,), (108, 72)]


def make_sequences(n: int, seed: int) -> list[list[tuple[int, ...]]]:
    """n sequences of 6..20 steps; step t holds chord (start + t) mod len(CHORDS)."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n):
        start, length = rng.randrange(len(CHORDS)), rng.randrange(6, 21)
        seqs.append([CHORDS[(start + t) % len(CHORDS)] for t in range(length)])
    return seqs


def write_pickle(folder: pathlib.Path, dataset: str = "JSB_Chorales", counts=(24, 8, 8)) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        split: make_sequences(n, seed)
        for (split, n), seed in zip(zip(("train", "valid", "test"), counts), (1, 2, 3))
    }
    with open(folder / f"{dataset}.pickle", "wb") as f:
        pickle.dump(data, f)
    return folder


def make(tmp_path: pathlib.Path) -> list[str]:
    """A tiny JSB_Chorales.pickle; overrides that make `task=polyphonic` run in seconds on it."""
    folder = write_pickle(tmp_path / "polyphonic")
    return [
        f"task.data_dir={folder}",
        "task.dataset=JSB_Chorales",
        "task.batch_size=4",
        "task.eval_batch_size=8",
        "task.embed_size=16",
        "task.in_modes=[2,2,2,2]",
        "task.hidden_size=16",
        "task.hidden_modes=[2,2,2,2]",
    ]
