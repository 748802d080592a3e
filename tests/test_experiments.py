"""Every experiment recipe composes and trains for two steps on tiny data in its task's real format, its model at
the recipe's own sizes has the parameter count pinned in tests/fixtures/experiment_params.json (a default that moves
under a recipe changes it), and every table row's parameter count equals the paper's (the `tlstm info` contract).

After a deliberate change to a recipe's model, `python tests/test_experiments.py` rewrites the pinned counts."""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import pytest
import tiny
from conftest import ROOT, TINY_RUN
from omegaconf import OmegaConf

from tensorlstm.cli import compose, main, to_dict

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
PINNED = ROOT / "tests" / "fixtures" / "experiment_params.json"


def recipe_params(cfg) -> int:
    """params_total of a composed experiment at its own sizes (no data): on the meta device where every op has a
    meta kernel, else (the tLSTM) for real."""
    import torch

    from tensorlstm.engine.build import build

    resolved = to_dict(cfg)
    if resolved["cell"].get("norm") == "cn":  # opted in, as the training below (no parameter changes)
        resolved["cell"]["allow_lookahead"] = True
    try:
        with torch.device("meta"):
            _, model, _ = build(resolved)
    except NotImplementedError:
        _, model, _ = build(resolved)
    return sum(p.numel() for p in model.parameters())
TABLES = sorted((ROOT / "configs" / "table").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_two_steps_on_tiny_data(train_run, name, tmp_path):
    cfg = compose([f"experiment={name}"])
    assert recipe_params(cfg) == json.loads(PINNED.read_text())[name], "a default moved under this recipe, or " \
        "the recipe changed: if deliberate, run `python tests/test_experiments.py`"
    overrides = tiny.overrides(cfg.task.name, tmp_path)
    # the paper's shapes belong to the paper's input sizes; on tiny data let the cell factorize the tiny sizes
    overrides += [f"cell.{k}=null" for k in ("in_modes", "hidden_modes", "hidden_size") if k in cfg.cell]
    overrides += ["cell.M=8"] if "M" in cfg.cell else []  # tLSTM's width is its own key
    overrides += ["cell.allow_lookahead=true"] if cfg.cell.get("norm") == "cn" else []  # opt in (see validate)
    summary = train_run(tmp_path / "run", f"experiment={name}", *overrides, "trainer.max_steps=2",
                              "trainer.eval_every=2", base=TINY_RUN)
    assert summary["steps"] == 2 and summary["task"] == cfg.task.name
    if cfg.trainer.test_at_end:
        assert math.isfinite(summary["test"][summary["metric"]])  # the task's own metric, on the test split
    else:  # a recipe that measures training itself (he2017_small: samples_to_99) skips the test split
        assert not summary["test"] and math.isfinite(summary["best_valid"])


ROWS = [(t.stem, row) for t in TABLES for row in OmegaConf.to_container(OmegaConf.load(t))["rows"]
        if (row.get("paper") or {}).get("params") is not None]


@pytest.mark.parametrize("table,row", ROWS, ids=[f"{t}:{r['name']}" for t, r in ROWS])
def test_table_row_parameter_count_equals_the_paper(table, row):
    key = OmegaConf.load(ROOT / "configs" / "table" / f"{table}.yaml").get("params_key", "params_input_map")
    out = io.StringIO()
    with redirect_stdout(out):
        main(["info", f"experiment={row['experiment']}", *row.get("overrides", [])])
    ours, paper = json.loads(out.getvalue())[key], row["paper"]["params"]
    if isinstance(paper, float):  # a rounded figure in the paper (e.g. 50.1M): equal to its precision
        assert ours == pytest.approx(paper, rel=5e-3)
    else:
        assert ours == paper


if __name__ == "__main__":  # rewrite the pinned parameter counts (after a deliberate change)
    PINNED.write_text(json.dumps({name: recipe_params(compose([f"experiment={name}"])) for name in EXPERIMENTS},
                                 indent=1, sort_keys=True) + "\n")
    print(f"wrote {PINNED}")
