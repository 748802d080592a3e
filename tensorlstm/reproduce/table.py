"""`tlstm reproduce <table>`: run every row of configs/table/<table>.yaml and put ours beside the paper's.

Each row is `tlstm train experiment=<row.experiment> <row.overrides> <user overrides>` in its own run
directory, outputs/reproduce/<table>/<row>/. A row whose run finished (summary.json) is not run again; an
interrupted one resumes from its last checkpoint. `--collect` only reads finished runs. The result is
outputs/reproduce/<table>/table.md and table.csv.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

from tensorlstm.errors import UserError

COLUMNS = ["row", "paper", "ours", "diff", "paper_params", "params", "compression", "sec_per_step", "note", "run_dir"]


def load_table(name: str, config_dir: Path) -> dict:
    from omegaconf import OmegaConf

    path = config_dir / "table" / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in (config_dir / "table").glob("*.yaml")))
        raise UserError(f"unknown table {name!r}; choose one of: {names}")
    table = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("metric", "rows"):
        if key not in table:
            raise UserError(f"{path} has no '{key}'; see configs/table/addition_cells.yaml for the layout")
    return table


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def run_row(row: dict, run_dir: Path, overrides: list[str]) -> int:
    cmd = [sys.executable, "-m", "tensorlstm.cli", "train", f"experiment={row['experiment']}",
           *(row.get("overrides") or []), *overrides, f"hydra.run.dir={run_dir}", "resume=auto"]
    print(f"[reproduce] {row['name']}: {' '.join(cmd[3:])}", flush=True)
    return subprocess.call(cmd)


def collect_row(row: dict, table: dict, run_dir: Path) -> dict:
    metric = table["metric"]
    params_key = table.get("params_key", "params_input_map")
    paper = row.get("paper") or {}
    out = {"row": row["name"], "paper": paper.get(metric), "paper_params": paper.get("params"),
           "note": row.get("note", ""), "run_dir": str(run_dir)}
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        return {**out, "ours": None, "diff": None, "params": None, "compression": None, "sec_per_step": None}
    s = json.loads(summary_path.read_text())
    ours = s.get(metric)
    diff = round(ours - out["paper"], 4) if isinstance(ours, (int, float)) and out["paper"] is not None else None
    return {**out, "ours": ours, "diff": diff, "params": s.get(params_key),
            "compression": s.get("compression_input_map"), "sec_per_step": s.get("seconds_per_step")}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(table: dict, rows: list[dict], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    metric = table["metric"]
    head = ["row", f"paper {metric}", f"ours {metric}", "diff", "paper params", "our params", "compression",
            "s/step", "note"]
    lines = [f"# {table.get('title', out_dir.name)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], r["paper"], r["ours"], r["diff"], r["paper_params"], r["params"],
                 r["compression"], r["sec_per_step"], r["note"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if table.get("footnote"):
        lines += ["", table["footnote"]]
    text = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(text)
    return text


def reproduce(name: str, config_dir: Path, overrides: list[str], collect_only: bool = False,
              only_rows: list[str] | None = None, out_root: Path = Path("outputs/reproduce")) -> int:
    table = load_table(name, config_dir)
    selected = table["rows"]
    if only_rows:
        known = [r["name"] for r in table["rows"]]
        unknown = [r for r in only_rows if r not in known]
        if unknown:
            raise UserError(f"table {name} has no row(s) {', '.join(unknown)}; its rows: {', '.join(known)}")
        selected = [r for r in selected if r["name"] in only_rows]
    out_dir = out_root / name
    failed = []
    rows = []
    for row in selected:
        run_dir = out_dir / slug(row["name"])
        if not collect_only and not (run_dir / "summary.json").is_file():
            if run_row(row, run_dir, overrides) != 0:
                failed.append(row["name"])
        rows.append(collect_row(row, table, run_dir))
    print(render(table, rows, out_dir))
    print(f"written: {out_dir / 'table.md'} and {out_dir / 'table.csv'}")
    if failed:
        print(f"rows that failed: {', '.join(failed)} (their run dirs hold train.log)", file=sys.stderr)
        return 1
    return 0
