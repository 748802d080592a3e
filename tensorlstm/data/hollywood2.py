"""Hollywood2 human actions (Marszałek, Laptev & Schmid, CVPR 2009): layout scan for the frame cache.

Official layout (after ``tar xzf Hollywood2-actions.tar.gz``, https://www.di.ens.fr/~laptev/actions/hollywood2/)::

    Hollywood2/
      AVIClips/actioncliptrain00001.avi ... actioncliptest00884.avi   (also actioncliptrainauto* / autotrain clips)
      ClipSets/<Action>_train.txt, <Action>_test.txt, <Action>_autotrain.txt   one per action (12)

A ClipSets line is ``<clip name> <1|-1>`` (whitespace separated): the clip shows the action (1) or not (-1).
A clip can show several actions (multi-label). The clean set is read: 823 training and 884 test clips, the
official split. The automatically annotated ``autotrain`` set (labels from scripts, noisy) is read only when asked
(``Hollywood2Layout(autotrain=True)``, ``prepare_video.py --autotrain``; used in training with
``task.autotrain=true``); clips no ClipSets file lists are ignored.
"""

from __future__ import annotations

from pathlib import Path

from tensorlstm.data.clip_cache import ClipSource, Layout, source_dir
from tensorlstm.errors import UserError

ACTIONS = ("AnswerPhone", "DriveCar", "Eat", "FightPerson", "GetOutCar", "HandShake", "HugPerson", "Kiss", "Run",
           "SitDown", "SitUp", "StandUp")
SPLITS = ("train", "test")
RELEASE_DIR = "Hollywood2"
URL = "https://www.di.ens.fr/~laptev/actions/hollywood2/"
DEFAULT_SIZE = (234, 100)  # (width, height): 234 x 100 x 3 = 70,200 inputs per frame (Yang 2017)

SOURCE_HELP = (
    f"download Hollywood2-actions.tar.gz from {URL}, extract it with `tar xzf Hollywood2-actions.tar.gz` and "
    "pass the Hollywood2 folder (AVIClips/ with the .avi clips, ClipSets/ with <Action>_train.txt and "
    "<Action>_test.txt) as --source"
)
CACHE_HELP = (
    "build the cache with `python scripts/prepare_video.py --dataset hollywood2 --source <Hollywood2 folder> "
    "--out <cache dir>` and set task.data_dir=<cache dir>"
)


def read_clipset(path: Path) -> dict[str, bool]:
    """One ClipSets file: clip name -> shows the action (1) or not (-1)."""
    marks: dict[str, bool] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("1", "-1"):
            raise UserError(f"{path}:{n}: {line.strip()!r} has an unknown label: expected `<clip name> 1` or "
                            f"`<clip name> -1`; re-extract ClipSets/ from Hollywood2-actions.tar.gz")
        marks[fields[0]] = fields[1] == "1"
    return marks


class Hollywood2Layout(Layout):
    name = "hollywood2"
    title = "Hollywood2"
    cache_format = "tensorlstm-hollywood2-cache"
    multilabel = True
    default_size = DEFAULT_SIZE
    source_help = SOURCE_HELP
    cache_help = CACHE_HELP

    def __init__(self, autotrain: bool = False) -> None:
        self.autotrain = autotrain

    def find_root(self, source: str | Path) -> Path:
        """The folder holding AVIClips/ and ClipSets/: ``source`` itself or its ``Hollywood2`` child."""
        source = source_dir(source, self)
        for root in (source, source / RELEASE_DIR):
            if (root / "ClipSets").is_dir() and (root / "AVIClips").is_dir():
                return root
        missing = [d for d in ("AVIClips", "ClipSets") if not (source / d).is_dir()]
        raise UserError(f"no {' and no '.join(d + '/' for d in missing)} folder in {source}; {SOURCE_HELP}")

    def scan(self, source: str | Path) -> tuple[list[ClipSource], list[str]]:
        """Every clip of the clean train/test sets (and the autotrain set if asked) with its actions and split."""
        root = self.find_root(source)
        labels: dict[str, list[str]] = {}
        split_of: dict[str, str] = {}
        for split in (*SPLITS, "autotrain") if self.autotrain else SPLITS:
            listed: set[str] | None = None
            for action in ACTIONS:
                path = root / "ClipSets" / f"{action}_{split}.txt"
                if not path.is_file():
                    raise UserError(f"{path} is missing (ClipSets/ needs <Action>_{split}.txt for the 12 actions: "
                                    f"{', '.join(ACTIONS)}); {SOURCE_HELP}")
                marks = read_clipset(path)
                if listed is None:
                    listed = set(marks)
                elif set(marks) != listed:
                    odd = sorted(set(marks) ^ listed)[0]
                    raise UserError(f"ClipSets/{action}_{split}.txt and ClipSets/{ACTIONS[0]}_{split}.txt list "
                                    f"different clips (e.g. {odd}); re-extract ClipSets/ from the archive")
                for clip, shown in marks.items():
                    if split_of.setdefault(clip, split) != split:
                        raise UserError(f"clip {clip} is listed in both the {split_of[clip]} and the {split} "
                                        f"ClipSets of {root}; re-extract ClipSets/ from the archive")
                    labels.setdefault(clip, [])
                    if shown:
                        labels[clip].append(action)
        clips = [ClipSource("", clip, clip, f"AVIClips/{clip}.avi", tuple(labels[clip]), split_of[clip])
                 for clip in sorted(labels)]
        if not clips:
            raise UserError(f"the ClipSets files in {root / 'ClipSets'} list no clip; {SOURCE_HELP}")
        if not any((root / c.path).is_file() for c in clips):
            raise UserError(f"none of the {len(clips)} clips listed in ClipSets/ is in {root / 'AVIClips'} (e.g. "
                            f"{clips[0].path}); {SOURCE_HELP}")
        return clips, list(ACTIONS)


LAYOUT = Hollywood2Layout()
