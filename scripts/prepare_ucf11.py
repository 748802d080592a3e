#!/usr/bin/env python
"""Prepare UCF11 for `task=ucf11`: decode every clip once into a memory-mapped uint8 frame cache.

    python scripts/prepare_ucf11.py --source <extracted UCF11_updated_mpg> --out data/ucf11
    python scripts/prepare_ucf11.py --download --source data/ucf11_raw --out data/ucf11   # needs internet

Resumable: re-running on the same --out decodes only the clips not cached yet. Clips that fail to decode
are skipped and listed (also in <out>/skipped.txt). Exit status: 0 when the cache holds at least one clip
(even if some failed), 1 when nothing usable was produced, 2 for a usage/input error.
(`scripts/prepare_video.py --dataset ucf11` is the same command.)
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tensorlstm  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorlstm.data.prepare import main as prepare_main


def main(argv: list[str] | None = None) -> int:
    return prepare_main(argv, dataset="ucf11", doc=__doc__)


if __name__ == "__main__":
    sys.exit(main())
