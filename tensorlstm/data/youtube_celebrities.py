"""YouTube Celebrities Face Tracking and Recognition (Kim, Kumar, Pavlovic & Rowley, CVPR 2008): layout scan.

1,910 clips (.avi) of 47 people. The release (``ytcelebrity.tar``) holds the clips in one folder, each named
``<n>_<video id>_<clip id>_<person>.avi`` where ``<person>`` is the name parts after the third underscore
(``0001_01_003_adam_sandler.avi``: video 01 of adam_sandler, its clip 003). This naming is how public code
reads the release (it was not checked against the archive here: the data is not on this machine). Clips in
per-person folders (``<person>/<clip>.avi``) are accepted too: the folder names the person when the file name
does not follow the pattern.

The group of a clip is (person, video id): clips cut from one YouTube video share scene, lighting and
appearance, so the ``group`` protocol keeps a video's clips on one side of every split.
"""

from __future__ import annotations

import re
from pathlib import Path

from tensorlstm.data.clip_cache import VIDEO_EXTENSIONS, ClipSource, Layout, source_dir
from tensorlstm.errors import UserError

RELEASE_DIRS = ("ytcelebrity", "YouTubeCelebrities")
DEFAULT_SIZE = (160, 120)  # (width, height): 160 x 120 x 3 = 57,600 inputs per frame (Yang 2017)
EXPECTED = ("<n>_<video id>_<clip id>_<person>.avi clips (e.g. 0001_01_003_adam_sandler.avi), in one folder or "
            "in per-person folders")
SOURCE_HELP = (
    "get ytcelebrity.tar (YouTube Celebrities Face Tracking and Recognition, Kim et al. CVPR 2008), extract it "
    f"with `tar xf ytcelebrity.tar` and pass the folder of {EXPECTED} as --source"
)
CACHE_HELP = (
    "build the cache with `python scripts/prepare_video.py --dataset youtube_celebrities --source <folder of "
    "the .avi clips> --out <cache dir>` and set task.data_dir=<cache dir>"
)
_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_([^_].*)$")


def parse_name(stem: str) -> tuple[str, str, str] | None:
    """(person, video id, clip id) of a file name in the release's pattern, else None."""
    match = _NAME.match(stem)
    if match is None:
        return None
    return match.group(4), match.group(2), match.group(3)


class YouTubeCelebritiesLayout(Layout):
    name = "youtube_celebrities"
    title = "YouTube Celebrities"
    cache_format = "tensorlstm-youtube_celebrities-cache"
    default_size = DEFAULT_SIZE
    source_help = SOURCE_HELP
    cache_help = CACHE_HELP

    def find_root(self, source: str | Path) -> Path:
        """``source`` itself, or its ``ytcelebrity`` child when only that holds the clips."""
        source = source_dir(source, self)
        for name in RELEASE_DIRS:
            child = source / name
            if child.is_dir() and not any(p.suffix.lower() in VIDEO_EXTENSIONS for p in source.iterdir()):
                return child
        return source

    def scan(self, source: str | Path) -> tuple[list[ClipSource], list[str]]:
        """Every clip with its person (the class) and group (person/video id); persons sorted by name."""
        root = self.find_root(source)
        clips: list[ClipSource] = []
        for video in sorted(root.rglob("*")):
            if video.suffix.lower() not in VIDEO_EXTENSIONS or not video.is_file():
                continue
            rel = video.relative_to(root)
            parsed = parse_name(video.stem)
            if parsed is not None:
                person, video_id, _ = parsed
            elif len(rel.parts) >= 2:  # a per-person folder: the folder names the person, the clip is its group
                person, video_id = rel.parts[0], video.stem
            else:  # a loose file that names no person: not a clip of the release
                continue
            clips.append(ClipSource(person, video_id, video.stem, rel.as_posix()))
        if not clips:
            raise UserError(f"no YouTube Celebrities clips found under {root}: expected {EXPECTED}; {SOURCE_HELP}")
        return clips, sorted({c.label for c in clips})


LAYOUT = YouTubeCelebritiesLayout()
