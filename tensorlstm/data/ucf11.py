"""UCF11 (UCF YouTube Action, "UCF11_updated_mpg" release): layout scan, frame cache, splits.

Official layout (after ``unrar x UCF11_updated_mpg.rar``)::

    UCF11_updated_mpg/
      basketball/                    one folder per class (11 classes)
        v_shooting_01/               one sub-folder per group (25 per class: clips of one group share
          v_shooting_01_01.mpg       actor, background and viewpoint)
          ...
          Annotation/                (optional, ignored: no videos inside)
      biking/ ...

``prepare_cache`` decodes every clip once into the frame cache of ``tensorlstm.data.clip_cache`` (160x120
RGB by default; resumable, failed clips skipped and listed); its names are importable from here too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tensorlstm.data import clip_cache
from tensorlstm.data.clip_cache import (  # noqa: F401 - the cache's names, also importable from here
    FRAMES_FILE,
    INDEX_FILE,
    PROTOCOLS,
    SKIPPED_FILE,
    VIDEO_EXTENSIONS,
    ClipSource,
    FrameCache,
    Layout,
    PrepareReport,
    make_splits,
)
from tensorlstm.errors import UserError

UCF11_CLASSES = (
    "basketball",
    "biking",
    "diving",
    "golf_swing",
    "horse_riding",
    "soccer_juggling",
    "swing",
    "tennis_swing",
    "trampoline_jumping",
    "volleyball_spiking",
    "walking",
)
UCF11_URL = "https://www.crcv.ucf.edu/data/UCF11_updated_mpg.rar"
RELEASE_DIR = "UCF11_updated_mpg"
CACHE_FORMAT = "tensorlstm-ucf11-cache"
DEFAULT_SIZE = (160, 120)  # (width, height): 160 x 120 x 3 = 57,600 inputs per frame

SOURCE_HELP = (
    f"download {UCF11_URL}, extract it with `unrar x UCF11_updated_mpg.rar` or "
    "`7z x UCF11_updated_mpg.rar`, and pass the extracted UCF11_updated_mpg folder (one folder per class, "
    "one sub-folder per group, .mpg clips) as --source"
)
CACHE_HELP = (
    "build the cache with `python scripts/prepare_ucf11.py --source <extracted UCF11_updated_mpg> "
    "--out <cache dir>` (or `make data-ucf11`) and set task.data_dir=<cache dir>"
)


# ----------------------------------------------------------------------------------------------- layout
_GROUP_FROM_NAME = re.compile(r"^(v_.+_\d+)_\d+$")


def find_release_root(source: str | Path) -> Path:
    """The folder holding the class folders: ``source`` itself or its ``UCF11_updated_mpg`` child."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise UserError(f"UCF11 source {source} is not a directory; {SOURCE_HELP}")
    child = source / RELEASE_DIR
    if child.is_dir() and not any((source / c).is_dir() for c in UCF11_CLASSES):
        return child
    return source


def scan_layout(source: str | Path) -> tuple[list[ClipSource], list[str]]:
    """All clips of the official layout (sorted by path) and the class names, official ones first.

    A class is a top-level folder with videos below it; the group is the folder directly under the class
    (or, for clips lying directly in the class folder, the ``v_<name>_<gg>`` prefix of the file name).
    """
    root = find_release_root(source)
    clips: list[ClipSource] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for video in sorted(class_dir.rglob("*")):
            if video.suffix.lower() not in VIDEO_EXTENSIONS or not video.is_file():
                continue
            rel = video.relative_to(class_dir)
            if len(rel.parts) >= 2:
                group = rel.parts[0]
            else:
                match = _GROUP_FROM_NAME.match(video.stem)
                group = match.group(1) if match else video.stem
            clips.append(ClipSource(class_dir.name, group, video.stem, video.relative_to(root).as_posix()))
    if not clips:
        raise UserError(f"no video clips ({'/'.join(VIDEO_EXTENSIONS)}) found under {root}; {SOURCE_HELP}")
    present = {c.label for c in clips}
    classes = [c for c in UCF11_CLASSES if c in present] + sorted(present - set(UCF11_CLASSES))
    return clips, classes


# ---------------------------------------------------------------------------------------------- cache
class UCF11Layout(Layout):
    name = "ucf11"
    title = "UCF11"
    cache_format = CACHE_FORMAT
    default_size = DEFAULT_SIZE
    source_help = SOURCE_HELP
    cache_help = CACHE_HELP

    def find_root(self, source: str | Path) -> Path:
        return find_release_root(source)

    def scan(self, source: str | Path) -> tuple[list[ClipSource], list[str]]:
        return scan_layout(source)


LAYOUT = UCF11Layout()


def prepare_cache(
    source: str | Path,
    out: str | Path,
    size: tuple[int, int] = DEFAULT_SIZE,
    fps: float | None = None,
    workers: int = 1,
    retry_failed: bool = False,
    log: Callable[[str], None] = print,
) -> PrepareReport:
    """``clip_cache.prepare_cache`` for UCF11 (the layout above)."""
    return clip_cache.prepare_cache(LAYOUT, source, out, size=size, fps=fps, workers=workers,
                                    retry_failed=retry_failed, log=log)


# ----------------------------------------------------------------------------------- download/extract
def download_release(dest: str | Path, url: str = UCF11_URL, timeout: float = 15.0,
                     log: Callable[[str], None] = print) -> Path:
    """Download the release archive into ``dest`` (skipped when complete) and extract it; returns the root.

    Fails fast with a UserError when the host cannot be reached (``timeout`` seconds per socket operation).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / url.rsplit("/", 1)[-1]
    extracted = (dest / RELEASE_DIR).is_dir() or any((dest / c).is_dir() for c in UCF11_CLASSES)
    if extracted:
        log(f"UCF11 already extracted in {dest}; not downloading")
    else:
        if not archive.exists():
            part = archive.with_name(archive.name + ".part")
            log(f"downloading {url} -> {archive}")
            try:
                _resolve(url, timeout)
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
                    shutil.copyfileobj(resp, f, length=1 << 20)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                part.unlink(missing_ok=True)
                raise UserError(
                    f"cannot download the UCF11 archive ({getattr(exc, 'reason', exc)}); on a machine with "
                    f"internet, {SOURCE_HELP}"
                ) from exc
            os.replace(part, archive)
        extract_rar(archive, dest, log)
    return find_release_root(dest)


def _resolve(url: str, timeout: float) -> None:
    """Resolve the host in a helper thread: DNS lookups ignore socket timeouts and can hang offline."""
    host = urllib.parse.urlsplit(url).hostname or ""
    result: list = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, 443))
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError(f"DNS lookup of {host} timed out after {timeout:g} s")
    if isinstance(result[0], OSError):
        raise result[0]


def extract_rar(archive: Path, dest: Path, log: Callable[[str], None] = print) -> None:
    """Extract a .rar with the first tool found: unrar, 7z, bsdtar (UCF11 ships as RAR)."""
    commands = {
        "unrar": ["unrar", "x", "-o+", str(archive), str(dest) + os.sep],
        "7z": ["7z", "x", "-y", f"-o{dest}", str(archive)],
        "bsdtar": ["bsdtar", "-xf", str(archive), "-C", str(dest)],
    }
    for tool, cmd in commands.items():
        if shutil.which(tool):
            log(f"extracting {archive} with {tool}")
            if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode != 0:
                raise UserError(f"`{' '.join(cmd)}` failed; extract {archive} by hand and pass --source")
            return
    raise UserError(
        f"no RAR extractor found (unrar, 7z or bsdtar): install one (e.g. `apt-get install unrar` or "
        f"`p7zip-full`), run `unrar x {archive}` and pass the extracted folder as --source"
    )
