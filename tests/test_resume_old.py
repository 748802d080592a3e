"""A run saved by an older tensorlstm (tests/fixtures/run_78f31b9, made with commit 78f31b9's code) resumes through
the CLI and trains exactly as that code would have: engine.checkpoint's tables fill the keys added since with the
values of the old behaviour, and the run keeps its saved values where defaults moved (task.predict_first)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tiny import polyphonic

from tensorlstm.cli import compose, to_dict
from tensorlstm.engine.checkpoint import leaf_values, upgrade_config

FIXTURE = Path(__file__).parent / "fixtures" / "run_78f31b9"


def _records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in path.read_text().splitlines()]


@pytest.fixture()
def old_run(tmp_path) -> Path:
    """The old run under tmp_path/outputs/polyphonic/tt/ (where resume=auto looks), its data at the relative path
    it was trained with (data/polyphonic, the task's default)."""
    polyphonic.write_pickle(tmp_path / "data" / "polyphonic")
    run = tmp_path / "outputs" / "polyphonic" / "tt" / "2026-11-22_00-00-00"
    shutil.copytree(FIXTURE, run)
    return run


def _original_overrides() -> list[str]:
    return OmegaConf.to_container(OmegaConf.load(FIXTURE / ".hydra" / "overrides.yaml"))


def test_upgrade_gives_an_old_config_every_key_of_today():
    """A key added to a config group needs an entry in engine.checkpoint.ADDED (the value of the old behaviour):
    this fails when one is missing for the fixture's groups (polyphonic, tt, adam, the trainer, top level)."""
    old = OmegaConf.to_container(OmegaConf.load(FIXTURE / ".hydra" / "config.yaml"), resolve=True)
    today = to_dict(compose(_original_overrides()))
    # compress.* other than source act only with a source, so upgrade_config adds source alone
    inert = {k for k in leaf_values(today) if k.startswith("compress.") and k != "compress.source"}
    assert sorted(leaf_values(upgrade_config(old))) == sorted(set(leaf_values(today)) - inert)


def _tlstm_in(folder: Path, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """`tlstm <args>` in this process (fast), from `folder` (the run's data path is relative to it)."""
    from tensorlstm.cli import main

    monkeypatch.chdir(folder)
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("how", ["dir", "auto", "reproduce"])
def test_an_old_run_resumes_and_trains_as_the_old_code_did(old_run, how, monkeypatch, capsys):
    """Resumed from step 2 to 4 today, its records equal those of the old code's uninterrupted 4-step run:
    resume=<run dir>; resume=auto with the original command; and as `tlstm reproduce` resumes a row (its
    command, hydra.run.dir=<the row's dir> resume=auto)."""
    if how == "dir":
        args = [f"resume={old_run}", "trainer.max_steps=4", "trainer.test_at_end=false"]
    else:  # the original command again, longer
        args = [o for o in _original_overrides() if not o.startswith("trainer.max_steps=")]
        args += ["trainer.max_steps=4", "trainer.test_at_end=false", "resume=auto"]
        args += [f"hydra.run.dir={old_run}"] if how == "reproduce" else []
    code, out, err = _tlstm_in(old_run.parents[3], "train", *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert f"resuming {old_run}" in out
    assert "task.predict_first=false" in out and "optim.implementation='default'" in out  # said, not silent
    assert _records(old_run / "metrics.jsonl") == _records(FIXTURE / "uninterrupted.jsonl")
    saved = OmegaConf.load(old_run / ".hydra" / "config.yaml")
    assert saved.task.predict_first is False and saved.cell.forward == "auto" and "mode" not in saved.cell
    assert saved.cell.kernel == "torch" and saved.optim.implementation == "default"


def test_a_moved_default_set_explicitly_on_resume_is_refused(tlstm, old_run):
    """The user's own value wins over the saved one, so asking for today's predict_first is another config (a real
    process: exit status and stderr)."""
    r = tlstm("train", f"resume={old_run}", "task.predict_first=true", cwd=old_run.parents[3])
    assert r.returncode == 2
    assert "another config" in r.stderr and "task.predict_first: False -> True" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_run_started_with_a_renamed_key_resumes_with_todays_name(tmp_path):
    from tensorlstm.cli import _run_overrides

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- cell=tt\n- cell.mode=reconstruct\n- trainer.tbptt=null\n- hydra.run.dir=x\n- resume=auto\n")
    assert _run_overrides(tmp_path) == ["cell=tt", "cell.forward=reconstruct"]
