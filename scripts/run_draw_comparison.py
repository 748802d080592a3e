"""Short CPU comparison of DRAW encoders on real binarized MNIST: LSTM vs BT-LSTM vs TT-LSTM.

Runs the encoder rows of configs/table/ye2018_draw.yaml (hidden 256, z 100, decoder LSTM 256) shortened for
a CPU: 8 glimpses, 800 steps of 64 images, validation on 2,000 images (the test split is always evaluated
whole, on the best-validation checkpoint), and by default WITHOUT attention: with the paper's 2x2 read the
encoder starts reading two border pixels and DRAW sits on the mean-image plateau (~205 nats, KL ~0) for
far longer than a CPU budget (measured: still there after 600 steps); the full image read learns at once.
`--attention` keeps the 2x2/5x5 attention. Without attention the encoder input is [x, x_hat, h_dec] =
2*784 + 256 = 1,824 = 19x6x4x4 for BT/TT. Prints a markdown table (input-map params, encoder params, total
params, test NLL bound in nats, seconds per step) and writes it, with the sample grids side by side
(LSTM | BT-LSTM | TT-LSTM), to --docs.

    python scripts/run_draw_comparison.py --data ../shared/data/mnist            # ~20 min on 2 cores
    python scripts/run_draw_comparison.py --data ../shared/data/mnist --collect  # only re-read the runs

The full recipe (T=64, 100k steps) is `tlstm reproduce ye2018_draw` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROWS = [
    ("LSTM", "ye2018_draw_lstm"),
    ("BT-LSTM (R=4, N=2)", "ye2018_draw_btlstm"),
    ("TT-LSTM (R=4)", "ye2018_draw_ttlstm"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/mnist", help="folder with the MNIST IDX files")
    ap.add_argument("--out", default="outputs/draw_comparison", help="parent of the run directories")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--glimpses", type=int, default=8)
    ap.add_argument("--attention", action="store_true", help="keep the read 2x2 / write 5x5 attention")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--valid-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--docs", default="docs", help="where draw_samples.png and draw_comparison.md go")
    ap.add_argument("--collect", action="store_true", help="do not train; read the finished runs")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every row")
    args = ap.parse_args()

    out = Path(args.out)
    short = [
        f"task.data_dir={Path(args.data).resolve()}",
        f"task.glimpses={args.glimpses}",
        f"task.batch_size={args.batch}",
        f"task.valid_max_images={args.valid_images}",
        f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={args.eval_every}",
        f"threads={args.threads}",
        "trainer.progress=false",
        "logger.mode=disabled",
        *([] if args.attention else ["task.attention=false", "task.encoder_in_modes=[19,6,4,4]"]),
        *args.extra,
    ]
    for _, exp in ROWS:
        run_dir = out / exp
        if args.collect or (run_dir / "summary.json").exists():
            continue
        cmd = [sys.executable, "-m", "tensorlstm.cli", "train", f"experiment={exp}", *short,
               f"hydra.run.dir={run_dir}"]
        print("[draw]", " ".join(cmd[3:]), flush=True)
        if subprocess.call(cmd) != 0:
            print(f"[draw] {exp} failed; see {run_dir}/train.log", file=sys.stderr)

    lines = [
        f"DRAW {'with' if args.attention else 'without'} attention on binarized MNIST (fixed binarization, "
        f"seed 0), T={args.glimpses} glimpses, "
        f"{args.steps} steps of batch {args.batch}, CPU; test NLL bound on all 10,000 test images "
        "(best-validation checkpoint).",
        "",
        "| encoder | input-map params | encoder params | total params | test NLL bound (nats) | s/step |",
        "|---|---|---|---|---|---|",
    ]
    grids = []
    for name, exp in ROWS:
        summary = out / exp / "summary.json"
        if not summary.exists():
            lines.append(f"| {name} | | | | (no run) | |")
            continue
        s = json.loads(summary.read_text())
        lines.append(
            f"| {name} | {s['params_input_map']:,} | {s['params_recurrent_layer']:,} | "
            f"{s['params_total']:,} | {s['nll_bound']:.2f} | {s['seconds_per_step']:.2f} |"
        )
        pngs = sorted((out / exp).glob("samples_*.png"), key=lambda p: int(p.stem.split("_")[1]))
        if pngs:
            grids.append(pngs[-1])
    table = "\n".join(lines)
    print(table)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "draw_comparison.md").write_text(table + "\n")
    if grids:
        side_by_side(grids, docs / "draw_samples.png")
        names = ", ".join(n for n, _ in ROWS[: len(grids)])
        print(f"samples (left to right: {names}): {docs / 'draw_samples.png'}")
    return 0


def side_by_side(paths: list[Path], out: Path, gap: int = 12) -> None:
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("L")) for p in paths]
    h = max(i.shape[0] for i in images)
    canvas = np.full((h, sum(i.shape[1] for i in images) + gap * (len(images) - 1)), 255, dtype=np.uint8)
    x = 0
    for img in images:
        canvas[: img.shape[0], x : x + img.shape[1]] = img
        x += img.shape[1] + gap
    Image.fromarray(canvas, mode="L").save(out)


if __name__ == "__main__":
    raise SystemExit(main())
