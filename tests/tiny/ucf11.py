"""Tiny UCF11 in the official layout (real MPEG-1 .mpg clips written with OpenCV) and its frame cache.

Frame k of a clip of class c is a flat colour: R = 40 + 60 c (the class), G = 20 + 18 k (the frame index),
B = 128, so a test can read both back from the decoded pixels. One extra corrupt .mpg is included.
"""

from __future__ import annotations

import pathlib

import numpy as np

CLASSES = ("basketball", "biking", "diving")
GROUPS = 3
CLIPS_PER_GROUP = 2
WRITE_SIZE = (32, 24)  # (width, height) of the written clips
FPS = 25.0
CORRUPT = "diving/v_diving_02/v_diving_02_03.mpg"


def clip_length(clip: int) -> int:
    """Frames of clip number ``clip`` (1-based) in every group: 8, 10, ... (variable lengths)."""
    return 6 + 2 * clip


def frame_colour(class_index: int, frame: int) -> tuple[int, int, int]:
    return 40 + 60 * class_index, 20 + 18 * frame, 128


def write_source(root: pathlib.Path, corrupt: bool = True) -> pathlib.Path:
    """Write the clips under root/UCF11_updated_mpg (class/group/clip.mpg); returns that folder."""
    from tensorlstm.data.video import write_video

    release = root / "UCF11_updated_mpg"
    width, height = WRITE_SIZE
    for c, name in enumerate(CLASSES):
        for g in range(1, GROUPS + 1):
            group = f"v_{name}_{g:02d}"
            for k in range(1, CLIPS_PER_GROUP + 1):
                n = clip_length(k)
                frames = np.empty((n, height, width, 3), dtype=np.uint8)
                for t in range(n):
                    frames[t] = frame_colour(c, t)
                write_video(release / name / group / f"{group}_{k:02d}.mpg", frames, fps=FPS)
        (release / name / f"v_{name}_01" / "Annotation").mkdir(exist_ok=True)  # ignored, as in the release
    if corrupt:
        (release / CORRUPT).write_bytes(b"\x00\x00\x01\xba not an mpeg stream " * 64)
    return release


def make(tmp_path: pathlib.Path) -> list[str]:
    """Tiny clips + a 16x12 cache; overrides that make `task=ucf11` train in seconds on them."""
    from tensorlstm.data.ucf11 import prepare_cache

    source = write_source(tmp_path / "ucf11_source")
    cache = tmp_path / "ucf11_cache"
    prepare_cache(source, cache, size=(16, 12), workers=1, log=lambda _msg: None)
    return [
        f"task.data_dir={cache}",
        "task.frame_size=[16,12]",
        "task.input_size=576",
        "task.in_modes=[4,6,6,4]",
        "task.hidden_size=16",
        "task.hidden_modes=[2,2,2,2]",
        f"task.num_classes={len(CLASSES)}",
        "task.num_folds=3",
        "task.batch_size=4",
        "task.eval_batch_size=8",
    ]
