"""Tiny Hollywood2 in the official layout: real .avi clips (Motion JPEG, written with OpenCV) in AVIClips/ and the
ClipSets/<Action>_{train,test}.txt files for the 12 actions, plus one autotrain clip and its ClipSets (ignored).

Clip k of a split shows the actions ``actions_of(split, k)`` (one or two: multi-label); its frames are flat colours,
R = 40 + 15 * (its first action), G = 20 + 30 * (frame index), B = 128.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .video_cache import cache_overrides

ACTIONS = ("AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar", "HandShake", "HugPerson", "Kiss", "Run",
           "SitDown", "SitUp", "StandUp")
CLIPS = {"train": 10, "test": 4}
WRITE_SIZE = (24, 16)  # (width, height)
FPS = 25.0


def clip_name(split: str, k: int) -> str:
    return f"actionclip{split}{k:05d}"


def actions_of(split: str, k: int) -> tuple[str, ...]:
    """Actions of clip k (1-based): every third clip shows two."""
    first = (k * (5 if split == "train" else 7)) % 12
    shown = {first, (first + 4) % 12} if k % 3 == 0 else {first}
    return tuple(a for i, a in enumerate(ACTIONS) if i in shown)


def clip_length(k: int) -> int:
    return 3 + k % 3  # 3, 4 or 5 frames


def write_source(root: pathlib.Path) -> pathlib.Path:
    """Write root/Hollywood2/{AVIClips,ClipSets}; returns the Hollywood2 folder."""
    from tensorlstm.data.video import write_video

    release = root / "Hollywood2"
    width, height = WRITE_SIZE
    (release / "ClipSets").mkdir(parents=True)
    for split, count in {**CLIPS, "autotrain": 1}.items():
        lines = {a: [] for a in ACTIONS}
        for k in range(1, count + 1):
            name = clip_name("autoautotrain" if split == "autotrain" else split, k)
            shown = actions_of(split, k)
            n = clip_length(k)
            frames = np.empty((n, height, width, 3), dtype=np.uint8)
            for t in range(n):
                frames[t] = (40 + 15 * ACTIONS.index(shown[0]), 20 + 30 * t, 128)
            write_video(release / "AVIClips" / f"{name}.avi", frames, fps=FPS)
            for a in ACTIONS:
                lines[a].append(f"{name}  {1 if a in shown else -1}\n")
        for a in ACTIONS:
            (release / "ClipSets" / f"{a}_{split}.txt").write_text("".join(lines[a]))
    return release


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny clips + a 12x8 cache; overrides that make `task=hollywood2` train in seconds on them."""
    from tensorlstm.data.hollywood2 import LAYOUT

    return cache_overrides(LAYOUT, write_source(tmp_path / "hollywood2_source"), tmp_path / "hollywood2_cache")
