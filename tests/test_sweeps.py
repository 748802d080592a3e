"""Sweeps through Hydra plugins: Optuna searches the task's validation metric in the task's direction, the
submitit launcher (local executor, the SLURM code path without a cluster) runs every job, the shipped
launcher/sweeper configs compose."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import TINY

from tensorlstm.cli import _sweeper_direction, compose, main
from tensorlstm.paths import SUBDIR_MAX, sweep_subdir

SHORT = ["trainer.max_steps=6", "trainer.eval_every=3", "cell=tt", "hydra.sweep.subdir=${hydra.job.num}"]


def test_optuna_sweep_of_three_trials_reports_the_best(tmp_path):
    main(["train", "-m", "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=3", *TINY, *SHORT,
          "optim.lr=tag(log,interval(1e-3,3e-2))", f"hydra.sweep.dir={tmp_path}"])
    trials = sorted(tmp_path.glob("*/summary.json"))
    assert len(trials) == 3
    values = [json.loads(p.read_text())["best_valid"] for p in trials]  # what each job returned
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(values)  # seq_accuracy: maximised
    assert set(result["best_params"]) == {"rank", "optim.lr", "cell.dropout"}
    hydra_cfg = yaml.safe_load((trials[0].parent / ".hydra" / "hydra.yaml").read_text())
    assert hydra_cfg["hydra"]["sweeper"]["direction"] == "maximize"


@pytest.mark.parametrize("task,direction", [("addition", "maximize"), ("char_lm", "minimize"),
                                            ("polyphonic", "minimize")])
def test_optuna_direction_follows_the_task_metric(task, direction):
    assert _sweeper_direction([f"task={task}", "hydra/sweeper=optuna"]) == [f"hydra.sweeper.direction={direction}"]
    assert _sweeper_direction([f"task={task}", "hydra/sweeper=optuna", "hydra.sweeper.direction=minimize"]) == []
    assert _sweeper_direction([f"task={task}"]) == []  # basic sweeper: nothing to set


@pytest.mark.parametrize("launcher,target", [("submitit_local", "LocalLauncher"), ("local", "LocalLauncher"),
                                             ("submitit_slurm", "SlurmLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    cfg = compose([f"hydra/launcher={launcher}"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.signal_delay_s > 0


def test_submitit_local_launcher_runs_a_two_job_sweep(tlstm, tmp_path):
    long_value = "run/" + "x" * 300  # a '/' and a name over the file-name limit: one folder per job all the same
    r = tlstm("train", "-m", "hydra/launcher=submitit_local", *TINY, "trainer.max_steps=3",
                  "trainer.eval_every=3", "cell=lstm,tt", f"logger.project={long_value}",
                  f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = sorted(tmp_path.glob("*/summary.json"))
    summaries = [json.loads(p.read_text()) for p in jobs]
    assert [s["cell"] for s in summaries] == ["lstm", "tt"] and all(s["steps"] == 3 for s in summaries)
    assert [p.parent.name[:2] for p in jobs] == ["0_", "1_"]
    assert all(len(p.parent.name) <= 2 + SUBDIR_MAX for p in jobs)
    assert (tmp_path / ".submitit").is_dir()  # ran through submitit, each job in its own process


def test_sweep_subdir_flattens_paths_and_cuts_long_names_with_a_hash():
    assert sweep_subdir("cell=gru,task.data_dir=../shared/data") == "cell=gru,task.data_dir=.._shared_data"
    a, b = sweep_subdir("a=" + "x" * 300 + ",b=1"), sweep_subdir("a=" + "x" * 300 + ",b=2")
    assert len(a) == len(b) == SUBDIR_MAX and a != b  # cut to the limit, told apart by the hash of the whole


@pytest.mark.parametrize("sweeper", ["optuna", "optuna_search"])
def test_optuna_sweeper_configs_compose(sweeper):
    cfg = compose([f"hydra/sweeper={sweeper}"], hydra=True)
    assert "optuna" in cfg.hydra.sweeper._target_
    if sweeper == "optuna_search":
        assert set(cfg.hydra.sweeper.params) == {"rank", "optim.lr", "cell.dropout"}
