"""The prepare step of the video sets: decode a release once into the frame cache (``tensorlstm.data.clip_cache``).

    python scripts/prepare_video.py --dataset hollywood2 --source Hollywood2 --out data/hollywood2
    python scripts/prepare_video.py --dataset youtube_celebrities --source ytcelebrity --out data/youtube_celebrities
    python scripts/prepare_ucf11.py --source UCF11_updated_mpg --out data/ucf11    (= --dataset ucf11)

Resumable: re-running on the same --out decodes only the clips not cached yet. Clips that fail to decode
are skipped and listed (also in <out>/skipped.txt). Exit status: 0 when the cache holds at least one clip
(even if some failed), 1 when nothing usable was produced, 2 for a usage/input error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tensorlstm.data.clip_cache import LAYOUTS, get_layout, prepare_cache
from tensorlstm.errors import UserError


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 160x120, got {text!r}") from exc
    return width, height


def main(argv: list[str] | None = None, dataset: str | None = None, doc: str | None = None) -> int:
    """The prepare command line; ``dataset`` fixes the dataset (scripts/prepare_ucf11.py), else --dataset."""
    from tensorlstm.data import ucf11
    from tensorlstm.data.video import quiet_opencv

    parser = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if dataset is None:
        parser.add_argument("--dataset", required=True, choices=list(LAYOUTS), help="which release --source holds")
    parser.add_argument("--source", type=Path, help="the extracted release folder (or its parent); with --download "
                        "(UCF11 only), where the archive goes and is extracted (default data/ucf11_raw)")
    parser.add_argument("--out", type=Path, required=True, help="cache directory (frames.npy + index.json)")
    parser.add_argument("--download", action="store_true", help=f"UCF11 only: download and extract {ucf11.UCF11_URL} "
                        "first (needs internet and unrar, 7z or bsdtar)")
    parser.add_argument("--size", type=parse_size, default=None, help="stored frame size WIDTHxHEIGHT (default: "
                        "the papers' size, 160x120 for UCF11 and YouTube Celebrities, 234x100 for Hollywood2)")
    parser.add_argument("--fps", type=float, default=None, help="resample clips to this frame rate when "
                        "caching (default: keep every frame; tasks can resample at load time, task.fps)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding processes")
    if dataset is None:
        parser.add_argument("--autotrain", action="store_true", help="Hollywood2 only: also decode the automatically "
                            "annotated clips (ClipSets/<Action>_autotrain.txt; train on them with task.autotrain=true)")
    parser.add_argument("--retry-failed", action="store_true", help="try again the clips that failed before")
    parser.add_argument("--timeout", type=float, default=15.0, help="network timeout (s) for --download")
    args = parser.parse_args(argv)
    name = dataset or args.dataset
    quiet_opencv()
    try:
        layout = get_layout(name)
        if getattr(args, "autotrain", False):
            if name != "hollywood2":
                raise UserError("--autotrain is for --dataset hollywood2 (its automatically annotated clips)")
            layout = type(layout)(autotrain=True)
        size = args.size or layout.default_size
        source = args.source
        if args.download:
            if name != "ucf11":
                raise UserError(f"--download fetches UCF11 only; {layout.source_help}")
            source = ucf11.download_release(source or Path("data/ucf11_raw"), timeout=args.timeout)
        elif source is None:
            raise UserError(f"give --source <extracted {layout.title} folder>"
                            + (" (or --download)" if name == "ucf11" else f"; {layout.source_help}"))
        report = prepare_cache(layout, source, args.out, size=size, fps=args.fps, workers=args.workers,
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
