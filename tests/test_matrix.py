"""The central claim: every task trains with every cell. Each pair runs two real training steps (the trainer,
evaluation and test of the best checkpoint included) on tiny data in the task's real format. Tasks and cells come
from their registries, so a new task (with its tests/tiny/<task>.py) or cell joins the matrix by itself."""

from __future__ import annotations

import math

import pytest
import tiny
from conftest import TINY_RUN

from tensorlstm.cells import CELLS
from tensorlstm.cli import load_config
from tensorlstm.engine import trainer
from tensorlstm.tasks import TASKS


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Tiny data per task, written once for all the cells."""
    made: dict[str, list[str]] = {}

    def get(task: str) -> list[str]:
        if task not in made:
            made[task] = tiny.overrides(task, tmp_path_factory.mktemp(task))
        return made[task]

    return get


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_trains_two_steps_with_cell(task, cell, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "plot_curves", lambda *a, **k: None)  # loss.png: 90% of a 2-step run, tested elsewhere
    _, cfg = load_config([*TINY_RUN, f"task={task}", f"cell={cell}", *tiny_data(task), "trainer.max_steps=2",
                          "trainer.eval_every=2"])
    (tmp_path / "run").mkdir()  # Hydra makes the run dir in `tlstm train`
    summary = trainer.train(cfg, tmp_path / "run")
    assert summary["steps"] == 2 and summary["task"] == task
    assert summary["params_total"] > 0
    assert math.isfinite(summary["test"][summary["metric"]])  # the task's own metric on the test split


def test_tiny_pmnist_imports_as_a_package_and_runs_as_a_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(tiny.__file__).with_name("pmnist.py")
    r = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == tiny.overrides("pmnist", tmp_path)  # the package import, same files
    assert (tmp_path / "mnist").is_dir() and "task.permutation_seed=3" in r.stdout
