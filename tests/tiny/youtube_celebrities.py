"""Tiny YouTube Celebrities in the release's layout: real .avi clips (Motion JPEG, written with OpenCV) in one
folder, named ``<n>_<video id>_<clip id>_<person>.avi``; 3 people (one with a three-part name) x 3 videos x 2 clips.

Frames are flat colours: R = 40 + 60 * (person index in sorted order), G = 20 + 30 * (frame index), B = 128.
"""

from __future__ import annotations

import pathlib

import numpy as np

from .video_cache import cache_overrides

PEOPLE = ("adam_sandler", "leonardo_di_caprio", "salma_hayek")  # sorted: the class order
VIDEOS = 3
CLIPS_PER_VIDEO = 2
WRITE_SIZE = (24, 16)
FPS = 25.0


def file_name(person: int, video: int, clip: int) -> str:
    return f"{person + 1:04d}_{video:02d}_{clip:03d}_{PEOPLE[person]}.avi"


def clip_length(clip: int) -> int:
    return 3 + clip  # 4 or 5 frames


def write_source(root: pathlib.Path) -> pathlib.Path:
    """Write the clips flat under root/ytcelebrity; returns that folder."""
    from tensorlstm.data.video import write_video

    release = root / "ytcelebrity"
    width, height = WRITE_SIZE
    for p in range(len(PEOPLE)):
        for v in range(1, VIDEOS + 1):
            for c in range(1, CLIPS_PER_VIDEO + 1):
                n = clip_length(c)
                frames = np.empty((n, height, width, 3), dtype=np.uint8)
                for t in range(n):
                    frames[t] = (40 + 60 * p, 20 + 30 * t, 128)
                write_video(release / file_name(p, v, c), frames, fps=FPS)
    return release


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny clips + a 12x8 cache; overrides that make `task=youtube_celebrities` train in seconds on them."""
    from tensorlstm.data.youtube_celebrities import LAYOUT

    return cache_overrides(LAYOUT, write_source(tmp_path / "celebrities_source"), tmp_path / "celebrities_cache",
                           f"task.num_classes={len(PEOPLE)}", "task.num_folds=3")
