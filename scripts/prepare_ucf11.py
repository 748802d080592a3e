#!/usr/bin/env python
"""Prepare UCF11 for `task=ucf11`: decode every clip once into a memory-mapped uint8 frame cache.

    python scripts/prepare_ucf11.py --source <extracted UCF11_updated_mpg> --out data/ucf11
    python scripts/prepare_ucf11.py --download --source data/ucf11_raw --out data/ucf11   # needs internet

Resumable: re-running on the same --out decodes only the clips not cached yet. Clips that fail to decode
are skipped and listed (also in <out>/skipped.txt). Exit status: 0 when the cache holds at least one clip
(even if some failed), 1 when nothing usable was produced, 2 for a usage/input error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

try:
    import tensorlstm  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensorlstm.data.ucf11 import DEFAULT_SIZE, UCF11_URL, download_release, prepare_cache
from tensorlstm.data.video import quiet_opencv
from tensorlstm.errors import UserError


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 160x120, got {text!r}") from exc
    return width, height


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--source", type=Path, help="the extracted UCF11_updated_mpg folder (or its parent); "
                        "with --download, where the archive goes and is extracted (default data/ucf11_raw)")
    parser.add_argument("--out", type=Path, required=True, help="cache directory (frames.npy + index.json)")
    parser.add_argument("--download", action="store_true", help=f"download and extract {UCF11_URL} first "
                        "(needs internet and unrar, 7z or bsdtar)")
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="stored frame size "
                        "WIDTHxHEIGHT (default 160x120: the papers' 57,600 inputs)")
    parser.add_argument("--fps", type=float, default=None, help="resample clips to this frame rate when "
                        "caching (default: keep every frame; the yang2017 protocol resamples at load time)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--retry-failed", action="store_true", help="try again the clips that failed before")
    parser.add_argument("--timeout", type=float, default=15.0, help="network timeout (s) for --download")
    args = parser.parse_args(argv)
    quiet_opencv()
    try:
        source = args.source
        if args.download:
            source = download_release(source or Path("data/ucf11_raw"), timeout=args.timeout)
        elif source is None:
            raise UserError("give --source <extracted UCF11_updated_mpg folder> (or --download)")
        report = prepare_cache(source, args.out, size=args.size, fps=args.fps, workers=args.workers,
                               retry_failed=args.retry_failed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.failed:
        print(f"{len(report.failed)} clip(s) failed to decode and were skipped (listed in "
              f"{report.out / 'skipped.txt'}):")
        for item in report.failed:
            print(f"  {item['path']}: {item['error']}")
    if not report.usable:
        print(f"error: no clip could be decoded; nothing usable in {report.out}", file=sys.stderr)
        return 1
    print(f"cache ready: {report.out} ({report.n_clips} clips, {report.n_frames} frames, "
          f"{report.n_new} decoded in this run); use task.data_dir={report.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
