"""The tiny 12x8 frame cache shared by the Hollywood2 and YouTube Celebrities fixtures."""

from __future__ import annotations

import pathlib


def cache_overrides(layout, source: pathlib.Path, cache: pathlib.Path, *extra: str) -> list[str]:
    """Decode ``source`` (a release in ``layout``) into a 12x8 cache; overrides that make its task train in
    seconds on it (``extra`` appended)."""
    from tensorlstm.data.clip_cache import prepare_cache

    prepare_cache(layout, source, cache, size=(12, 8), workers=1, log=lambda _msg: None)
    return [
        f"task.data_dir={cache}",
        "task.frame_size=[12,8]",
        "task.input_size=288",
        "task.in_modes=[2,4,6,6]",
        "task.hidden_size=16",
        "task.hidden_modes=[2,2,2,2]",
        "task.batch_size=4",
        "task.eval_batch_size=8",
        *extra,
    ]
