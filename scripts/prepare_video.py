#!/usr/bin/env python
"""Prepare a video set (UCF11, Hollywood2, YouTube Celebrities) for its task: decode every clip once into a
memory-mapped uint8 frame cache (tensorlstm.data.prepare; `--help` for the flags).

    python scripts/prepare_video.py --dataset hollywood2 --source Hollywood2 --out data/hollywood2
    python scripts/prepare_video.py --dataset youtube_celebrities --source ytcelebrity --out data/youtube_celebrities
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tensorlstm  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorlstm.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
