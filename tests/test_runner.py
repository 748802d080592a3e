"""The runner end to end: run directory, determinism, resume after SIGKILL, signals, atomic checkpoints,
non-finite losses, one-line errors, eval, multirun, reproduce and the W&B fallback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, TINY_RUN

from tensorlstm.engine.checkpoint import load_checkpoint, save_checkpoint
from tensorlstm.errors import UserError


def test_train_writes_the_run_directory(train_run, tmp_path):
    run = tmp_path / "run"
    summary = train_run(run, "trainer.max_steps=20", "trainer.eval_every=10")
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "metrics.jsonl", "summary.json",
                 "loss.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "valid"] == [10, 20]
    assert [r["split"] for r in records].count("test") == 1
    for key in ("accuracy", "seq_accuracy", "samples_to_99", "params_total", "params_input_map",
                "compression_input_map", "seconds_per_step", "peak_memory_mb", "best_valid"):
        assert key in summary, key
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 20 and ckpt["config"]["task"]["name"] == "addition"
    assert {"model", "optimizer", "scheduler", "rng", "wandb_id"} <= set(ckpt)


def test_loss_falls_on_a_learnable_task(train_run, tmp_path):
    summary = train_run(tmp_path / "run", "task=memorization", "task.length=2", "task.symbols=4",
                              "task.hidden_size=32", "task.batch_size=32", "optim.lr=0.01",
                              "trainer.max_steps=150", "trainer.eval_every=150", base=TINY_RUN)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert summary["accuracy"] > 0.9  # chance is 0.25


def test_same_seed_same_metrics_bit_for_bit(train_run, tmp_path):
    a = train_run(tmp_path / "a", "trainer.max_steps=12", "trainer.eval_every=6", "cell=bt", "rank=2")
    b = train_run(tmp_path / "b", "trainer.max_steps=12", "trainer.eval_every=6", "cell=bt", "rank=2")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    c = train_run(tmp_path / "c", "trainer.max_steps=12", "trainer.eval_every=6", "cell=bt", "rank=2", "seed=7")
    assert c["test"] != a["test"]


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError


def _valid_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if '"valid"' in x]


SLOW = ["trainer.max_steps=300", "trainer.eval_every=25", "task.hidden_size=48", "cell=tt", "rank=3",
        "cell.recurrent_dropout=0.1"]


def test_sigkill_then_resume_auto_matches_an_uninterrupted_run(tlstm, train_run, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tensorlstm.cli", "train", *TINY, *SLOW], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = work / "outputs" / "addition" / "tt"
    _wait_for(lambda: runs.exists() and any((d / "checkpoints" / "last.pt").exists() for d in runs.iterdir()))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = list(runs.iterdir())
    assert not (killed / "summary.json").exists(), "the run finished before it was killed; make it slower"
    done_before = max(_valid_steps(killed))

    resumed = tlstm("train", *TINY, *SLOW, "resume=auto", cwd=work, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert list(runs.iterdir()) == [killed]  # continued in place, no new run dir
    resumed_summary = json.loads((killed / "summary.json").read_text())

    straight = train_run(tmp_path / "straight", *SLOW)
    assert resumed_summary["test"] == straight["test"]
    assert resumed_summary["valid"] == straight["valid"]
    assert _valid_steps(killed) == _valid_steps(tmp_path / "straight")
    assert done_before < 300


def test_sigterm_saves_last_checkpoint_and_exits_nonzero(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tensorlstm.cli", "train", *TINY, *SLOW, f"hydra.run.dir={run}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "checkpoints" / "last.pt").exists())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "SIGTERM" in err and "last.pt" in err and "resume=" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] >= 25


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}, "step": 1}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "config": {}, "step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_corrupt_checkpoint_gives_a_clear_error(tlstm, train_run, tmp_path):
    run = tmp_path / "run"
    train_run(run, "trainer.max_steps=4", "trainer.eval_every=2")
    data = (run / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    (run / "summary.json").unlink()
    r = tlstm("train", *TINY, "trainer.max_steps=8", f"resume={run}", f"hydra.run.dir={run}")
    assert r.returncode == 2
    assert "corrupt or truncated" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(run / "checkpoints" / "last.pt")


def test_nonfinite_loss_stops_or_skips(train_run, tmp_path, monkeypatch):
    from tensorlstm.tasks.algorithmic import AdditionTask

    real_loss = AdditionTask.loss

    def loss_nan_at_step_5(self, model, batch, state=None):
        loss, stats, st = real_loss(self, model, batch, state)
        self._calls = getattr(self, "_calls", 0) + 1
        return (loss * float("nan") if self._calls == 6 else loss), stats, st

    monkeypatch.setattr(AdditionTask, "loss", loss_nan_at_step_5)
    with pytest.raises(SystemExit) as stop:
        train_run(tmp_path / "stop", "trainer.max_steps=10", "trainer.eval_every=2")
    assert stop.value.code == 1
    assert load_checkpoint(tmp_path / "stop" / "checkpoints" / "last.pt")["step"] == 4  # last good one survives
    summary = train_run(tmp_path / "skip", "trainer.max_steps=10", "trainer.eval_every=5",
                              "trainer.nonfinite=skip")
    assert summary["nonfinite_skipped"] == 1 and summary["steps"] == 10


@pytest.mark.parametrize(
    "args,needle",
    [
        (["task=nope"], "unknown task 'nope'; choose one of:"),
        (["cell=nope"], "unknown cell 'nope'; choose one of:"),
        (["rank=0"], "rank=0: expected an integer >= 1"),
        (["trainer.max_steps=abc"], "trainer.max_steps='abc' has the wrong type"),
        (["trainer.max_stepz=3"], "trainer.max_stepz"),
        (["cell=tt", "cell.in_modes=[3,5]"], "multiply to 15"),
        (["task=smnist", "task.data_dir=/nonexistent/mnist"], "/nonexistent/mnist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tlstm, args, needle, tmp_path):
    base = TINY if not args[0].startswith("task=") else TINY_RUN
    r = tlstm("train", *base, "trainer.max_steps=2", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_rebuilds_from_the_checkpoint_alone(tlstm, train_run, tmp_path):
    run = tmp_path / "run"
    summary = train_run(run, "trainer.max_steps=10", "trainer.eval_every=5", "cell=cp", "rank=3")
    r = tlstm("eval", str(run))
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "eval.json").read_text())
    assert result["checkpoint"].endswith("best.pt")
    assert result["seq_accuracy"] == summary["seq_accuracy"] and result["loss"] == pytest.approx(summary["loss"])


def test_multirun_sweep_runs_every_job(tlstm, tmp_path):
    r = tlstm("train", "-m", *TINY, "trainer.max_steps=3", "trainer.eval_every=3", "cell=lstm,tt",
                  f"hydra.sweep.dir={tmp_path}", timeout=240)
    assert r.returncode == 0, r.stderr
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert [json.loads(p.read_text())["cell"] for p in summaries] == ["lstm", "tt"]


def test_reproduce_runs_rows_and_renders_the_table(tlstm, tmp_path):
    r = tlstm("reproduce", "addition_cells", "--rows", "LSTM,BT-LSTM", *TINY, "trainer.max_steps=3",
                  "trainer.eval_every=3", cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "outputs" / "reproduce" / "addition_cells"
    lines = (out / "table.csv").read_text().splitlines()
    assert lines[0].startswith("row,paper,paper_sd,ours,ours_sd") and len(lines) == 3
    md = (out / "table.md").read_text()
    assert "| LSTM |" in md and "| BT-LSTM |" in md
    report = (out / "report.md").read_text()  # the table, the notes, the budget of every run, the figures
    assert "| LSTM |" in report and "## Notes" in report and "## Budget" in report
    assert "| LSTM | finished | 3 / 3 | 3 |" in report and "![validation curves](curves.png)" in report
    for png in ("params_vs_metric.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    (out / "curves.png").unlink()
    again = tlstm("reproduce", "addition_cells", "--rows", "LSTM", "--collect", cwd=tmp_path)
    assert again.returncode == 0 and "[reproduce]" not in again.stdout  # collect runs nothing
    assert (out / "curves.png").is_file() and "1 of 1 rows finished" in (out / "report.md").read_text()


def test_wandb_online_without_key_falls_back_to_offline(tlstm, tmp_path):
    run = tmp_path / "run"
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path)}
    r = tlstm("train", *[a for a in TINY if not a.startswith("logger")], "logger.mode=online",
                  "trainer.max_steps=2", "trainer.eval_every=2", f"hydra.run.dir={run}", env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "offline" in r.stdout
    assert list((run / "wandb").glob("offline-run-*"))


def test_stop_at_ends_the_run_when_the_validation_metric_is_reached(train_run, tmp_path):
    summary = train_run(tmp_path / "run", "trainer.max_steps=30", "trainer.eval_every=5", "trainer.stop_at=0.0")
    assert summary["steps"] == 5 and summary["test"]  # seq_accuracy >= 0.0 at the first evaluation
    summary = train_run(tmp_path / "run2", "trainer.max_steps=10", "trainer.eval_every=5", "trainer.stop_at=1.01")
    assert summary["steps"] == 10


def test_resume_from_a_run_dir_reuses_its_overrides_and_refuses_a_different_config(tlstm, train_run, tmp_path):
    run = tmp_path / "run"
    train_run(run, "trainer.max_steps=4", "trainer.eval_every=2", "cell=tt", "rank=2")
    (run / "summary.json").unlink()  # as if it had been killed after its last checkpoint
    clash = tlstm("train", f"resume={run}", "rank=3")
    assert clash.returncode == 2 and "another config" in clash.stderr and "rank" in clash.stderr
    r = tlstm("train", f"resume={run}", "trainer.max_steps=6")  # nothing else repeated
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cell"] == "tt" and summary["steps"] == 6
